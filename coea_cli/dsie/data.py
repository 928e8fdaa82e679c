"""User sequences, splits, training windows and padded batches for DSIE.

Sequences are left padded (the most recent item is always the last position) with the item id
`pad` = number of items; targets use -1 for "no target".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coea_cli.workspace.history import UserSequences


@dataclass
class EvalSet:
    """One held-out item per user, predicted from the user's history before it."""

    users: np.ndarray  # [E] int64
    history: list[np.ndarray]  # inputs (the model reads the last long_len)
    target: np.ndarray  # [E] int64

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Split:
    train: list[np.ndarray]  # per user, the training sequence (may be empty)
    val: EvalSet
    test: EvalSet | None  # leave-one-out only
    description: str


def pipeline_split(seqs: UserSequences, cutoff: str = "the test period") -> Split:
    """Training: every interaction before the cutoff (`seqs`) but each user's last one, which
    is that user's validation target (users with at least 2 such interactions)."""
    train, v_users, v_hist, v_target = [], [], [], []
    for u in range(seqs.n_users):
        s = seqs.of(u)
        if len(s) >= 2:
            train.append(s[:-1])
            v_users.append(u), v_hist.append(s[:-1]), v_target.append(s[-1])
        else:
            train.append(s)
    val = EvalSet(np.array(v_users, np.int64), v_hist, np.array(v_target, np.int64))
    text = (
        f"Training: all interactions before {cutoff} except each user's last one; "
        f"validation (early stopping): each user's last interaction before {cutoff}, "
        f"ranked against all items with the user's other training items removed. Nothing from "
        f"{cutoff} on is read."
    )
    return Split(train, val, None, text)


def loo_split(seqs: UserSequences) -> Split:
    """Leave-one-out over each user's full sequence: last item test, second-last validation,
    the rest training (users with at least 3 interactions are evaluated)."""
    train, val, test = [], ([], [], []), ([], [], [])
    for u in range(seqs.n_users):
        s = seqs.of(u)
        if len(s) >= 3:
            train.append(s[:-2])
            for part, hist, tgt in ((val, s[:-2], s[-2]), (test, s[:-1], s[-1])):
                part[0].append(u), part[1].append(hist), part[2].append(tgt)
        else:
            train.append(s)
    make = lambda p: EvalSet(np.array(p[0], np.int64), p[1], np.array(p[2], np.int64))  # noqa: E731
    text = (
        "Leave-one-out over each user's full time-ordered sequence: last item = test, "
        "second-last = validation (early stopping), the rest = training. Full ranking over "
        "all items; the user's other seen items (the history before the held-out item) are "
        "removed from the ranking; HR@10 and NDCG@10 averaged over users with >= 3 "
        "interactions; ties are counted against the held-out item."
    )
    return Split(train, make(val), make(test), text)


@dataclass
class Windows:
    """Training windows (at most long_len + 1 items each) in CSR layout."""

    user: np.ndarray  # [W] int64
    ptr: np.ndarray  # [W + 1] int64
    items: np.ndarray  # flat int64

    def __len__(self) -> int:
        return len(self.user)

    def lengths(self) -> np.ndarray:
        return np.diff(self.ptr)

    def of(self, w: int) -> np.ndarray:
        return self.items[self.ptr[w] : self.ptr[w + 1]]


def training_windows(train: list[np.ndarray], long_len: int) -> Windows:
    """Cut each training sequence into windows of at most long_len + 1 items, from the end,
    so that every item but a sequence's first is the target of exactly one window."""
    users, chunks = [], []
    for u, s in enumerate(train):
        end = len(s)
        while end >= 2:
            start = max(0, end - long_len - 1)
            users.append(u)
            chunks.append(s[start:end])
            end = start + 1
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
    return Windows(np.array(users, np.int64), ptr, items)


def batch_order(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Global batches of window indices for one epoch, a function of (seed, epoch) only.

    Windows are shuffled, sorted by length inside chunks of 4 batches (less padding), cut
    into batches, and the batches shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 4
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]


def left_pad(seqs: list[np.ndarray], pad: int, width: int | None = None) -> np.ndarray:
    """Stack sequences right-aligned into [B, width] filled with `pad`."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    out = np.full((len(seqs), width), pad, dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-width:] if width else s[:0]
        if len(s):
            out[r, width - len(s) :] = s
    return out


def train_batch(windows: Windows, idx: np.ndarray, groups: np.ndarray, pad: int) -> dict:
    """Inputs/targets of windows `idx`: items [B, T] (left padded), targets [B, T] (-1 =
    none), lengths [B], groups [B] (numpy)."""
    seqs = [windows.of(w) for w in idx]
    items = left_pad([s[:-1] for s in seqs], pad)
    targets = left_pad([s[1:] for s in seqs], -1, items.shape[1])
    return {
        "items": items,
        "targets": targets,
        "lengths": np.array([len(s) - 1 for s in seqs], dtype=np.int64),
        "groups": groups[windows.user[idx]],
    }


def history_batch(
    histories: list[np.ndarray], users: np.ndarray, groups: np.ndarray, pad: int, long_len: int
) -> dict:
    """The last long_len items of each history, left padded, for encoding users."""
    clipped = [h[-long_len:] if long_len else h[:0] for h in histories]
    width = max(1, max((len(h) for h in clipped), default=0))
    return {
        "items": left_pad(clipped, pad, width),
        "lengths": np.array([len(h) for h in clipped], dtype=np.int64),
        "groups": groups[users],
    }
