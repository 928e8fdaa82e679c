"""DSIE: Dual-Stable Interest Exploration, the dual-branch sequence encoder (`coea train-dsie`).

model: the encoder (long-term branch with the group token, short-term branch, gated fusion).
data: user sequences, pipeline and leave-one-out splits, training windows, batches.
train: the training loop (AdamW, warmup, early stopping, checkpoints, resume, DDP).
infer: loading a trained DSIE, user states at any period cutoff; `scores` for full ranking.
baselines: popularity. run: the command implementation.
"""
