"""Unit tests of the serving lists and serving keys: `recs/lists.py` and the pure helpers of
`recs/candidates.py`. No model is loaded; references are hand-computed or naive."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli.llm.context import World
from coea_cli.recs import lists
from coea_cli.recs.candidates import Candidate, user_seed
from coea_cli.recs.lists import DRAW, FILL, RECORD, RESERVE, SOURCES, Weights, clusters_to_items
from coea_cli.workspace import History


@dataclass(frozen=True)
class ListOptions:
    """The three list settings, bundled for these tests."""

    k: int = 20
    top_m: int = 3
    explore_ratio: float = 1.0


def user_list(*args, weights=None):
    *rest, opt = args
    return lists.user_list(
        *rest, k=opt.k, top_m=opt.top_m, explore_ratio=opt.explore_ratio, weights=weights
    )


def cands(*clusters: int) -> list[Candidate]:
    return [Candidate(c, 1.0 - 0.1 * j, 0.5) for j, c in enumerate(clusters)]


def rows(out: np.ndarray) -> list[tuple[int, int, int]]:
    return [(int(r["item"]), int(r["cluster"]), int(r["source"])) for r in out]


# ---------------------------------------------------------------- clusters_to_items


def test_clusters_to_items_hand():
    parts = clusters_to_items(np.array([2, 0, 2, 1, 0, 2]))
    assert sorted(parts) == [0, 1, 2]
    assert parts[0].tolist() == [1, 4]
    assert parts[1].tolist() == [3]
    assert parts[2].tolist() == [0, 2, 5]
    assert clusters_to_items(np.zeros(0, dtype=np.int64)) == {}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 7), max_size=40))
def test_clusters_to_items_partitions(ic):
    item_cluster = np.array(ic, dtype=np.int64)
    parts = clusters_to_items(item_cluster)
    assert set(parts) == set(ic)
    assert all(type(c) is int for c in parts)
    allitems = np.concatenate([*parts.values(), np.zeros(0, np.int64)])
    assert sorted(allitems.tolist()) == list(range(len(ic)))  # disjoint and covering
    for c, items in parts.items():
        assert items.tolist() == [i for i, x in enumerate(ic) if x == c]  # ascending


# ---------------------------------------------------------------- user_list, by hand

#            item:  0    1    2    3    4    5    6    7    8    9
ITEM_CLUSTER = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
SCORES = np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.5, 0.95, 0.2, 0.3, 0.4], dtype=np.float32)
PARTS = clusters_to_items(ITEM_CLUSTER)


def test_user_list_hand_explore_all():
    # familiar {0}; candidates 0 (familiar, dropped), 2, 1, 3 -> top_m=2 keeps 2 and 1
    out = user_list(
        SCORES,
        np.array([6]),
        {0},
        cands(0, 2, 1, 3),
        PARTS,
        ITEM_CLUSTER,
        ListOptions(k=4, top_m=2, explore_ratio=1.0),
    )
    assert out.dtype == RECORD
    # pool = items of clusters 2 and 1 minus seen 6 = {7, 3, 4, 5}, by score 3 4 5 7
    assert rows(out) == [(3, 1, 0), (4, 1, 0), (5, 1, 0), (7, 2, 0)]
    np.testing.assert_allclose(out["score"], SCORES[[3, 4, 5, 7]])


def test_user_list_hand_pool_too_small_then_dsie_fills():
    out = user_list(
        SCORES,
        np.array([6, 0]),
        {0},
        cands(2),
        PARTS,
        ITEM_CLUSTER,
        ListOptions(k=4, top_m=3, explore_ratio=1.0),
    )
    # pool of cluster 2 unseen = {7}; then DSIE's best unseen: 1 (0.8), 3 (0.7), 4 (0.6)
    assert rows(out) == [(7, 2, 0), (1, 0, 2), (3, 1, 2), (4, 1, 2)]
    assert [SOURCES[s] for s in out["source"]] == ["draw", "fill", "fill", "fill"]


def test_user_list_hand_explore_ratio_split():
    opt = ListOptions(k=4, top_m=1, explore_ratio=0.5)  # 2 explore slots
    out = user_list(SCORES, np.array([], dtype=np.int64), {0, 2}, cands(3, 1), PARTS,
                    ITEM_CLUSTER, opt)  # fmt: skip
    # explore: cluster 3 -> items 9 (0.4), 8 (0.3); then DSIE: 6 (0.95), 0 (0.9)
    assert rows(out) == [(9, 3, 0), (8, 3, 0), (6, 2, 2), (0, 0, 2)]


def test_user_list_hand_degenerate():
    opt = ListOptions(k=3, top_m=2, explore_ratio=1.0)
    # every candidate familiar -> pure DSIE
    out = user_list(SCORES, np.array([6]), {1, 2}, cands(1, 2), PARTS, ITEM_CLUSTER, opt)
    assert rows(out) == [(0, 0, 2), (1, 0, 2), (3, 1, 2)]
    # no candidates at all -> pure DSIE
    out2 = user_list(SCORES, np.array([6]), set(), [], PARTS, ITEM_CLUSTER, opt)
    assert rows(out2) == rows(out)
    # everything seen -> empty list
    out = user_list(SCORES, np.arange(10), set(), cands(1), PARTS, ITEM_CLUSTER, opt)
    assert len(out) == 0 and out.dtype == RECORD
    # k = 0 -> empty list
    out = user_list(SCORES, np.array([], dtype=np.int64), set(), cands(1), PARTS, ITEM_CLUSTER,
                    ListOptions(k=0))  # fmt: skip
    assert len(out) == 0
    # a candidate cluster with no items contributes nothing
    out = user_list(SCORES, np.array([], dtype=np.int64), set(), cands(9, 3), PARTS,
                    ITEM_CLUSTER, ListOptions(k=2, top_m=1))  # fmt: skip
    assert rows(out) == [(6, 2, 2), (0, 0, 2)]


def test_user_list_does_not_modify_inputs():
    scores = SCORES.copy()
    seen = np.array([6, 1])
    user_list(scores, seen, {0}, cands(2, 1), PARTS, ITEM_CLUSTER, ListOptions(k=5))
    np.testing.assert_array_equal(scores, SCORES)
    assert seen.tolist() == [6, 1]


# ---------------------------------------------------------------- user_list, properties


@st.composite
def list_cases(draw):
    n_items = draw(st.integers(1, 40))
    n_clusters = draw(st.integers(1, 6))
    item_cluster = np.array(
        draw(st.lists(st.integers(0, n_clusters - 1), min_size=n_items, max_size=n_items))
    )
    # a few levels only, so ties are common
    scores = np.array(
        draw(
            st.lists(
                st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.5]),
                min_size=n_items,
                max_size=n_items,
            )
        ),
        dtype=np.float32,
    )
    seen = np.array(
        draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)), dtype=np.int64
    )  # may repeat
    familiar = draw(st.sets(st.integers(0, n_clusters + 1)))
    # distinct candidate clusters, as user_candidates produces them; some may hold no items
    cand = draw(st.lists(st.integers(0, n_clusters + 1), unique=True, max_size=n_clusters + 2))
    opt = ListOptions(
        k=draw(st.integers(0, 15)),
        top_m=draw(st.integers(0, 4)),
        explore_ratio=draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])),
    )
    return scores, seen, familiar, cands(*cand), item_cluster, opt


@settings(max_examples=150, deadline=None)
@given(list_cases())
def test_user_list_properties(case):
    scores, seen, familiar, candidates, item_cluster, opt = case
    out = user_list(
        scores, seen, familiar, candidates, clusters_to_items(item_cluster), item_cluster, opt
    )
    items = out["item"].tolist()
    src = out["source"].tolist()
    seen_set = set(seen.tolist())
    unseen = [i for i in range(len(scores)) if i not in seen_set]

    assert out.dtype == RECORD
    assert len(items) <= opt.k
    assert len(items) == min(opt.k, len(unseen))  # filled whenever unseen items remain
    assert not set(items) & seen_set
    assert len(set(items)) == len(items)
    assert out["cluster"].tolist() == item_cluster[items].tolist()
    np.testing.assert_array_equal(out["score"], scores[items])

    # explore rows (draw or reserve) first, and only from the top_m candidate clusters not
    # already familiar; then DSIE's fill
    n_coea = sum(s != FILL for s in src)
    assert src == [DRAW] * n_coea + [FILL] * (len(src) - n_coea)  # list_cases has no reserve
    novel = [c.cluster for c in candidates if c.cluster not in familiar][: opt.top_m]
    assert set(out["cluster"][:n_coea].tolist()) <= set(novel)
    assert n_coea <= round(opt.k * opt.explore_ratio)
    pool = [i for i in unseen if item_cluster[i] in novel]
    assert n_coea == min(round(opt.k * opt.explore_ratio), len(pool))

    # coea rows are the pool's best, best first
    coea_scores = scores[items[:n_coea]].tolist()
    assert coea_scores == sorted(scores[pool].tolist(), reverse=True)[:n_coea]
    # dsie rows are the best of what is left, best first
    rest = [i for i in unseen if i not in set(items[:n_coea])]
    dsie_scores = scores[items[n_coea:]].tolist()
    assert dsie_scores == sorted(scores[rest].tolist(), reverse=True)[: len(dsie_scores)]


@settings(max_examples=80, deadline=None)
@given(list_cases())
def test_user_list_without_exploration_is_dsie_ranking(case):
    scores, seen, familiar, candidates, item_cluster, opt = case
    opt = ListOptions(k=opt.k, top_m=opt.top_m, explore_ratio=0.0)
    out = user_list(
        scores, seen, familiar, candidates, clusters_to_items(item_cluster), item_cluster, opt
    )
    seen_set = set(seen.tolist())
    # naive: unseen items by score, ties by item id (a stable sort)
    expected = sorted(
        (i for i in range(len(scores)) if i not in seen_set), key=lambda i: (-scores[i], i)
    )[: opt.k]
    assert out["item"].tolist() == expected
    assert set(out["source"].tolist()) <= {FILL}


def test_user_list_with_fresh_random_inputs():
    """Larger random catalogue: the explore part is exactly the pool's top n by score."""
    gen = np.random.default_rng(20240607)
    for _ in range(20):
        n = int(gen.integers(50, 300))
        ic = gen.integers(0, 12, n)
        scores = gen.normal(size=n).astype(np.float32)
        seen = gen.choice(n, size=int(gen.integers(0, n // 2)), replace=False)
        familiar = set(gen.choice(12, size=4, replace=False).tolist())
        cand_cl = gen.permutation(12)[: int(gen.integers(0, 8))].tolist()
        opt = ListOptions(
            k=int(gen.integers(1, 40)),
            top_m=int(gen.integers(1, 4)),
            explore_ratio=float(gen.uniform()),
        )
        out = user_list(scores, seen, familiar, cands(*cand_cl), clusters_to_items(ic), ic, opt)
        novel = [c for c in cand_cl if c not in familiar][: opt.top_m]
        unseen = np.setdiff1d(np.arange(n), seen)
        pool = unseen[np.isin(ic[unseen], novel)]
        n_exp = min(round(opt.k * opt.explore_ratio), len(pool))
        exp_coea = pool[np.argsort(-scores[pool], kind="stable")][:n_exp]
        left = np.setdiff1d(unseen, exp_coea)
        exp_dsie = left[np.argsort(-scores[left], kind="stable")][: opt.k - n_exp]
        assert out["item"].tolist() == exp_coea.tolist() + exp_dsie.tolist()
        assert out["source"].tolist() == [DRAW] * n_exp + [FILL] * len(exp_dsie)


# ---------------------------------------------------------------- per-user candidates


def test_user_seed_deterministic_and_distinct():
    seeds = [user_seed(u, 0) for u in range(200)]
    assert seeds == [user_seed(u, 0) for u in range(200)]  # deterministic
    assert len(set(seeds)) == 200 and all(0 <= s < 2**64 for s in seeds)
    assert user_seed(5, 0) != user_seed(5, 1)  # the global seed matters
    assert user_seed(np.int64(7), 3) == user_seed(7, 3)  # numpy ints seed like ints
    # stable across processes and versions: a pinned value from the documented recipe
    assert user_seed(7, 3) == int.from_bytes(hashlib.sha256(b"3:7").digest()[:8], "little")


def _world() -> World:
    empty = np.zeros(0, np.int64)
    return World(
        history=History(empty, empty, empty, empty, n_users=3, n_items=3, test_period=1),
        item_cluster=np.array([0, 1, 2]),
        n_clusters=3,
        describe={},
        group_of=np.array([2, 0, 2]),
        persona={0: "night owls", 2: "critics"},
    )


def test_user_candidates_own_context_draws_judged_then_reserve(monkeypatch):
    """Candidate assembly with stand-in LLM scores (isolates the per-user context, sampling
    without the user's familiar clusters, judging, deduplication and the reserve; the
    decoding functions themselves are tested in test_llm_*)."""
    import torch

    from coea_cli.llm import decoding
    from coea_cli.llm.context import Prompter, context_of
    from coea_cli.recs.candidates import user_candidates

    n_clusters = 6
    w = _world()
    w.item_cluster = np.arange(n_clusters)
    w.n_clusters = w.history.n_items = n_clusters
    # Novelty: cluster 0 likeliest, then 1, 2, ...; cluster 5 impossible
    logp = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05, 0.0]))
    scored_prompts: list[str] = []

    def novelty(m, t, prompts, clusters, **kw):
        scored_prompts.extend(prompts)
        return logp.repeat(len(prompts), 1)

    monkeypatch.setattr(decoding, "cluster_logprobs", novelty)
    judged_prompts: list[str] = []

    def relevance(m, t, prompts, **kw):
        judged_prompts.extend(prompts)
        return torch.linspace(0.2, 0.9, len(prompts))  # later prompts judged better

    monkeypatch.setattr(decoding, "relevance_scores", relevance)
    # users 0 and 2 share a group and a history: one Novelty prompt; user 1 knows cluster 1
    hist = {0: np.array([3]), 1: np.array([1, 3]), 2: np.array([3])}
    ctx = {u: context_of(w, u, h) for u, h in hist.items()}
    familiar = {u: {(int(c),) for c in w.item_cluster[h]} for u, h in hist.items()}
    out = user_candidates(w, ctx, familiar, (None, None), (None, None), Prompter(w), n=3,
                          temperature=1.0, seed=0)  # fmt: skip
    assert len(scored_prompts) == 2  # identical contexts are scored once
    assert "critics" in scored_prompts[0]  # the group persona is in the prompt
    for u, cands in out.items():
        judged = [c for c in cands if not c.reserve]
        assert cands[: len(judged)] == judged  # draws first
        assert all(np.isfinite(c.relevance) for c in judged) and 1 <= len(judged) <= 3
        rel = [c.relevance for c in judged]
        assert rel == sorted(rel, reverse=True)
        allowed = [c for c in range(5) if (c,) not in familiar[u]]
        assert sorted(c.cluster for c in cands) == allowed  # each allowed cluster once
        p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])[allowed]
        p /= p.sum()
        for c in cands:
            np.testing.assert_allclose(c.novelty, p[allowed.index(c.cluster)], rtol=1e-5)
    assert len(judged_prompts) == len(set(judged_prompts))  # identical judgements once
    no_judge = user_candidates(w, ctx, familiar, (None, None), None, Prompter(w), n=3,
                               temperature=1.0, seed=0, judge=False, reserve=False)  # fmt: skip
    for cands in no_judge.values():
        assert not any(np.isfinite(c.relevance) or c.reserve for c in cands)
        nov = [c.novelty for c in cands]
        assert nov == sorted(nov, reverse=True)  # unjudged draws: most probable first


