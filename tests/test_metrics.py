import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli import metrics as m

# ---------------------------------------------------------------- docstring examples

RECS = [[3, 1, 4], [5, 2, 0], [0, 1, 2]]
TRUTH = [[1, 4], [5], []]
EMB = [[1, 0], [0, 1], [1, 1], [-1, 0]]
CLUSTER6 = [0, 0, 1, 1, 2, 2]


def test_hit_rate_example():
    assert m.hit_rate(RECS, TRUTH, 1) == pytest.approx(0.5)
    assert m.hit_rate(RECS, TRUTH, 2) == pytest.approx(1.0)


def test_ndcg_example():
    user0 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert user0 == pytest.approx(0.693426, abs=1e-6)
    assert m.ndcg(RECS, TRUTH, 3) == pytest.approx((user0 + 1.0) / 2)
    assert m.ndcg(RECS, TRUTH, 3) == pytest.approx(0.846713, abs=1e-6)


def test_precision_recall_example():
    assert m.precision(RECS, TRUTH, 2) == pytest.approx(0.5)
    assert m.precision(RECS, TRUTH, 3) == pytest.approx(0.5)
    assert m.recall(RECS, TRUTH, 2) == pytest.approx(0.75)


def test_leave_one_out_example():
    hr, nd = m.leave_one_out_hr_ndcg([0, 3, 12], 10)
    assert hr == pytest.approx(2 / 3)
    assert nd == pytest.approx(0.476892, abs=1e-6)


def test_target_ranks_example_and_ties():
    ranks = m.target_ranks([[0.1, 0.9, 0.5], [0.2, 0.2, 0.7]], [2, 0])
    assert ranks.tolist() == [1, 2]
    # constant scores: the target is ranked last, never first
    assert m.target_ranks(np.zeros((1, 4)), [0]).tolist() == [3]


def test_self_information_example():
    recs = [[1, 2], [0, 3], [3, -1]]
    assert m.self_information(recs, [4, 2, 1, 0], 4, 2) == pytest.approx(1.5)


def test_self_information_matches_rectools_doctest():
    # RecTools MeanInvUserFreq example: 3 users, item 1 seen by all, item 2 by one, item 3 cold
    recs = [[3, -1], [2, 3], [1, 2]]
    pop = [0, 3, 1, 0]
    expected = [math.log2(3), math.log2(3), math.log2(3) / 2]
    assert m.self_information(recs, pop, 3, 3) == pytest.approx(np.mean(expected))
    assert m.self_information(recs, pop, 3, 1) == pytest.approx(2 * math.log2(3) / 3)


def test_unexpectedness_example():
    recs = [[1, 2, 4], [0, 3, -1]]
    got = m.unexpectedness(recs, [[0], [2, 4]], [0, 0, 1, 1, 2], 3)
    assert got == pytest.approx(7 / 12)


def test_history_distance_example():
    got = m.history_distance([[2, 3], [0, 1]], [[0, 1], []], EMB, 2)
    assert got == pytest.approx(0.896447, abs=1e-6)
    assert got == pytest.approx((1 - 1 / math.sqrt(2) + 1.5) / 2)


def test_intra_list_diversity_example():
    got = m.intra_list_diversity([[0, 1, 3], [0, 2, -1]], EMB, 3)
    assert got == pytest.approx((4 / 3 + 1 - 1 / math.sqrt(2)) / 2)
    assert got == pytest.approx(0.813113, abs=1e-6)


def test_coverage_example():
    recs = [[0, 1], [1, 2], [3, -1]]
    assert m.coverage(recs, 5, 1) == pytest.approx(0.6)
    assert m.coverage(recs, 5, 2) == pytest.approx(0.8)


def test_gini_example():
    assert m.gini([[0, 1], [0, 2], [0, -1]], 4, 2) == pytest.approx(0.45)


def test_gini_extremes():
    assert m.gini([[0], [0], [0]], 5, 1) == pytest.approx(4 / 5)
    assert math.isnan(m.gini([[-1, -1]], 3, 2))


