"""Serving: per-key candidates, per-user lists, offline storage."""
