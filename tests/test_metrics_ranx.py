"""HR, NDCG, precision and recall cross-checked against ranx (a maintained ranking-evaluation
library) on fresh random lists: short lists, padding, users without relevant items and
relevant items the lists never reach."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from coea_cli import metrics

ranx = pytest.importorskip("ranx")


def _random_case(rng):
    n_users = int(rng.integers(20, 120))
    n_items = int(rng.integers(30, 200))
    width = int(rng.integers(1, 25))
    recs = np.full((n_users, width), -1, dtype=np.int64)
    truth = []
    for u in range(n_users):
        length = int(rng.integers(0, width + 1))  # some lists shorter than K (padding -1)
        recs[u, :length] = rng.choice(n_items, length, replace=False)
        size = int(rng.choice([0, 1, 2, 5, 15]))  # some users have no relevant item
        truth.append(rng.choice(n_items, size, replace=False))
    return recs, truth


def _ranx(recs, truth, k: int) -> dict:
    """ranx's hit_rate, ndcg, precision and recall at k over the users with relevant items."""
    qrels, run = {}, {}
    for u, (row, rel) in enumerate(zip(recs, truth, strict=True)):
        if not len(rel):
            continue  # as in coea_cli.metrics: users without relevant items are not evaluated
        q = f"u{u}"
        qrels[q] = {f"i{i}": 1 for i in rel}
        items = [int(i) for i in row if i >= 0]
        # scores falling with rank; a user with an empty list gets one item nobody wants
        run[q] = {f"i{i}": float(len(items) - r) for r, i in enumerate(items)} or {"none": 0.0}
    names = [f"hit_rate@{k}", f"ndcg@{k}", f"precision@{k}", f"recall@{k}"]
    return ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), names)


@pytest.mark.parametrize("trial", range(6))
def test_quality_metrics_match_ranx(trial):
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    recs, truth = _random_case(rng)
    if metrics.n_evaluated(truth) == 0:
        truth[0] = np.array([int(rng.integers(0, 30))])
    for k in sorted({1, 3, 10, recs.shape[1], recs.shape[1] + 5}):
        want = _ranx(recs, truth, k)
        got = {
            f"hit_rate@{k}": metrics.hit_rate(recs, truth, k),
            f"ndcg@{k}": metrics.ndcg(recs, truth, k),
            f"precision@{k}": metrics.precision(recs, truth, k),
            f"recall@{k}": metrics.recall(recs, truth, k),
        }
        for name, value in got.items():
            assert value == pytest.approx(want[name], abs=1e-9), (seed, name)