def test_serendipity_example():
    got = m.serendipity([[1, 2, 4], [4, 5, 0]], [[1, 2], [4, 0]], [[0], [2]], CLUSTER6, 3)
    assert got == pytest.approx(0.5)


def test_serendipity_rank_example():
    got = m.serendipity_rank([[0, 3, 4], [2, 1, -1]], [[3, 4], [1]], [5, 3, 3, 1, 0], 3)
    assert got == pytest.approx(2 / 15)


def test_serendipity_rank_matches_rectools_doctest():
    # RecTools Serendipity example, items i1..i4 -> 0..3, users u1..u4
    recs = [[0, 1], [1, 2], [2, -1], [1, 2]]
    truth = [[0, 1], [1, 2], [1], [1]]
    pop = [3, 2, 0, 0]  # i1 three times, i2 twice in the previous interactions
    # per user at k=1: [0, 0.25, 0, 0.25]; at k=2: [0, 0.5, 0, 0.125]
    assert m.serendipity_rank(recs, truth, pop, 1) == pytest.approx(0.125)
    assert m.serendipity_rank(recs, truth, pop, 2) == pytest.approx(0.625 / 4)


def test_novel_hit_rate_example():
    recs = [[1, 2, 4], [4, 5, 0], [1, 0, 2]]
    truth = [[1, 2], [4, 0], [1]]
    history = [[0], [2], [0]]
    assert m.novel_hit_rate(recs, truth, history, CLUSTER6, 1) == pytest.approx(0.5)
    assert m.novel_hit_rate(recs, truth, history, CLUSTER6, 2) == pytest.approx(1.0)
    novel = m.novel_truth(truth, history, CLUSTER6)
    assert [a.tolist() for a in novel] == [[2], [4, 0], []]
    assert m.n_evaluated(novel) == 2


def test_new_interest_rate_example():
    day = 86400
    args = ([0, 0, 1, 2, 2], [1, 2, 3, 4, 0], [day, 3 * day, 2 * day, day, 9 * day])
    got = m.new_interest_rate(*args, [[0], [2], [4]], [0, 0, 1, 1, 2], 0)
    assert got == pytest.approx(1 / 3)
    # a 10-day window also catches user 2's new cluster on day 9
    got = m.new_interest_rate(*args, [[0], [2], [4]], [0, 0, 1, 1, 2], 0, days=10)
    assert got == pytest.approx(2 / 3)


def test_new_interest_rate_datetime64_and_start():
    start = np.datetime64("2024-01-01T00:00:00")
    ts = start + np.array([-1, 2, 8], dtype="timedelta64[D]")
    # day -1 is before the period, day 8 after the window: only user 1 is active
    got = m.new_interest_rate([0, 1, 0], [2, 2, 2], ts, [[0], [0]], [0, 0, 1], start)
    assert got == pytest.approx(1.0)
    assert math.isnan(m.new_interest_rate([0], [2], ts[:1], [[0]], [0, 0, 1], start))


def test_protocol_mentions_the_rules():
    text = m.PROTOCOL.lower()
    for phrase in ("full ranking", "before the test period", "removed", "k = 5, 10, 20"):
        assert phrase in text
    assert "K = 1, 50" in m.protocol((1, 50))


# ---------------------------------------------------------------- edge cases


