"""Unit tests of the PCO loop's pure helpers: contexts, examples and scoring.

Every check compares against a hand-computed table or a naive re-implementation; no model is
loaded. The hand-built world below is small enough to follow on paper:

    item:     0  1  2  3  4  5  6  7
    cluster:  0  0  1  1  2  2  3  4

    time-ordered log (user, item, period):
      (0,0,0) (1,2,0) (0,2,0) (0,1,0) (1,4,0) (2,6,0)
      (0,4,1) (1,3,1)
      (0,7,2) (2,5,2) (3,6,2)
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from coea_cli.llm.context import CONTEXTS, World, banned, cluster_popularity, context_of
from coea_cli.pco.examples import (
    period_users,
    relevance_labels,
    split_users,
    transitions,
)
from coea_cli.pco.scoring import (
    auc,
    cluster_novelty,
    hit_rate,
    popularity_top,
    rerank,
    sampled_top,
)
from coea_cli.workspace import ClusterSpace, History, UserSequences
from coea_cli.workspace.history import distinct_last, recent_distinct

LOG = [
    (0, 0, 0),
    (1, 2, 0),
    (0, 2, 0),
    (0, 1, 0),
    (1, 4, 0),
    (2, 6, 0),
    (0, 4, 1),
    (1, 3, 1),
    (0, 7, 2),
    (2, 5, 2),
    (3, 6, 2),
]
ITEM_CLUSTER = [0, 0, 1, 1, 2, 2, 3, 4]
PERSONA = {0: "film buffs", 1: "family viewers"}
GROUP_OF = {0: 0, 1: 1, 3: 1}  # user 2 has no group


def make_world(log=LOG, item_cluster=ITEM_CLUSTER, group_of=None, persona=None) -> World:
    ic = np.asarray(item_cluster, dtype=np.int64)
    arr = np.asarray(log, dtype=np.int64).reshape(-1, 3)
    n_users = int(arr[:, 0].max()) + 1 if len(arr) else 0
    groups = np.full(n_users, -1, dtype=np.int64)  # -1: no group
    for u, g in (GROUP_OF if group_of is None else group_of).items():
        if u < n_users:
            groups[u] = g
    history = History(
        users=arr[:, 0].copy(),
        items=arr[:, 1].copy(),
        times=np.arange(len(arr)),  # the log is in time order
        periods=arr[:, 2].copy(),
        n_users=n_users,
        n_items=len(ic),
        test_period=int(arr[:, 2].max()) if len(arr) else 0,
    )
    return World(
        history=history,
        item_cluster=ic,
        n_clusters=int(ic.max()) + 1,
        describe={(int(c),): f"cluster {c}" for c in np.unique(ic)},
        group_of=groups,
        persona=dict(PERSONA if persona is None else persona),
    )


def seqs_as_lists(seqs: UserSequences) -> dict[int, list[int]]:
    return {int(u): seqs.of(u).tolist() for u in seqs.users()}


# ---------------------------------------------------------------- naive references


def naive_distinct_last(values) -> list[int]:
    """Walk backwards keeping first sightings, then reverse."""
    out: list[int] = []
    for v in reversed(list(values)):
        if v not in out:
            out.append(v)
    return out[::-1]


def naive_sequences(log, before_period, only_period=None) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for u, i, p in log:
        keep = p == only_period if only_period is not None else p < before_period
        if keep:
            out.setdefault(u, []).append(i)
    return out


@st.composite
def random_logs(draw, max_users=6, max_items=10, max_periods=4, max_rows=40):
    n_items = draw(st.integers(1, max_items))
    item_cluster = draw(st.lists(st.integers(0, 4), min_size=n_items, max_size=n_items))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, max_users - 1),
                st.integers(0, n_items - 1),
                st.integers(0, max_periods - 1),
            ),
            max_size=max_rows,
        )
    )
    rows.sort(key=lambda r: r[2])  # time-sorted log: periods never go backwards
    return rows, item_cluster


# ---------------------------------------------------------------- History.before / during


def test_sequences_hand_world():
    w = make_world()
    assert seqs_as_lists(w.history.before(1)) == {0: [0, 2, 1], 1: [2, 4], 2: [6]}
    assert seqs_as_lists(w.history.before(2)) == {0: [0, 2, 1, 4], 1: [2, 4, 3], 2: [6]}
    assert seqs_as_lists(w.history.before(3)) == {
        0: [0, 2, 1, 4, 7],
        1: [2, 4, 3],
        2: [6, 5],
        3: [6],
    }
    assert seqs_as_lists(w.history.during(1)) == {0: [4], 1: [3]}
    # only_period wins over before_period
    assert seqs_as_lists(w.history.during(2)) == {0: [7], 2: [5], 3: [6]}
    assert seqs_as_lists(w.history.before(0)) == {}
    assert seqs_as_lists(w.history.during(9)) == {}


@settings(max_examples=40, deadline=None)
@given(random_logs(), st.integers(0, 4), st.one_of(st.none(), st.integers(0, 3)))
def test_sequences_match_naive(data, before, only):
    log, ic = data
    w = make_world(log, ic)
    got = w.history.during(only) if only is not None else w.history.before(before)
    assert seqs_as_lists(got) == naive_sequences(log, before, only)


# ---------------------------------------------------------------- distinct_last / banned


def test_distinct_last_hand():
    assert distinct_last(np.array([3, 1, 3, 2, 1])) == [3, 2, 1]
    assert distinct_last(np.array([5, 5, 5])) == [5]
    assert distinct_last(np.zeros(0, dtype=np.int64)) == []
    assert recent_distinct([3, 1, 3, 2, 1], 2) == [2, 1]
    assert recent_distinct([3, 1, 3, 2, 1], 9) == [3, 2, 1]
    assert recent_distinct([3, 1], 0) == [] and recent_distinct([], 3) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=30), st.integers(0, 8))
def test_distinct_last_matches_naive(xs, n):
    order = naive_distinct_last(xs)
    assert distinct_last(np.array(xs, dtype=np.int64)) == order
    assert recent_distinct(xs, n) == (order[-n:] if n else [])


def test_banned_hand():
    w = make_world()
    assert banned(w, np.array([0, 2, 1, 4])) == {(0,), (1,), (2,)}
    assert banned(w, np.array([7, 7])) == {(4,)}
    assert banned(w, np.zeros(0, dtype=np.int64)) == set()


# ---------------------------------------------------------------- context_of


def test_context_of_hand_with_dsie():
    w = make_world()
    hist = np.array([0, 2, 1, 4])  # clusters 0 1 0 2
    ctx = context_of(w, 0, hist)
    assert ctx.user == 0
    assert ctx.persona == "film buffs"
    assert ctx.recent == [(1,), (0,), (2,)]
    assert ctx.familiar == [(1,), (0,), (2,)]
    # recent is limited, familiar is not
    ctx2 = context_of(w, 0, hist, recent=2)
    assert ctx2.recent == [(0,), (2,)]
    assert ctx2.familiar == [(1,), (0,), (2,)]
    # persona comes from the user's group
    assert context_of(w, 1, hist).persona == "family viewers"
    assert context_of(w, 3, hist).persona == "family viewers"
    # no group: no persona
    assert context_of(w, 2, hist).persona == ""


def test_context_of_hand_without_dsie():
    w = make_world()
    hist = np.array([0, 2, 1, 4, 7])  # clusters 0 1 0 2 4
    ctx = context_of(w, 0, hist, context="recent", short_window=3)
    # window = clusters 0 2 4: cluster 1 (older) is neither recent nor familiar
    assert ctx.persona == ""
    assert ctx.recent == [(0,), (2,), (4,)]
    assert ctx.familiar == [(0,), (2,), (4,)]
    ctx = context_of(w, 0, hist, context="recent", short_window=3, recent=1)
    assert ctx.recent == [(4,)]
    assert ctx.familiar == [(0,), (2,), (4,)]
    # the short window does not apply with DSIE
    ctx = context_of(w, 0, hist, context="full", short_window=3)
    assert ctx.familiar == [(1,), (0,), (2,), (4,)]
    # without the persona: the same long-term context, no persona
    bare = context_of(w, 1, hist, context="no-persona", short_window=3)
    full = context_of(w, 1, hist, context="full", short_window=3)
    assert full.persona == "family viewers" and bare.persona == ""
    assert (bare.recent, bare.familiar) == (full.recent, full.familiar)
    with pytest.raises(ValueError, match="unknown context 'dsie'"):
        context_of(w, 1, hist, context="dsie")


def test_context_of_empty_history():
    w = make_world()
    for context in CONTEXTS:
        ctx = context_of(w, 3, np.zeros(0, dtype=np.int64), context=context)
        assert ctx.recent == [] and ctx.familiar == []
        assert ctx.persona == ("family viewers" if context == "full" else "")


@settings(max_examples=60, deadline=None)
@given(
    hist=st.lists(st.integers(0, 7), max_size=25),
    recent=st.integers(1, 6),
    short_window=st.integers(1, 12),
    context=st.sampled_from(sorted(CONTEXTS)),
    user=st.integers(0, 4),
)
def test_context_of_matches_naive(hist, recent, short_window, context, user):
    w = make_world()
    ctx = context_of(
        w,
        user,
        np.array(hist, dtype=np.int64),
        recent=recent,
        short_window=short_window,
        context=context,
    )
    clusters = [ITEM_CLUSTER[i] for i in hist]
    long_term = context != "recent"
    shown = clusters if long_term else clusters[max(0, len(clusters) - short_window) :]
    exp_recent = naive_distinct_last(shown)[-recent:]
    exp_familiar = naive_distinct_last(clusters if long_term else shown)
    assert ctx.recent == [(c,) for c in exp_recent]
    assert ctx.familiar == [(c,) for c in exp_familiar]
    assert len(ctx.recent) <= recent
    # recent is always the tail of familiar
    assert ctx.familiar[len(ctx.familiar) - len(ctx.recent) :] == ctx.recent
    exp_persona = PERSONA.get(GROUP_OF.get(user), "") if context == "full" else ""
    assert ctx.persona == exp_persona
    assert all(type(c[0]) is int for c in ctx.recent + ctx.familiar)


# ---------------------------------------------------------------- cluster_popularity


def test_cluster_popularity_hand():
    w = make_world()
    np.testing.assert_array_equal(cluster_popularity(w, 0), [0, 0, 0, 0, 0])
    # period 0: c0 {0}, c1 {0,1}, c2 {1}, c3 {2}; user 0 hits c0 twice but counts once
    np.testing.assert_array_equal(cluster_popularity(w, 1), [1, 2, 1, 1, 0])
    np.testing.assert_array_equal(cluster_popularity(w, 2), [1, 2, 2, 1, 0])
    np.testing.assert_array_equal(cluster_popularity(w, 3), [1, 2, 3, 2, 1])


@settings(max_examples=40, deadline=None)
@given(random_logs(), st.integers(0, 4))
def test_cluster_popularity_matches_naive(data, before):
    log, ic = data
    w = make_world(log, ic)
    users_of: dict[int, set[int]] = {}
    for u, i, p in log:
        if p < before:
            users_of.setdefault(ic[i], set()).add(u)
    expected = [len(users_of.get(c, ())) for c in range(w.n_clusters)]
    got = cluster_popularity(w, before)
    assert got.tolist() == expected


# ---------------------------------------------------------------- transitions


def one_user_world(clusters_of_seq):
    """A world whose single user 0 consumes one fresh item per position, with the given clusters."""
    n = len(clusters_of_seq)
    log = [(0, i, 0) for i in range(n)]
    w = make_world(log, list(clusters_of_seq))
    return w, w.history.before(1)


def test_transitions_hand_all_cuts():
    # clusters along the sequence: 0 0 1 0 2 2
    w, seqs = one_user_world([0, 0, 1, 0, 2, 2])
    trans = transitions(
        w, seqs, min_history=2, window=20, per_user=10, rng=np.random.default_rng(0)
    )
    # cut 2: seen {0}, ahead 1 0 2 2 -> target 1; cut 3: seen {0,1}, ahead 0 2 2 -> 2;
    # cut 4: seen {0,1}, ahead 2 2 -> 2; cut 5: seen {0,1,2}, ahead 2 -> none
    got = sorted(
        (tuple(sorted(t.banned)), t.target, tuple(sorted(t.engaged)), tuple(t.context.familiar))
        for t in trans
    )
    assert got == sorted(
        [
            (((0,),), (1,), ((0,), (1,), (2,)), ((0,),)),
            (((0,), (1,)), (2,), ((0,), (2,)), ((0,), (1,))),  # history 0 0 1
            (((0,), (1,)), (2,), ((2,),), ((1,), (0,))),  # history 0 0 1 0
        ]
    )
    assert all(t.user == 0 for t in trans)


def test_transitions_hand_window_and_caps():
    w, seqs = one_user_world([0, 0, 1, 0, 2, 2])
    # window 1: cut 2 -> 1; cut 3 ahead [0] -> none; cut 4 -> 2; cut 5 -> none
    trans = transitions(w, seqs, min_history=2, window=1, per_user=10, rng=np.random.default_rng(1))
    assert sorted(t.target for t in trans) == [(1,), (2,)]
    assert all(t.engaged == {t.target} for t in trans)
    # cap one per target cluster over the full window: one 1 and one 2
    trans = transitions(
        w,
        seqs,
        min_history=2,
        window=20,
        per_user=10,
        cap_per_cluster=1,
        rng=np.random.default_rng(2),
    )
    assert sorted(t.target for t in trans) == [(1,), (2,)]
    trans = transitions(w, seqs, min_history=2, window=20, per_user=1, rng=np.random.default_rng(3))
    assert len(trans) == 1
    # histories shorter than min_history give nothing
    assert transitions(w, seqs, min_history=6, rng=np.random.default_rng(0)) == []


def _find_cut(world, seq, tr, window, min_history, context):
    """Every cut that reproduces this transition exactly, from a naive recomputation."""
    clusters = [int(world.item_cluster[i]) for i in seq]
    cuts = []
    for t in range(min_history, len(seq)):
        hist = clusters[:t]
        ahead = clusters[t : t + window]
        novel = [c for c in ahead if c not in hist]
        if not novel:
            continue
        ctx = context_of(world, tr.user, np.asarray(seq[:t]), context=context)
        if (
            tr.target == (novel[0],)
            and tr.banned == {(c,) for c in hist}
            and tr.engaged == {(c,) for c in ahead}
            and tr.context == ctx
        ):
            cuts.append(t)
    return cuts


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    min_history=st.integers(1, 4),
    window=st.integers(1, 6),
    per_user=st.integers(1, 4),
    cap=st.integers(1, 5),
    context=st.sampled_from(sorted(CONTEXTS)),
)
def test_transitions_properties(seed, min_history, window, per_user, cap, context):
    gen = np.random.default_rng(seed)
    n_items, n_users = 12, 6
    item_cluster = gen.integers(0, 5, n_items).tolist()
    log = []
    for _ in range(60):
        log.append((int(gen.integers(n_users)), int(gen.integers(n_items)), 0))
    w = make_world(log, item_cluster)
    seqs = w.history.before(1)
    trans = transitions(
        w,
        seqs,
        min_history=min_history,
        window=window,
        per_user=per_user,
        cap_per_cluster=cap,
        context=context,
        rng=np.random.default_rng(seed),
    )
    per_user_count = Counter(t.user for t in trans)
    assert all(n <= per_user for n in per_user_count.values())
    assert all(n <= cap for n in Counter(t.target for t in trans).values())
    for tr in trans:
        seq = seqs.of(tr.user).tolist()
        # novelty: the target was never seen before the cut, but is engaged after it
        assert tr.target not in tr.banned
        assert tr.target in tr.engaged
        assert tr.target not in tr.context.familiar
        assert set(tr.context.familiar) <= tr.banned
        assert (tr.context.persona != "") == (context == "full" and tr.user in GROUP_OF)
        # no leakage: some cut reproduces context, banned, target and engaged exactly
        assert _find_cut(w, seq, tr, window, min_history, context)
    # the same generator seed gives the same examples
    again = transitions(
        w,
        seqs,
        min_history=min_history,
        window=window,
        per_user=per_user,
        cap_per_cluster=cap,
        context=context,
        rng=np.random.default_rng(seed),
    )
    assert [(t.user, t.target, t.banned, t.engaged) for t in again] == [
        (t.user, t.target, t.banned, t.engaged) for t in trans
    ]


def test_transitions_no_leakage_distinct_items():
    """With unique items the cut is identified by the history: familiar clusters only come
    from the items before it."""
    gen = np.random.default_rng(11)
    n = 30
    item_cluster = gen.integers(0, 6, n).tolist()
    w, seqs = one_user_world(item_cluster)
    trans = transitions(
        w, seqs, min_history=3, window=5, per_user=100, cap_per_cluster=100, rng=gen
    )
    assert trans
    for tr in trans:
        cuts = _find_cut(w, seqs.of(0).tolist(), tr, 5, 3, "full")
        assert cuts, tr
        t = cuts[0]
        before = set(item_cluster[:t])
        assert {c[0] for c in tr.context.familiar} == before
        assert tr.target[0] not in before
        assert tr.target[0] in item_cluster[t : t + 5]


# ---------------------------------------------------------------- relevance_labels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), negatives=st.integers(0, 4))
def test_relevance_labels(seed, negatives):
    gen = np.random.default_rng(seed)
    item_cluster = gen.integers(0, 8, 16).tolist()
    log = [(int(gen.integers(5)), int(gen.integers(16)), 0) for _ in range(50)]
    w = make_world(log, item_cluster)
    trans = transitions(w, w.history.before(1), min_history=2, window=4, rng=gen)
    clusters = w.clusters()
    rows = relevance_labels(trans, clusters, np.random.default_rng(seed), negatives=negatives)
    # rows are grouped per transition: the positive first, then its negatives
    pos_idx = [j for j, r in enumerate(rows) if r[2] == 1]
    assert len(pos_idx) == len(trans)
    bounds = [*pos_idx, len(rows)]
    for n, tr in enumerate(trans):
        block = rows[bounds[n] : bounds[n + 1]]
        assert block[0] == (tr.context, tr.target, 1)
        negs = [c for _, c, lab in block[1:] if lab == 0]
        assert len(negs) == len(block) - 1
        pool = [c for c in clusters if c not in tr.banned and c not in tr.engaged]
        assert len(negs) == min(negatives, len(pool))
        assert len(set(negs)) == len(negs)
        for c in negs:
            assert c in clusters
            assert c not in tr.banned and c not in tr.engaged
            assert c != tr.target
        assert all(ctx is tr.context for ctx, _, _ in block)


def test_relevance_labels_hand():
    w, seqs = one_user_world([0, 0, 1, 0, 2, 2, 3, 4])
    trans = transitions(w, seqs, min_history=2, window=1, per_user=1, rng=np.random.default_rng(0))
    assert len(trans) == 1
    tr = trans[0]
    clusters = [(c,) for c in range(5)]
    rows = relevance_labels(trans, clusters, np.random.default_rng(0), negatives=10)
    expected_pool = {c for c in clusters if c not in tr.banned | tr.engaged}
    assert rows[0][1:] == (tr.target, 1)
    assert {r[1] for r in rows[1:]} == expected_pool
    assert relevance_labels([], clusters, np.random.default_rng(0)) == []


# ---------------------------------------------------------------- split_users


@settings(max_examples=40, deadline=None)
@given(
    users=st.lists(st.integers(-50, 10_000), unique=True, max_size=60),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_split_users(users, share, seed):
    train, held = split_users(users, share, seed)
    assert train.isdisjoint(held)
    assert train | held == set(users)
    if users:
        assert len(held) == max(1, round(share * len(users)))
    else:
        assert held == set() and train == set()
    # deterministic, and independent of the input order
    assert split_users(list(reversed(users)), share, seed) == (train, held)
    assert all(type(u) is int for u in train | held)


def test_split_users_seed_changes_split():
    users = list(range(200))
    splits = {frozenset(split_users(users, 0.1, s)[1]) for s in range(5)}
    assert len(splits) > 1
    assert all(len(h) == 20 for h in splits)


# ---------------------------------------------------------------- period_users


def test_period_users_hand():
    w = make_world()
    out = period_users(w, 1)
    assert [p.context.user for p in out] == [0, 1]
    u0, u1 = out
    # user 0: before {0,1}, engages item 4 (cluster 2) -> novel
    assert u0.banned == {(0,), (1,)} and u0.engaged == {(2,)} and u0.novel == {(2,)}
    assert u0.context.familiar == [(1,), (0,)]  # clusters 0 1 0
    # user 1: before {1,2}, engages item 3 (cluster 1) -> nothing new
    assert u1.banned == {(1,), (2,)} and u1.engaged == {(1,)} and u1.novel == set()

    out = {p.context.user: p for p in period_users(w, 2)}
    assert sorted(out) == [0, 2, 3]
    assert out[0].novel == {(4,)} and out[0].banned == {(0,), (1,), (2,)}
    assert out[2].novel == {(2,)} and out[2].banned == {(3,)}
    assert out[2].context.persona == ""  # no group
    # user 3 has no history before period 2: everything is novel
    assert out[3].banned == set() and out[3].novel == {(3,)}
    assert out[3].context.familiar == [] and out[3].context.persona == "family viewers"
    for context in ("recent", "no-persona"):
        assert period_users(w, 2, context=context)[2].context.persona == ""  # user 3
    assert period_users(w, 7) == []


@settings(max_examples=30, deadline=None)
@given(random_logs(), st.integers(0, 3))
def test_period_users_matches_naive(data, k):
    log, ic = data
    w = make_world(log, ic)
    out = period_users(w, k)
    during = naive_sequences(log, None, only_period=k)
    before = naive_sequences(log, k)
    assert [p.context.user for p in out] == sorted(during)
    for p in out:
        u = p.context.user
        seen = {(ic[i],) for i in before.get(u, [])}
        engaged = {(ic[i],) for i in during[u]}
        assert p.banned == seen
        assert p.engaged == engaged
        assert p.novel == engaged - seen
        assert {c[0] for c in p.context.familiar} == {c[0] for c in seen}


# ---------------------------------------------------------------- scoring


A, B, C, D = (0,), (1,), (2,), (3,)


def test_sampled_top_hand():
    assert sampled_top([[A, B, B, C, A, D]], 2) == [[A, B]]  # tie between A and B: A drawn first
    assert sampled_top([[A, B, B, C, A, D]], 10) == [[A, B, C, D]]
    assert sampled_top([[C, B, A], [D, D, A]], 2) == [[C, B], [D, A]]
    assert sampled_top([[]], 3) == [[]]
    assert sampled_top([], 3) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), max_size=12), max_size=4), st.integers(1, 7))
def test_sampled_top_matches_naive(rows, k):
    samples = [[(c,) for c in row] for row in rows]
    got = sampled_top(samples, k)
    for row, top in zip(samples, got, strict=True):
        distinct = list(dict.fromkeys(row))
        cnt = Counter(row)
        expected = sorted(distinct, key=lambda c: (-cnt[c], row.index(c)))[:k]
        assert top == expected


def test_hit_rate_hand():
    assert hit_rate([[A], [B], [C]], [{A}, set(), {D}]) == 0.5
    assert hit_rate([[A, B], [C]], [{B}, {C, D}]) == 1.0
    assert hit_rate([[], [C]], [{A}, {D}]) == 0.0
    assert math.isnan(hit_rate([[A]], [set()]))
    assert math.isnan(hit_rate([], []))
    with pytest.raises(ValueError):
        hit_rate([[A]], [{A}, {B}])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 5), max_size=4), st.sets(st.integers(0, 5), max_size=3)),
        max_size=8,
    )
)
def test_hit_rate_matches_naive(pairs):
    proposals = [[(c,) for c in p] for p, _ in pairs]
    truth = [{(c,) for c in t} for _, t in pairs]
    users = [(p, t) for p, t in zip(proposals, truth, strict=True) if t]
    got = hit_rate(proposals, truth)
    if not users:
        assert math.isnan(got)
    else:
        hits = sum(1 for p, t in users if set(p) & t)
        assert got == pytest.approx(hits / len(users))


def test_popularity_top_hand():
    counts = Counter({A: 5, B: 3, C: 3, D: 1})
    assert popularity_top(counts, [set(), {A}, {A, B, C, D}], 2) == [[A, B], [B, C], []]
    assert popularity_top(counts, [{B}], 10) == [[A, C, D]]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.integers(0, 9), st.integers(1, 20), max_size=8),
    st.lists(st.sets(st.integers(0, 9), max_size=6), max_size=4),
    st.integers(0, 6),
)
def test_popularity_top_never_banned(counts, bans, k):
    counter = Counter({(c,): n for c, n in counts.items()})
    ban_sets = [{(c,) for c in b} for b in bans]
    out = popularity_top(counter, ban_sets, k)
    assert len(out) == len(ban_sets)
    for row, ban in zip(out, ban_sets, strict=True):
        assert not set(row) & ban
        assert len(row) == len(set(row)) <= k
        allowed = [c for c in counter if c not in ban]
        assert len(row) == min(k, len(allowed))
        # most frequent first, and nothing better left out
        freq = [counter[c] for c in row]
        assert freq == sorted(freq, reverse=True)
        left = [counter[c] for c in allowed if c not in row]
        if row and left:
            assert max(left) <= min(freq)


FIRST = ClusterSpace((8,)).index  # at depth 1 a cluster's index is its code


def test_cluster_novelty_hand():
    pop = np.array([4, 2, 0, 1])
    out = cluster_novelty([[A, B], [C]], pop, 8, FIRST)
    # pop clamped at 1: -log2(4/8)=1, -log2(2/8)=2, -log2(1/8)=3
    assert out["self_info"] == pytest.approx(2.0)
    assert out["coverage"] == pytest.approx(3 / 4)
    out = cluster_novelty([[A], [A]], pop, 8, FIRST)
    assert out["self_info"] == pytest.approx(1.0)
    assert out["coverage"] == pytest.approx(1 / 4)
    empty = cluster_novelty([[], []], pop, 8, FIRST)
    assert math.isnan(empty["self_info"]) and empty["coverage"] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    pop=st.lists(st.integers(0, 30), min_size=1, max_size=8),
    data=st.data(),
    n_users=st.integers(1, 40),
)
def test_cluster_novelty_matches_naive(pop, data, n_users):
    n = len(pop)
    proposals = data.draw(st.lists(st.lists(st.integers(0, n - 1), max_size=4), max_size=4))
    props = [[(c,) for c in p] for p in proposals]
    out = cluster_novelty(props, np.array(pop), n_users, FIRST)
    flat = [c for p in proposals for c in p]
    if not flat:
        assert math.isnan(out["self_info"]) and out["coverage"] == 0.0
        return
    info = [-math.log2(max(pop[c], 1) / n_users) for c in flat]
    assert out["self_info"] == pytest.approx(sum(info) / len(info))
    assert out["coverage"] == pytest.approx(len(set(flat)) / n)


def test_rerank_hand():
    cands = [[A, B, C], [D], [], [A, B]]
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.7])
    assert rerank(cands, scores, 2) == [[B, C], [D], [], [A, B]]  # ties keep the drawn order
    assert rerank(cands, scores, 1) == [[B], [D], [], [A]]
    assert rerank(cands, scores, 0) == [[], [], [], []]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 9), unique=True, max_size=5), max_size=5),
    st.integers(0, 6),
    st.integers(0, 2**32 - 1),
)
def test_rerank_matches_naive(rows, m, seed):
    cands = [[(c,) for c in r] for r in rows]
    n = sum(len(r) for r in cands)
    scores = np.random.default_rng(seed).integers(0, 4, n).astype(float)  # many ties
    got = rerank(cands, scores, m)
    pos = 0
    for row, top in zip(cands, got, strict=True):
        s = scores[pos : pos + len(row)].tolist()
        pos += len(row)
        order = sorted(range(len(row)), key=lambda j: (-s[j], j))
        assert top == [row[j] for j in order[:m]]


def test_auc_hand():
    assert auc(np.array([1, 0]), np.array([0.9, 0.1])) == 1.0
    assert auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    # pos {0.8, 0.4} vs neg {0.4, 0.2}: pairs 1 + 1 + 0.5 + 1 = 3.5 of 4
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.2])) == 0.875
    assert math.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))
    assert math.isnan(auc(np.array([0, 0]), np.array([0.1, 0.2])))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40).filter(
        lambda xs: any(b for b, _ in xs) and not all(b for b, _ in xs)
    ),
    st.integers(0, 2**32 - 1),
)
def test_auc_matches_sklearn(pairs, seed):
    labels = np.array([int(b) for b, _ in pairs])
    # coarse integer levels give many ties; a random scale and shift must not matter
    rng = np.random.default_rng(seed)
    scores = np.array([s for _, s in pairs], dtype=float) * rng.uniform(0.1, 3) + rng.normal()
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auc(labels.astype(bool), scores) == pytest.approx(auc(labels, scores))
    # flipping the scores flips the AUC
    assert auc(labels, -scores) == pytest.approx(1 - auc(labels, scores), abs=1e-12)


def test_precision_of_proposals():
    from coea_cli.pco.scoring import precision

    props = [[(1,), (2,), (3,)], [(4,), (5,), (6,)], [(7,)]]
    truth = [{(1,), (3,)}, {(9,)}, set()]
    assert precision(props, truth, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert np.isnan(precision(props[2:], truth[2:], 3))


def test_partition_by_hand():
    from coea_cli.pco.rounds import partition

    pos, neg = partition([1, 1, 0, 0], [1, 0, 1, 1], [0.9, 0.5, 0.2, 0.5], 0.6, 0.4)
    assert pos.tolist() == [True, False, False, False]
    assert neg.tolist() == [False, False, True, False]  # rows 1 and 3 are uncertain
    pos, neg = partition([1, 1, 0, 0], [1, 0, 1, 1], [0.9, 0.5, 0.2, 0.5], 0.6, 0.4, verify=False)
    assert pos.tolist() == [True, True, False, False]
    assert neg.tolist() == [False, False, True, True]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0, 1)), max_size=30),
       st.floats(0, 1), st.floats(0, 1))  # fmt: skip
def test_partition_properties(rows, a, b):
    from coea_cli.pco.rounds import partition

    lo, hi = min(a, b), max(a, b)
    engaged = [r[0] for r in rows]
    proposed = [r[1] for r in rows]
    score = [r[2] for r in rows]
    pos, neg = partition(engaged, proposed, score, hi, lo)
    assert not (pos & neg).any()
    assert all(e for e, p in zip(engaged, pos, strict=True) if p)  # positives were engaged
    assert all(p and not e for p, e, n in zip(proposed, engaged, neg, strict=True) if n)


def test_at_most_by_hand():
    from coea_cli.pco.rounds import at_most

    rng = np.random.default_rng(0)
    assert at_most({(3,), (1,), (2,)}, 0, rng) == [(1,), (2,), (3,)]  # 0 keeps all
    assert at_most({(3,), (1,)}, 5, rng) == [(1,), (3,)]
    assert at_most(set(), 2, rng) == []


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 40), max_size=20), st.integers(0, 8), st.integers(0, 2**31))
def test_at_most_properties(clusters, cap, seed):
    from coea_cli.pco.rounds import at_most

    keys = {(c,) for c in clusters}
    got = at_most(keys, cap, np.random.default_rng(seed))
    assert got == sorted(set(got)) and set(got) <= keys
    assert len(got) == (len(keys) if cap == 0 else min(cap, len(keys)))
    assert got == at_most(keys, cap, np.random.default_rng(seed))  # seeded: reproducible