# ---------------------------------------------------------------- one ranking of three signals


def test_weighted_ranking_by_hand():
    """Items of every unknown draw compete: DSIE score + w_n log p(c) + w_r logit r(c)."""
    draws = [Candidate(1, 0.9, 0.2), Candidate(3, 0.5, 0.6)]
    # cluster 1 bonus: 0 * log .2 + 1 * logit .9 = 2.197; cluster 3: 1 * logit .5 = 0
    out = user_list(SCORES, np.array([], dtype=np.int64), {0}, draws, PARTS, ITEM_CLUSTER,
                    ListOptions(k=4, top_m=1), weights=Weights(0.0, 1.0))  # fmt: skip
    # items: 3 (.7 + 2.197), 4 (.6 + 2.197), 5 (.5 + 2.197), 9 (.4), 8 (.3) -> top 4
    assert rows(out) == [(3, 1, DRAW), (4, 1, DRAW), (5, 1, DRAW), (9, 3, DRAW)]
    # a strong novelty weight favours cluster 3 (p .6 against .2)
    out = user_list(SCORES, np.array([], dtype=np.int64), {0}, draws, PARTS, ITEM_CLUSTER,
                    ListOptions(k=2, top_m=1), weights=Weights(5.0, 0.0))  # fmt: skip
    assert [r[1] for r in rows(out)] == [3, 3]
    # draws the user knows are skipped; the reserve's clusters compete like the draws
    reserve = [Candidate(2, float("nan"), 0.1, reserve=True)]
    out = user_list(SCORES, np.array([8, 9], dtype=np.int64), {0, 1}, draws + reserve, PARTS,
                    ITEM_CLUSTER, ListOptions(k=3, top_m=1), weights=Weights(1.0, 1.0))  # fmt: skip
    assert rows(out) == [(6, 2, RESERVE), (7, 2, RESERVE), (0, 0, FILL)]