def test_padding_and_repeats_are_ignored():
    # padding -1 is never relevant; a repeated item counts only at its first position
    recs = [[1, 1, -1, 2]]
    assert m.precision(recs, [[1, 2]], 4) == pytest.approx(2 / 4)
    assert m.ndcg(recs, [[1, 2]], 4) == pytest.approx(
        (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    )
    assert m.coverage(recs, 4, 4) == pytest.approx(0.5)
    assert m.self_information([[-1, -1], [0, -1]], [2, 2], 4, 2) == pytest.approx(1.0)


def test_empty_truth_users_are_excluded():
    recs = [[0, 1], [2, 3]]
    assert m.hit_rate(recs, [[1], []], 2) == pytest.approx(1.0)
    assert m.recall(recs, [[1], np.array([], dtype=int)], 2) == pytest.approx(1.0)
    assert m.n_evaluated([[1], [], [-1]]) == 1
    assert math.isnan(m.hit_rate(recs, [[], []], 2))


def test_k_larger_than_list():
    recs = [[0, 1]]
    truth = [[0, 1, 2]]
    assert m.hit_rate(recs, truth, 10) == pytest.approx(1.0)
    assert m.precision(recs, truth, 10) == pytest.approx(2 / 10)
    assert m.recall(recs, truth, 10) == pytest.approx(2 / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m.ndcg(recs, truth, 10) == pytest.approx((1 + 1 / math.log2(3)) / ideal)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        m.hit_rate([[0, 1]], [[0], [1]], 2)
    with pytest.raises(ValueError):
        m.hit_rate([[0, 1]], [[0]], 0)
    with pytest.raises(ValueError):
        m.hit_rate([0, 1], [[0]], 1)
    with pytest.raises(ValueError):
        m.leave_one_out_hr_ndcg([-1], 5)


def test_zero_embedding_has_cosine_zero():
    emb = [[0, 0], [1, 0], [0, 1]]
    assert m.intra_list_diversity([[0, 1]], emb, 2) == pytest.approx(1.0)
    assert m.history_distance([[0]], [[1, 2]], emb, 1) == pytest.approx(1.0)


def test_blocked_loops_match_single_block(monkeypatch):
    rng = np.random.default_rng()
    n_items, n_users = 40, 30
    emb = rng.normal(size=(n_items, 5))
    recs = np.stack([rng.permutation(n_items)[:6] for _ in range(n_users)])
    recs[rng.random(recs.shape) < 0.2] = -1
    history = [rng.choice(n_items, size=rng.integers(0, 6)) for _ in range(n_users)]
    whole = (m.intra_list_diversity(recs, emb, 6), m.history_distance(recs, history, emb, 6))
    monkeypatch.setattr(m, "_BLOCK_FLOATS", 7)  # one user per block
    blocked = (m.intra_list_diversity(recs, emb, 6), m.history_distance(recs, history, emb, 6))
    assert blocked == pytest.approx(whole)
    assert whole[0] == pytest.approx(_ref_ild(recs, emb, 6))
    assert whole[1] == pytest.approx(_ref_hist_dist(recs, history, emb, 6))


# ---------------------------------------------------------------- plain-loop references


def _slots(row, k):
    """Top-k slots: padding and repeats become None, positions are kept."""
    out = []
    for i in list(row)[:k]:
        out.append(int(i) if i >= 0 and i not in out else None)
    return out


def _clean(row, k):
    return [i for i in _slots(row, k) if i is not None]


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))


def _ref_quality(recs, truth, k):
    hr, nd, pr, rc = [], [], [], []
    for row, t in zip(recs, truth, strict=True):
        t = {int(x) for x in t if x >= 0}
        if not t:
            continue
        hits = [r for r, i in enumerate(_slots(row, k)) if i in t]
        hr.append(float(bool(hits)))
        pr.append(len(hits) / k)
        rc.append(len(hits) / len(t))
        dcg = sum(1 / math.log2(r + 2) for r in hits)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(t), k)))
        nd.append(dcg / idcg)
    return [float(np.mean(x)) if x else float("nan") for x in (hr, nd, pr, rc)]


def _ref_unexp_ser(recs, truth, history, cluster, k):
    unexp, ser = [], []
    for row, t, h in zip(recs, truth, history, strict=True):
        top = _clean(row, k)
        seen = {cluster[i] for i in h}
        new = [i for i in top if cluster[i] not in seen]
        if top:
            unexp.append(len(new) / len(top))
        if len(t):
            ser.append(sum(i in set(t) for i in new) / k)
    mean = lambda x: float(np.mean(x)) if x else float("nan")  # noqa: E731
    return mean(unexp), mean(ser)


