"""`coea simulate`: the oracle's calibration and fatigue, the measures by hand, a simulated
period's determinism, and the separation of the oracle from the systems."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from coea_cli.sim.measures import Tally, homogenization, period_measures
from coea_cli.sim.oracle import Oracle, calibrate, fit_oracle, recent_shares
from coea_cli.sim.runspace import COPIED, make_runspace
from coea_cli.workspace import History, Workspace
from tests.helpers import coea
from tests.test_recommend import trained  # noqa: F401  (module fixture)


def _planted_history(seed: int = 0, n_users: int = 60, n_items: int = 40) -> History:
    """Users of two tastes: taste t consumes items of parity t."""
    rng = np.random.default_rng(seed)
    users, items, periods = [], [], []
    for u in range(n_users):
        liked = np.arange(u % 2, n_items, 2)
        for j, i in enumerate(rng.choice(liked, 8, replace=False)):
            users.append(u), items.append(int(i)), periods.append(j // 4)
    a = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    return History(a(users), a(items), np.arange(len(users)), a(periods), n_users, n_items, 1)


def test_oracle_ranks_real_tastes_high_and_calibrates():
    h = _planted_history()
    oracle = fit_oracle(h, factors=8, iterations=10, seed=0)
    assert oracle.slope > 0
    users = np.arange(60)
    liked = np.stack([np.arange(u % 2, 40, 2)[:10] for u in users])
    other = np.stack([np.arange(1 - u % 2, 40, 2)[:10] for u in users])
    calibrate(oracle, users, liked, 0.3)
    p_liked, p_other = oracle.accept_prob(users, liked), oracle.accept_prob(users, other)
    assert p_liked.mean() == pytest.approx(0.3, abs=1e-6)  # the calibration target
    assert p_liked.mean() > 3 * p_other.mean()  # the planted taste is what the oracle accepts
    padded = liked.copy()
    padded[:, -1] = -1
    assert (oracle.accept_prob(users, padded)[:, -1] == 0).all()
    with pytest.raises(ValueError):
        calibrate(oracle, users, liked, 1.5)


def test_fatigue_lowers_acceptance_as_documented():
    rng = np.random.default_rng()
    o = Oracle(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), 0.0, 1.0, 1.5, -0.5, 2.0, 2)
    users, items = np.arange(3), rng.integers(0, 5, (3, 4))
    tired = rng.uniform(size=(3, 4))
    base = o.accept_prob(users, items)
    np.testing.assert_allclose(o.accept_prob(users, items, tired), base * np.exp(-2.0 * tired))
    o.fatigue = 0.0
    np.testing.assert_allclose(o.accept_prob(users, items, tired), base)


def test_recent_shares_by_hand():
    # user 0: periods 1-2 hold items of clusters 0, 0, 1 -> shares 2/3, 1/3; period 0 ignored
    h = History(np.array([0, 0, 0, 0, 1]), np.array([2, 0, 1, 3, 3]), np.arange(5),
                np.array([0, 1, 1, 2, 0]), 2, 4, 3)  # fmt: skip
    shares = recent_shares(h, np.array([0, 1]), np.array([0, 0, 0, 1]), 2, period=3, window=2)
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3], [0, 0]])


def test_period_measures_worked_example():
    # the measures module's docstring example: 2 users, K = 2, N = 10
    lists = np.array([[3, 5], [3, 7]])
    accepted = np.array([[True, True], [True, False]])
    item_cluster = np.zeros(10, np.int64)
    item_cluster[5] = 1
    tally = Tally(2)
    m = period_measures(lists, accepted, [{0}, {0}], item_cluster, 10, tally)
    assert m["accepted_per_user"] == 1.5 and m["precision"] == 0.75
    assert m["exploration"] == 0.5 and m["coverage"] == 0.2
    assert m["homogenization"] == 0.5
    assert m["cum_accepted_per_user"] == 1.5 and m["cum_exploration"] == 0.5
    # a second period where user 1 explores: the cumulative exploration reaches 1
    m = period_measures(np.array([[3, 7], [5, 7]]), np.array([[False, False], [True, False]]),
                        [{0, 1}, {0}], item_cluster, 10, tally)  # fmt: skip
    assert m["exploration"] == 0.5 and m["cum_exploration"] == 1.0
    assert np.isnan(homogenization([np.array([1, 2]), np.array([])], 5))  # one non-empty set
    assert homogenization([np.array([1, 2]), np.array([2, 3])], 5) == pytest.approx(1 / 3)


def test_runspace_holds_no_oracle_and_stops_at_the_start(trained, tmp_path):  # noqa: F811
    base = Workspace(trained)
    ws = make_runspace(base, tmp_path / "run", start=2)
    assert "sim" not in COPIED
    assert not any(p.name.endswith("oracle.safetensors") for p in ws.root.rglob("*"))
    h = ws.history()
    assert h.periods.max() == 1 and h.test_period == 1
    # the base workspace is untouched (the copy's files are replaced, never edited)
    assert base.history().periods.max() == 2


def test_simulate_quick_setting_is_deterministic(trained, tmp_path):  # noqa: F811
    args = ("simulate", "--periods", 2, "--seeds", 2, "--users", 12, "--workers", 1,
            "--systems", "dsie,dsie-unexplored,coea-pco", "--work", trained)  # fmt: skip
    r = coea(*args, "--out", "sim-a", "--json")
    assert r.code == 0, r.stderr
    report = r.json()
    assert set(report["final"]) == {"DSIE top-K", "DSIE unexplored", "CoEA with PCO"}
    rows = pq.read_table(trained / "sim-a" / "periods.parquet").to_pylist()
    assert len(rows) == 3 * 2 * 2  # systems x seeds x periods
    assert {r["period"] for r in rows} == {2, 3}
    for r in rows:
        assert 0 <= r["exploration"] <= r["cum_exploration"] <= 1
        assert r["precision"] == pytest.approx(r["accepted_per_user"] / 10)
    acc = pq.read_table(trained / "sim-a" / "accepted.parquet")
    total = sum(r["accepted_per_user"] * 12 for r in rows)
    assert acc.num_rows == round(total)
    assert (trained / "sim-a" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (trained / "sim-a" / "runs").exists()  # the systems' workspaces are scratch
    again = coea(*args, "--out", "sim-b", "--json")
    assert again.code == 0
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert strip(again.json()) == strip(report)
    r = coea("simulate", "--systems", "coea-magic", "--work", trained)
    assert r.code == 2 and "--systems" in r.stderr
