"""User groups and their personas (`coea profile-groups`).

grouping: demographic cells, behaviour k-means over interest-cluster histograms, hybrid.
personas: per-group statistics, template personas and Profile-LLM personas (JSON, retries).
plot: the group similarity heatmap. run: the command implementation.
"""