def _ref_ild(recs, emb, k):
    vals = []
    for row in recs:
        top = _clean(row, k)
        pairs = [(a, b) for n, a in enumerate(top) for b in top[n + 1 :]]
        if pairs:
            vals.append(np.mean([1 - _cos(emb[a], emb[b]) for a, b in pairs]))
    return float(np.mean(vals)) if vals else float("nan")


def _ref_hist_dist(recs, history, emb, k):
    vals = []
    for row, h in zip(recs, history, strict=True):
        top, hist = _clean(row, k), sorted({int(x) for x in h})
        if top and hist:
            per = [np.mean([1 - _cos(emb[i], emb[j]) for j in hist]) for i in top]
            vals.append(np.mean(per))
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------- properties


@st.composite
def cases(draw):
    n_items = draw(st.integers(2, 25))
    n_users = draw(st.integers(1, 8))
    width = draw(st.integers(1, 8))
    item = st.integers(0, n_items - 1)
    recs = np.full((n_users, width), -1, dtype=np.int64)
    for u in range(n_users):
        row = draw(st.lists(item, max_size=width))  # may hold repeats
        recs[u, : len(row)] = row
    truth = [np.array(draw(st.lists(item, max_size=5)), dtype=np.int64) for _ in range(n_users)]
    history = [np.array(draw(st.lists(item, max_size=5)), dtype=np.int64) for _ in range(n_users)]
    cluster = np.array(draw(st.lists(st.integers(0, 4), min_size=n_items, max_size=n_items)))
    pop = np.array(draw(st.lists(st.integers(0, 9), min_size=n_items, max_size=n_items)))
    emb = np.array(
        draw(
            st.lists(
                st.lists(st.integers(-3, 3), min_size=3, max_size=3),
                min_size=n_items,
                max_size=n_items,
            )
        ),
        dtype=np.float64,
    )
    k = draw(st.integers(1, width + 2))
    return recs, truth, history, cluster, pop, emb, k


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_quality_matches_reference_and_bounds(case):
    recs, truth, _, _, _, _, k = case
    got = [f(recs, truth, k) for f in (m.hit_rate, m.ndcg, m.precision, m.recall)]
    for a, b in zip(got, _ref_quality(recs, truth, k), strict=True):
        assert _close(a, b)
    hr, nd, pr, rc = got
    if not math.isnan(hr):
        assert all(-1e-12 <= x <= 1 + 1e-12 for x in got)
        assert hr >= pr - 1e-12
        assert hr >= rc - 1e-12 and hr >= nd - 1e-12


@settings(max_examples=60, deadline=None)
@given(cases())
def test_novelty_and_serendipity_match_reference(case):
    recs, truth, history, cluster, pop, emb, k = case
    unexp, ser = _ref_unexp_ser(recs, truth, history, cluster, k)
    if any(_clean(r, k) for r in recs):
        assert m.unexpectedness(recs, history, cluster, k) == pytest.approx(unexp)
    assert _close(m.serendipity(recs, truth, history, cluster, k), ser)
    assert _close(m.intra_list_diversity(recs, emb, k), _ref_ild(recs, emb, k))
    assert _close(m.history_distance(recs, history, emb, k), _ref_hist_dist(recs, history, emb, k))
    for value in (
        m.serendipity(recs, truth, history, cluster, k),
        m.serendipity_rank(recs, truth, pop, k),
        m.novel_hit_rate(recs, truth, history, cluster, k),
        m.unexpectedness(recs, history, cluster, k),
    ):
        assert math.isnan(value) or -1e-12 <= value <= 1 + 1e-12
    for value in (m.intra_list_diversity(recs, emb, k), m.history_distance(recs, history, emb, k)):
        assert math.isnan(value) or -1e-12 <= value <= 2 + 1e-12
    # serendipitous items are a subset of the hits
    if not math.isnan(ser):
        assert ser <= m.precision(recs, truth, k) + 1e-12


