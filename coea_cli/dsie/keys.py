"""User serving keys and DSIE states at any time cutoff, and full-ranking scores.

`user_keys(work, before_period=k)` and `encode_users(model, work, before_period=k)` describe
every user as of the start of period k (only interactions of periods < k are read), e.g. the
context of PCO round k, or of serving (k = the test period).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from coea_cli import store
from coea_cli.clusters import recent_distinct
from coea_cli.data.run import data_paths
from coea_cli.dsie.baselines import masked_ranks, ranking_metrics
from coea_cli.dsie.data import EvalSet, UserSequences, history_batch, user_sequences
from coea_cli.dsie.model import DSIE, DSIEConfig, scores
from coea_cli.errors import BadInput, MissingArtifact
from coea_cli.groups.run import load_groups, load_item_codes

__all__ = [
    "Tables",
    "encode_histories",
    "encode_users",
    "evaluate_ranking",
    "keys_from_sequences",
    "load_model",
    "load_tables",
    "scores",
    "user_keys",
]


@dataclass
class Tables:
    """What keys and states are computed from."""

    users: np.ndarray  # interactions: user_id, item_id, timestamp, period (time order)
    items: np.ndarray
    timestamps: np.ndarray
    periods: np.ndarray
    n_users: int
    n_items: int
    groups: np.ndarray  # [U] group of each user
    item_cluster: np.ndarray  # [N] level-1 cluster of each item
    test_period: int

    def sequences(self, before_period: int | None) -> UserSequences:
        return user_sequences(
            self.users, self.items, self.timestamps, self.n_users, self.periods, before_period
        )


def load_tables(work: Path) -> Tables:
    """Interactions, groups and level-1 clusters of a workspace."""
    p = data_paths(work)
    if not p["dataset"].exists():
        raise MissingArtifact(p["dataset"], "prepare")
    stats = store.read_json(p["dataset"])
    cols = ["user_id", "item_id", "timestamp", "period"]
    t = store.read_parquet(p["interactions"], cols)
    n_users, n_items = int(stats["users"]), int(stats["items"])
    codes = load_item_codes(work, n_items)
    groups, _ = load_groups(work, n_users)
    return Tables(
        users=t["user_id"].to_numpy().astype(np.int64),
        items=t["item_id"].to_numpy().astype(np.int64),
        timestamps=t["timestamp"].to_numpy(),
        periods=t["period"].to_numpy(),
        n_users=n_users,
        n_items=n_items,
        groups=groups,
        item_cluster=codes[:, 0],
        test_period=int(stats["test_period"]),
    )


def _tables(work_or_tables) -> Tables:
    return (
        work_or_tables if isinstance(work_or_tables, Tables) else load_tables(Path(work_or_tables))
    )


def keys_from_sequences(
    seqs: UserSequences, groups: np.ndarray, item_cluster: np.ndarray, recent: int = 5
) -> pa.Table:
    """user_id, group, recent_clusters (the last `recent` distinct level-1 clusters, most
    recent last) and familiar_clusters (every level-1 cluster in the history, ascending)."""
    recent_rows, familiar_rows = [], []
    for u in range(seqs.n_users):
        clusters = item_cluster[seqs.of(u)]
        familiar_rows.append(np.unique(clusters).astype(np.int32))
        recent_rows.append(np.array(recent_distinct(clusters, recent), dtype=np.int32))
    return pa.table(
        {
            "user_id": pa.array(np.arange(seqs.n_users, dtype=np.int32)),
            "group": pa.array(groups.astype(np.int32)),
            "recent_clusters": pa.array(recent_rows, pa.list_(pa.int32())),
            "familiar_clusters": pa.array(familiar_rows, pa.list_(pa.int32())),
        }
    )


def user_keys(work_or_tables, before_period: int, recent: int = 5) -> pa.Table:
    """Serving keys of every user from the interactions of periods < before_period."""
    t = _tables(work_or_tables)
    return keys_from_sequences(t.sequences(before_period), t.groups, t.item_cluster, recent)


def load_model(work: Path, folder: str = "dsie", device: str = "cpu") -> DSIE:
    """The trained DSIE of a workspace (weights, codes and personas are in the file)."""
    from safetensors.torch import load_file

    d = Path(work) / folder
    for name in ("dsie.safetensors", "config.json"):
        if not (d / name).exists():
            raise MissingArtifact(d / name, "train-dsie")
    cfg = DSIEConfig.from_dict(store.read_json(d / "config.json")["model"])
    weights = load_file(str(d / "dsie.safetensors"))
    model = DSIE(cfg, weights["codes"], weights.get("persona"))
    model.load_state_dict(weights)
    return model.to(device).eval()


def encode_histories(
    model: DSIE,
    histories: list[np.ndarray],
    users: np.ndarray,
    groups: np.ndarray,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """long/short/fused states [len(users), h] after each history (its last long_len items)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {k: np.zeros((len(users), cfg.hidden), np.float32) for k in ("long", "short", "fused")}
    order = np.argsort([-min(len(h), cfg.long_len) for h in histories], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        b = history_batch(
            [histories[r] for r in rows], users[rows], groups, cfg.n_items, cfg.long_len
        )
        b = {k: torch.as_tensor(v, device=device) for k, v in b.items()}
        states = model.encode(b["items"], b["lengths"], b["groups"])
        for k, v in states.items():
            out[k][rows] = v.float().cpu().numpy()
    model.train(was_training)
    return out


def encode_users(
    model: DSIE, work_or_tables, before_period: int, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """DSIE states of every user from the interactions of periods < before_period:
    "long", "short", "fused" [U, h] and "user_id" [U]."""
    t = _tables(work_or_tables)
    if model.cfg.n_items != t.n_items:
        raise BadInput(f"the model has {model.cfg.n_items} items, the workspace {t.n_items}")
    seqs = t.sequences(before_period)
    users = np.arange(t.n_users, dtype=np.int64)
    states = encode_histories(model, [seqs.of(u) for u in users], users, t.groups, batch_size)
    return {**states, "user_id": users.astype(np.int32)}


def evaluate_ranking(model: DSIE, ev: EvalSet, groups: np.ndarray, batch_size: int = 256) -> dict:
    """HR@k / NDCG@k of the held-out items under full ranking, seen items removed."""
    if len(ev) == 0:
        return ranking_metrics(np.zeros(0, np.int64))
    states = encode_histories(model, ev.history, ev.users, groups, batch_size)["fused"]
    ranks = []
    for start in range(0, len(ev), batch_size):
        sl = slice(start, start + batch_size)
        s = scores(model, torch.as_tensor(states[sl], device=next(model.parameters()).device))
        ranks.append(masked_ranks(s, ev.history[sl], ev.target[sl]))
    return ranking_metrics(np.concatenate(ranks))
