"""The figures users read: integer round ticks, labelled axes, rejected rounds marked, the
table's cut-off, 95% intervals (checked against scipy's Wilson interval), no overlapping point
labels, and group names and sizes that match the similarity matrix."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from scipy.stats import binomtest

from coea_cli.evaluation import plots
from coea_cli.groups import grouping
from coea_cli.groups.plot import group_name, similarity_figure


def _curves(rng):
    out = {}
    for track in ("main", "nokl"):
        rows = []
        for k in range(int(rng.integers(3, 7))):
            n = int(rng.integers(20, 200))
            rows.append({"round": k, "accepted": bool(k == 0 or rng.random() > 0.3), "k": 10,
                         "users": n, "quality": int(rng.integers(0, n + 1)) / n,
                         "quality_any": 0.5, "novelty": float(rng.random() * 3),
                         "coverage": 0.5})  # fmt: skip
        rows[-1]["accepted"] = False  # at least one rejected round
        out[track] = rows
    return out


def test_wilson_matches_scipy():
    rng = np.random.default_rng(secrets.randbits(32))
    for _ in range(50):
        n = int(rng.integers(1, 500))
        k = int(rng.integers(0, n + 1))
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = plots.wilson(k / n, n)
        assert lo == pytest.approx(ci.low, abs=2e-4) and hi == pytest.approx(ci.high, abs=2e-4)
    assert all(np.isnan(plots.wilson(None, 10))) and all(np.isnan(plots.wilson(0.5, 0)))


def test_rounds_figure():
    seed = secrets.randbits(32)
    curves = _curves(np.random.default_rng(seed))
    fig = plots.rounds_figure(curves)
    quality, novelty = fig.axes
    for ax in (quality, novelty):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (seed, ticks)
        assert ax.get_ylabel() and ax.get_xlabel() == "fine-tuning round"
    assert "top 10" in quality.get_title() and "HR@10" in quality.get_ylabel()
    legend = [t.get_text() for t in quality.get_legend().get_texts()]
    assert "rejected round (rolled back)" in legend and "CoEA (SFT + KL)" in legend
    crosses = [c for c in quality.collections if isinstance(c, PathCollection)]
    rejected = [(r["round"], r["quality"]) for rows in curves.values() for r in rows
                if not r["accepted"]]  # fmt: skip
    marked = {tuple(np.round(c.get_offsets()[0], 9)) for c in crosses}
    assert len(crosses) == len(rejected)
    assert {(float(x), round(y, 9)) for x, y in rejected} <= marked, seed
    # error bars: the Wilson interval of each round's proportion
    for container, rows in zip(quality.containers, curves.values(), strict=True):
        segments = container.lines[2][0].get_segments()
        for seg, r in zip(segments, rows, strict=True):
            lo, hi = plots.wilson(r["quality"], r["users"])
            assert seg[0][1] == pytest.approx(lo, abs=1e-9) and seg[1][1] == pytest.approx(hi)


def test_tradeoff_figure_labels_and_intervals():
    rng = np.random.default_rng(secrets.randbits(32))
    names = [f"system {j}" for j in range(11)]
    rows = {n: {"hr@10": float(rng.random()), "unexpectedness@10": float(rng.random()),
                "users": int(rng.integers(10, 100))} for n in names}  # fmt: skip
    rows["no numbers"] = {"hr@10": None, "unexpectedness@10": 0.2, "users": 5}
    fig = plots.tradeoff_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == plots.LABELS["unexpectedness@10"]
    assert ax.get_ylabel() == plots.LABELS["hr@10"]
    assert not ax.texts  # no labels on the points: the legend names them, nothing overlaps
    assert [t.get_text() for t in ax.get_legend().get_texts()] == names
    styles = {(c.lines[0].get_marker(), c.lines[0].get_color()) for c in ax.containers}
    assert len(styles) == len(names)  # every system can be told apart
    for container, name in zip(ax.containers, names, strict=True):
        (seg,) = container.lines[2][0].get_segments()
        lo, hi = plots.wilson(rows[name]["hr@10"], rows[name]["users"])
        assert seg[0][1] == pytest.approx(lo) and seg[1][1] == pytest.approx(hi)


def test_similarity_figure_names_and_sizes_match_the_matrix():
    rng = np.random.default_rng(secrets.randbits(32))
    n_users, g = 300, 5
    hist = rng.integers(0, 3, (n_users, 12)).astype(float)
    hist[rng.random(n_users) < 0.2] = 0  # users without history: not in the matrix
    labels = rng.integers(0, g, n_users)
    sim = grouping.similarity_matrix(hist, labels, g)
    has = hist.sum(axis=1) > 0
    assert sim["sizes"] == [int((has & (labels == k)).sum()) for k in range(g)]
    assert sum(sim["sizes"]) == sim["users"] == int(has.sum())
    names = [group_name(k, [f"<a_{k}> Drama, Crime: Heat; Ronin"], "age 25-34") for k in range(g)]
    assert names[0] == "0 Drama, Crime"
    fig = similarity_figure(sim["matrix"], sim["sizes"], "t", names)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [f"{k} Drama, Crime (n={sim['sizes'][k]})" for k in range(g)]
    with pytest.raises(ValueError):
        similarity_figure(sim["matrix"], sim["sizes"][:-1], "t", names)


def test_group_name_falls_back_and_shortens():
    assert group_name(3, [], "age 18-24 (40%), gender F (60%)") == "3 age 18-24 (40%)"
    long = group_name(1, ["<a_1> Action, Adventure, Animation, Children's, Comedy: Toy Story"])
    assert long.startswith("1 Action, Adventure") and long.endswith("…") and len(long) <= 32