@settings(max_examples=60, deadline=None)
@given(cases())
def test_catalogue_metrics_bounds_and_monotone_coverage(case):
    recs, _, _, _, pop, _, k = case
    n_items = pop.size
    covs = [m.coverage(recs, n_items, j) for j in range(1, recs.shape[1] + 2)]
    assert all(0 <= c <= 1 for c in covs)
    assert all(a <= b for a, b in itertools.pairwise(covs))
    g = m.gini(recs, n_items, k)
    assert math.isnan(g) or 0 <= g <= (n_items - 1) / n_items + 1e-12
    si = m.self_information(recs, pop, 10, k)  # pop <= 9 < 10 users: every item >= 0 bits
    assert math.isnan(si) or 0 <= si <= math.log2(10) + 1e-12


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.data())
def test_gini_of_uniform_exposure_is_zero(n_items, copies, data):
    k = data.draw(st.integers(1, n_items))
    rng = np.random.default_rng()
    # row u shows items u, u+1, ..., u+k-1 (mod n): every item appears copies * k times
    rows = (np.arange(copies * n_items)[:, None] + np.arange(k)[None, :]) % n_items
    recs = rng.permutation(n_items)[rows]  # random relabelling
    rng.shuffle(recs)
    assert m.gini(recs, n_items, k) == pytest.approx(0.0, abs=1e-12)
    assert m.coverage(recs, n_items, k) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=6, unique=True), min_size=1))
def test_perfect_lists_have_ndcg_one(truths):
    width = max(len(t) for t in truths)
    recs = np.full((len(truths), width), -1)
    for u, t in enumerate(truths):
        recs[u, : len(t)] = t
    for k in range(1, width + 1):
        assert m.ndcg(recs, truths, k) == pytest.approx(1.0)
        assert m.hit_rate(recs, truths, k) == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 20), st.integers(1, 20))
def test_leave_one_out_agrees_with_ranked_lists(n_users, n_items, k):
    rng = np.random.default_rng()
    scores = rng.random((n_users, n_items))  # distinct almost surely
    targets = rng.integers(0, n_items, size=n_users)
    ranks = m.target_ranks(scores, targets)
    recs = np.argsort(-scores, axis=1)
    truth = [[t] for t in targets]
    hr, nd = m.leave_one_out_hr_ndcg(ranks, k)
    assert hr == pytest.approx(m.hit_rate(recs, truth, k))
    assert nd == pytest.approx(m.ndcg(recs, truth, k))


def test_compute_all_matches_single_metrics():
    rng = np.random.default_rng()
    n_users, n_items, width = 50, 60, 12
    cluster = rng.integers(0, 6, size=n_items)
    pop = rng.integers(0, n_users, size=n_items)
    emb = rng.normal(size=(n_items, 4))
    recs = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    recs[:, -2:][rng.random((n_users, 2)) < 0.5] = -1
    truth = [rng.choice(n_items, size=rng.integers(0, 5), replace=False) for _ in range(n_users)]
    history = [rng.choice(n_items, size=rng.integers(0, 8)) for _ in range(n_users)]
    ks = (1, 5, 10)
    out = m.compute_all(recs, truth, history, cluster, pop, n_users, n_items, emb, ks=ks)

    ev = [u for u in range(n_users) if len(truth[u])]
    r, t, h = recs[ev], [truth[u] for u in ev], [history[u] for u in ev]
    assert out["users"] == len(ev) == m.n_evaluated(truth)
    assert out["novel_users"] == m.n_evaluated(m.novel_truth(t, h, cluster))
    for k in ks:
        expect = {
            "hr": m.hit_rate(r, t, k),
            "ndcg": m.ndcg(r, t, k),
            "precision": m.precision(r, t, k),
            "recall": m.recall(r, t, k),
            "novel_hr": m.novel_hit_rate(r, t, h, cluster, k),
            "self_info": m.self_information(r, pop, n_users, k),
            "unexpectedness": m.unexpectedness(r, h, cluster, k),
            "hist_dist": m.history_distance(r, h, emb, k),
            "ild": m.intra_list_diversity(r, emb, k),
            "coverage": m.coverage(r, n_items, k),
            "gini": m.gini(r, n_items, k),
            "serendipity": m.serendipity(r, t, h, cluster, k),
            "serendipity_rank": m.serendipity_rank(r, t, pop, k),
        }
        for name, value in expect.items():
            assert _close(out[f"{name}@{k}"], value), name
    # quality metrics ignore the users compute_all drops
    assert out["hr@5"] == pytest.approx(m.hit_rate(recs, truth, 5))

    no_emb = m.compute_all(recs, truth, history, cluster, pop, n_users, n_items, ks=(5,))
    assert "ild@5" not in no_emb and "hist_dist@5" not in no_emb and "hr@5" in no_emb


