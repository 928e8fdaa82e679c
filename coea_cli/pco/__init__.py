"""Periodic Collaborative Optimization: the Novelty and Relevance LLMs, round by round."""