def test_weighted_ranking_ranks_the_reserve_with_the_draws():
    """No hard cut after the draws: an unjudged reserve cluster the Novelty LLM finds likely
    outranks a judged draw when the novelty weight says so, and keeps its source."""
    draws = [Candidate(1, 0.5, 0.05)]  # judged, logit 0, unlikely
    reserve = [Candidate(3, float("nan"), 0.9, reserve=True)]
    out = user_list(SCORES, np.array([], dtype=np.int64), {0}, draws + reserve, PARTS,
                    ITEM_CLUSTER, ListOptions(k=2, top_m=1), weights=Weights(2.0, 0.0))  # fmt: skip
    # bonus: cluster 1 2 log .05 = -5.99, cluster 3 2 log .9 = -0.21: 9 (.4) and 8 (.3) lead
    assert rows(out) == [(9, 3, RESERVE), (8, 3, RESERVE)]
    # without LLM weights every unfamiliar cluster's items compete on their scores alone
    out = user_list(SCORES, np.array([], dtype=np.int64), {0}, draws + reserve, PARTS,
                    ITEM_CLUSTER, ListOptions(k=2, top_m=1), weights=Weights(0.0, 0.0))  # fmt: skip
    assert rows(out) == [(3, 1, DRAW), (4, 1, DRAW)]