def test_compute_all_with_no_evaluated_users():
    out = m.compute_all([[0, 1]], [[]], [[0]], [0, 1], [1, 1], 1, 2, ks=(1,))
    assert out["users"] == 0 and out["novel_users"] == 0
    assert math.isnan(out["hr@1"]) and out["coverage@1"] == 0.0


# ---------------------------------------------------------------- uncertainty


def test_per_user_example():
    out = m.per_user([[1, 2, 4], [4, 5, 0]], [[1, 2], [4, 0]], [[0], [2]], [0, 0, 1, 1, 2, 2], 3)
    assert out["hit"].tolist() == [1.0, 1.0]
    assert out["novel_hit"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(out["serendipity"], [1 / 3, 2 / 3])


def test_per_user_means_are_the_metrics():
    rng = np.random.default_rng()
    n_items, n_users, k = 60, 40, 10
    item_cluster = rng.integers(0, 8, n_items)
    recs = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    recs[rng.random(recs.shape) < 0.1] = -1
    truth = [rng.choice(n_items, size=rng.integers(0, 5), replace=False) for _ in range(n_users)]
    history = [rng.choice(n_items, size=rng.integers(0, 8)) for _ in range(n_users)]
    pu = m.per_user(recs, truth, history, item_cluster, k)
    assert len(pu["serendipity"]) == m.n_evaluated(truth)
    assert np.nanmean(pu["novel_hit"]) == pytest.approx(
        m.novel_hit_rate(recs, truth, history, item_cluster, k)
    )
    assert pu["serendipity"].mean() == pytest.approx(
        m.serendipity(recs, truth, history, item_cluster, k)
    )
    assert pu["hit"].mean() == pytest.approx(m.hit_rate(recs, truth, k))


def test_ratio_interval_examples():
    point, lo, hi = m.ratio_interval([1, 1, 0, 0], [1, 0, 0, 0])
    assert point == 2.0 and lo <= 2.0 <= hi
    assert m.ratio_interval([1, 0, 1], [1, 0, 1]) == (1.0, 1.0, 1.0)
    # NaN users are dropped from both systems
    assert m.ratio_interval([1, np.nan, 0, 1], [0.5, 1, np.nan, 0.5])[0] == 2.0
    assert all(math.isnan(x) for x in m.ratio_interval([np.nan], [1.0]))
    assert m.ratio_interval([0, 0], [0, 0])[1:] == pytest.approx([np.nan, np.nan], nan_ok=True)


def test_ratio_interval_properties():
    rng = np.random.default_rng()
    b = rng.random(50)
    a = b + rng.normal(0, 0.1, 50)
    point, lo, hi = m.ratio_interval(a, b, seed=3)
    assert lo < point < hi
    assert point == pytest.approx(a.mean() / b.mean())
    # scaling one system scales the ratio and its interval exactly (same resamples)
    p2, lo2, hi2 = m.ratio_interval(2 * a, b, seed=3)
    assert (p2, lo2, hi2) == pytest.approx((2 * point, 2 * lo, 2 * hi))
    # a wider level gives a wider interval; more users a narrower one
    _, lo9, hi9 = m.ratio_interval(a, b, seed=3, level=0.9)
    assert lo <= lo9 <= hi9 <= hi
    big_b = rng.random(5000)
    _, lob, hib = m.ratio_interval(big_b + rng.normal(0, 0.1, 5000), big_b, seed=3)
    assert hib - lob < hi - lo
