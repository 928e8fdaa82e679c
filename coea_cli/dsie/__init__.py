"""DSIE: Dual-Stable Interest Exploration, the dual-branch sequence encoder (`coea train-dsie`).

model: the encoder (long-term branch with the group token, short-term branch, gated fusion).
data: user sequences, pipeline and leave-one-out splits, training windows, batches.
train: the training loop (AdamW, warmup, early stopping, checkpoints, resume, DDP).
keys: user serving keys and states at any time cutoff; `scores` for full ranking.
baselines: popularity. run: the command implementation.
"""