def test_weights_cluster_score():
    w = Weights(2.0, 1.0)
    c = Candidate(0, 0.75, 0.25)
    assert w.cluster_score(c) == pytest.approx(2 * np.log(0.25) + np.log(3))
    assert Weights(0.0, 1.0).cluster_score(Candidate(0, float("nan"), 0.5)) == 0.0


def test_user_list_reaches_the_reserve_when_draws_are_familiar():
    """A user who knows every judged draw still explores: the reserve supplies the clusters,
    and the slots say so."""
    judged = cands(0, 2)
    reserve = [
        Candidate(1, float("nan"), 0.2, reserve=True),
        Candidate(3, float("nan"), 0.1, reserve=True),
    ]
    out = user_list(SCORES, np.array([], dtype=np.int64), {0, 2}, judged + reserve, PARTS,
                    ITEM_CLUSTER, ListOptions(k=3, top_m=1))  # fmt: skip
    assert rows(out) == [(3, 1, RESERVE), (4, 1, RESERVE), (5, 1, RESERVE)]
    # the unknown draw (cluster 2) and the first reserve cluster (1) share the pool, whose
    # items are ranked by score; each slot keeps its cluster's source
    out = user_list(SCORES, np.array([], dtype=np.int64), {0}, judged + reserve, PARTS,
                    ITEM_CLUSTER, ListOptions(k=5, top_m=2))  # fmt: skip
    assert rows(out) == [(6, 2, DRAW), (3, 1, RESERVE), (4, 1, RESERVE), (5, 1, RESERVE),
                         (7, 2, DRAW)]  # fmt: skip
