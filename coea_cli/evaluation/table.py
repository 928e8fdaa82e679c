"""Scoring systems side by side, on one period or pooled over several (rolling evaluation).

`Scores.add(system, events, recs)` scores one system's lists for one period's events (users
active in the period, with the history before it). Pooled rows weight each period by its
number of evaluated users (novel HR by its users with a novel relevant item), so a per-user
mean (HR, NDCG, novel HR, serendipity, ...) is the mean over all (user, period) events;
coverage and Gini are the weighted mean over periods. Per-event
values are kept in the same order for every system, so ratios between two systems get a
paired bootstrap interval over events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coea_cli import metrics

# The headline comparisons: per-event key, table column, label.
HEADLINE = (("hit", "hr@10", "HR@10"), ("novel_hit", "novel_hr@10", "novel HR@10"),
            ("serendipity", "serendipity@10", "serendipity@10"))  # fmt: skip


@dataclass
class Events:
    """One period's evaluation events and what the metrics need about it."""

    period: int
    users: np.ndarray  # [E] users active in the period with a history before it
    truth: list[np.ndarray]  # items of the period, per user
    history: list[np.ndarray]  # items before the period, per user
    item_pop: np.ndarray  # [N] distinct users per item before the period
    n_train_users: int
    item_cluster: np.ndarray
    n_items: int


@dataclass
class Scores:
    ks: tuple[int, ...]
    item_emb: np.ndarray | None
    rows: dict[str, list[tuple[int, dict]]] = field(default_factory=dict)  # name -> [(n, row)]
    events: dict[str, dict[str, list]] = field(default_factory=dict)  # name -> key -> parts
    notes: dict[str, str] = field(default_factory=dict)
    shares: dict[str, list[tuple[int, dict]]] = field(default_factory=dict)

    def note(self, name: str, text: str) -> None:
        self.notes[name] = text

    def add(self, name: str, ev: Events, recs, note: str = "", lists: dict | None = None):
        """Score `recs` ([E, K] items, or a list of such draws whose metrics are averaged)."""
        draws = recs if isinstance(recs, list) else [recs]
        args = (ev.truth, ev.history, ev.item_cluster, ev.item_pop, ev.n_train_users, ev.n_items)
        each = [metrics.compute_all(r, *args, self.item_emb, self.ks) for r in draws]
        row = {key: float(np.mean([e[key] for e in each])) for key in each[0]}
        row |= {"users": each[0]["users"], "novel_users": each[0]["novel_users"]}
        self.rows.setdefault(name, []).append((row["users"], row))
        pu = [metrics.per_user(r, ev.truth, ev.history, ev.item_cluster, 10) for r in draws]
        parts = self.events.setdefault(name, {})
        for key in pu[0]:
            parts.setdefault(key, []).append(np.mean([p[key] for p in pu], axis=0))
        if note:
            self.notes[name] = note
        if lists is not None:
            from coea_cli.evaluation.systems import slot_shares

            users = ev.users[[len(t) > 0 for t in ev.truth]]
            self.shares.setdefault(name, []).append((len(users), slot_shares(lists, users, 10)))

    def pooled(self) -> dict[str, dict]:
        """Each system's row, pooled over the periods added (weighted by evaluated users)."""
        out = {}
        for name, parts in self.rows.items():
            weights = np.array([max(n, 1) for n, _ in parts], dtype=np.float64)
            novel = np.array([max(r["novel_users"], 1) for _, r in parts], dtype=np.float64)
            keys = [k for k in parts[0][1] if k not in ("users", "novel_users")]
            row = {
                k: _weighted([r[k] for _, r in parts], novel if k.startswith("novel_") else weights)
                for k in keys
            }
            row["users"] = int(sum(r["users"] for _, r in parts))
            row["novel_users"] = int(sum(r["novel_users"] for _, r in parts))
            if name in self.shares:
                s = self.shares[name]
                w = np.array([max(n, 1) for n, _ in s], dtype=np.float64)
                row |= {k: _weighted([x[k] for _, x in s], w) for k in s[0][1]}
            out[name] = row
        return out

    def per_event(self, name: str, key: str) -> np.ndarray:
        return np.concatenate(self.events[name][key])

    def per_period(self) -> dict[str, list[dict]]:
        return {name: [r for _, r in parts] for name, parts in self.rows.items()}

    def compare(self, system: str, baseline: str, seed: int) -> dict:
        """Ratios system / baseline of the headline metrics with 95% paired-bootstrap
        intervals over events; "better"/"worse" only when the interval excludes 1."""
        out = {}
        for key, column, label in HEADLINE:
            point, lo, hi = metrics.ratio_interval(
                self.per_event(system, key), self.per_event(baseline, key), seed=seed
            )
            verdict = "no difference shown"
            if np.isfinite(lo) and lo > 1:
                verdict = "better"
            elif np.isfinite(hi) and hi < 1:
                verdict = "worse"
            out[label] = {"ratio": point, "ci95": [lo, hi], "verdict": verdict, "column": column}
        return out


def _weighted(values: list[float], weights: np.ndarray) -> float:
    v = np.array(values, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return float("nan")
    return float((v[ok] * weights[ok]).sum() / weights[ok].sum())
