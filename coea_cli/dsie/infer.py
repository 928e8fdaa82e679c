"""Using a trained DSIE: load it from the workspace, encode users at any period cutoff, score
items under full ranking.

`encode_users(model, history, groups, before_period=k)` describes every user as of the start
of period k (only interactions of periods < k are read), e.g. for serving (k = the test
period).
"""

from __future__ import annotations

import numpy as np
import torch

from coea_cli.dsie.baselines import masked_ranks, ranking_metrics
from coea_cli.dsie.data import EvalSet, history_batch
from coea_cli.dsie.model import DSIE, DSIEConfig, scores
from coea_cli.errors import ArtifactError
from coea_cli.workspace import History, Workspace

__all__ = [
    "encode_histories", "encode_users", "evaluate_ranking", "grow", "load_model", "scores",
]  # fmt: skip


def grow(old: dict, model: DSIE) -> DSIE:
    """Start `model` (the current catalogue's shape) from the weights `old` of a DSIE trained
    on fewer items: every tensor of the same shape is copied; item and code tables copy their
    old rows, and a new item's own embedding row starts at zero, so it is represented by its
    SID codes' embeddings until trained."""
    import torch

    state = model.state_dict()
    with torch.no_grad():
        for key, value in old.items():
            if key not in state or key in ("codes", "persona"):
                continue
            target = state[key]
            if target.shape == value.shape:
                target.copy_(value)
            elif target.dim() == value.dim() and target.shape[1:] == value.shape[1:]:
                rows = min(len(target), len(value))
                if key.startswith("item_emb"):
                    target.zero_()
                target[:rows] = value[:rows]
    return model


def load_model(ws: Workspace, name: str = "dsie", device: str = "cpu") -> DSIE:
    """The trained DSIE of a workspace (weights, codes and personas are in the file), checked
    against the workspace's current SIDs."""
    config = ws.dsie_config(name)
    recorded = config.get("sid_version")
    if recorded != ws.sids().version:
        raise ArtifactError(
            ws.dsie(name).file("config"),
            "train-dsie",
            f"trained on SID version {recorded}, the workspace has {ws.sids().version}",
        )
    cfg = DSIEConfig.from_dict(config["model"])
    n_items = int(ws.dataset()["items"])
    if cfg.n_items != n_items:
        raise ArtifactError(
            ws.dsie(name).file("config"),
            f"train-dsie --init-from {name}",
            f"DSIE covers {cfg.n_items} items, the workspace has {n_items} (items were added)",
        )
    weights = ws.dsie_weights(name)
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
    model: DSIE, history: History, groups: np.ndarray, before_period: int | None
) -> dict[str, np.ndarray]:
    """DSIE states of every user from the interactions of periods < before_period:
    "long", "short", "fused" [U, h] and "user_id" [U]."""
    if model.cfg.n_items != history.n_items:
        raise ArtifactError(
            None,
            "train-dsie",
            f"DSIE has {model.cfg.n_items} items, the workspace {history.n_items}",
        )
    seqs = history.before(before_period)
    users = np.arange(history.n_users, dtype=np.int64)
    states = encode_histories(model, [seqs.of(u) for u in users], users, groups)
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
