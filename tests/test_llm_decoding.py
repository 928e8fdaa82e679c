import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli.llm.decoding import (
    ClusterConstraint,
    ClusterTrie,
    cluster_logprobs,
    relevance_scores,
    sample_clusters,
)
from coea_cli.llm.prompts import answer_token_ids, relevance_prompt
from coea_cli.llm.vocab import cluster_token_ids
from tests.llm_fixtures import (
    DESCRIBE,
    TEXTS,
    tiny_model,
    tokenizer,
    torch_one_thread,  # noqa: F401
)

SIZES = [8, 8, 4]


def _all_clusters(levels):
    return list(itertools.product(*[range(k) for k in SIZES[:levels]]))


@pytest.fixture(scope="module")
def model():
    return tiny_model(tokenizer(True), seed=7, embed_std=1.0)


def test_trie_basics():
    tok = tokenizer(True)
    clusters = [(1, 2), (1, 3), (4, 0)]
    trie = ClusterTrie.from_clusters(tok, clusters)
    a1, a4 = cluster_token_ids(tok, (1,))[0], cluster_token_ids(tok, (4,))[0]
    assert trie.length == 2 and len(trie) == 3 and trie.clusters == clusters
    assert sorted(trie.allowed([])) == sorted([a1, a4])
    assert (
        trie.allowed([a1])
        == cluster_token_ids(tok, (1, 2))[1:] + cluster_token_ids(tok, (1, 3))[1:]
    )
    assert trie.allowed(cluster_token_ids(tok, (1, 2))) == []
    assert trie.cluster(cluster_token_ids(tok, (4, 0))) == (4, 0)
    assert trie.cluster([a1]) is None
    pruned = trie.without([(4, 0)])
    assert pruned.allowed([]) == [a1] and pruned.clusters == [(1, 2), (1, 3)]
    assert trie.without(clusters) is None
    with pytest.raises(ValueError):
        ClusterTrie.from_clusters(tok, [(1,), (1, 2)])
    with pytest.raises(ValueError):
        ClusterTrie.from_clusters(tok, [(1,), (1,)])


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_constraint_keeps_exactly_trie_continuations(data):
    tok = tokenizer(True)
    levels = data.draw(st.integers(1, 3))
    clusters = data.draw(
        st.lists(st.sampled_from(_all_clusters(levels)), min_size=1, max_size=12, unique=True)
    )
    trie = ClusterTrie.from_clusters(tok, clusters)
    prefixes = [trie.ids[c][: data.draw(st.integers(0, levels))] for c in clusters[:4]]
    width = 3
    input_ids = torch.tensor(
        [[5] * width + list(p) + [tok.eos_token_id] * (levels - len(p)) for p in prefixes]
    )[:, : width + max(len(p) for p in prefixes)]
    scores = torch.randn(len(prefixes), len(tok))
    out = ClusterConstraint([trie] * len(prefixes), width, tok.eos_token_id)(input_ids, scores)
    for b, _p in enumerate(prefixes):
        gen = input_ids[b, width:].tolist()
        allowed = set(trie.allowed(gen)) or {tok.eos_token_id}
        finite = set(torch.isfinite(out[b]).nonzero()[:, 0].tolist())
        assert finite == allowed
        assert torch.equal(out[b, list(allowed)], scores[b, list(allowed)])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_sampling_never_invalid_or_banned(data):
    tok = tokenizer(True)
    levels = data.draw(st.integers(1, 3), label="levels")
    clusters = data.draw(
        st.lists(st.sampled_from(_all_clusters(levels)), min_size=1, max_size=16, unique=True),
        label="clusters",
    )
    n_prompts = data.draw(st.integers(1, 3))
    banned = [
        data.draw(st.lists(st.sampled_from(clusters), max_size=len(clusters), unique=True))
        for _ in range(n_prompts)
    ]
    seed = data.draw(st.integers(0, 10_000), label="seed")
    model = tiny_model(tok, seed=seed, hidden=32, layers=1, embed_std=1.0)
    prompts = [TEXTS[(seed + 7 * i) % len(TEXTS)][: 10 + 9 * i] for i in range(n_prompts)]
    trie = ClusterTrie.from_clusters(tok, clusters)
    n = data.draw(st.integers(1, 5))
    s = sample_clusters(
        model,
        tok,
        prompts,
        trie,
        banned,
        n=n,
        temperature=data.draw(st.sampled_from([0.3, 1.0, 3.0])),
        top_k=data.draw(st.sampled_from([None, 1, 2, 50])),
        max_batch=data.draw(st.integers(1, 12)),
        seed=seed,
    )
    assert s.invalid == 0
    for i in range(n_prompts):
        if set(banned[i]) == set(clusters):
            assert s.clusters[i] == []
            continue
        assert len(s.clusters[i]) == n
        assert all(c in clusters and c not in banned[i] for c in s.clusters[i])


def _reference_logprob(model, prompt_ids, trie, cluster, constrained):
    """One unpadded forward per (prompt, cluster); per-step log-softmax."""
    ids = list(trie.ids[cluster])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].float()
    total = 0.0
    for t, tok_id in enumerate(ids):
        row = logits[len(prompt_ids) - 1 + t]
        if constrained:
            allowed = trie.allowed(ids[:t])
            total += torch.log_softmax(row[allowed], -1)[allowed.index(tok_id)].item()
        else:
            total += torch.log_softmax(row, -1)[tok_id].item()
    return total


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_cluster_logprobs_exact(model, levels):
    tok = tokenizer(True)
    g = torch.Generator().manual_seed(levels)
    pool = _all_clusters(levels)
    clusters = [pool[i] for i in torch.randperm(len(pool), generator=g)[:10].tolist()]
    k = len(clusters)
    prompts = [TEXTS[3], TEXTS[10][:12], TEXTS[20] + " " + TEXTS[21]]  # different lengths
    trie = ClusterTrie.from_clusters(tok, clusters)
    for constrained in (True, False):
        lp = cluster_logprobs(model, tok, prompts, clusters, constrained=constrained, batch_size=4)
        assert lp.shape == (3, k)
        ref = torch.tensor(
            [
                [_reference_logprob(model, tok.encode(p), trie, c, constrained) for c in clusters]
                for p in prompts
            ]
        )
        assert torch.allclose(lp, ref, atol=1e-4), (lp - ref).abs().max()
    full = cluster_logprobs(model, tok, prompts, clusters)
    assert torch.allclose(full.exp().sum(-1), torch.ones(3), atol=1e-5)
    raw = cluster_logprobs(model, tok, prompts, clusters, constrained=False)
    assert (raw <= full + 1e-6).all()


def test_sampling_follows_cluster_distribution():
    tok = tokenizer(True)
    model = tiny_model(tok, seed=3, hidden=32, embed_std=0.3)
    clusters = [(a, b) for a in range(3) for b in range(3)]
    prompt = [TEXTS[5]]
    trie = ClusterTrie.from_clusters(tok, clusters)
    p = cluster_logprobs(model, tok, prompt, clusters)[0].exp()
    n = 1500
    s = sample_clusters(model, tok, prompt * 3, trie, n=n // 3, max_batch=n // 3, seed=0)
    assert s.invalid == 0
    drawn = [c for row in s.clusters for c in row]
    freq = torch.tensor([drawn.count(c) / n for c in clusters])
    tol = 4.5 * torch.sqrt(p * (1 - p) / n) + 1.0 / n
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    assert p.max() < 0.9  # the check is not vacuous


def test_relevance_scores(model):
    tok = tokenizer(True)
    yes, no = answer_token_ids(tok)
    prompts = [relevance_prompt(f"group {i}", [(i,)] * i, [(1,)], (i,), DESCRIBE) for i in range(5)]
    scores = relevance_scores(model, tok, prompts, batch_size=2)
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    for p, s in zip(prompts, scores.tolist(), strict=True):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([tok.encode(p)])).logits[0, -1]
        ref = 1 / (1 + math.exp(-(last[yes] - last[no]).item()))
        assert s == pytest.approx(ref, abs=1e-5)


def test_empty_inputs(model):
    tok = tokenizer(True)
    trie = ClusterTrie.from_clusters(tok, [(1,), (2,)])
    assert sample_clusters(model, tok, [], trie) == ([], 0)
    assert cluster_logprobs(model, tok, [], [(1,), (2,)]).shape == (0, 2)
    assert relevance_scores(model, tok, []).shape == (0,)
    with pytest.raises(ValueError):
        sample_clusters(model, tok, ["x"], trie, temperature=0)


def test_relevance_scores_share_each_context_once(model, monkeypatch):
    """Several candidates per context (as the Relevance LLM judges draws): the grouped,
    cached scoring equals each prompt run whole, and the plain batched path."""
    import random

    from coea_cli.llm import decoding, prefix

    rnd = random.Random()
    tok = tokenizer(True)
    prompts = []
    for _ in range(6):
        persona = f"group {rnd.randrange(100)}"
        recent = [(rnd.randrange(8),) for _ in range(rnd.randrange(1, 4))]
        familiar = [(rnd.randrange(8),) for _ in range(rnd.randrange(0, 5))]
        for _ in range(rnd.randrange(1, 6)):
            prompts.append(relevance_prompt(persona, recent, familiar, (rnd.randrange(8),),
                                            DESCRIBE))  # fmt: skip
    rnd.shuffle(prompts)
    ids = decoding.encode_prompts(tok, prompts)
    assert len(prefix.prefix_groups(ids)) < len(prompts)  # contexts are shared
    grouped = relevance_scores(model, tok, prompts, batch_size=3)
    monkeypatch.setattr(prefix, "supports_prefix", lambda m: False)
    plain = relevance_scores(model, tok, prompts, batch_size=3)
    torch.testing.assert_close(grouped, plain, atol=1e-5, rtol=0)
    yes, no = answer_token_ids(tok)
    for p, s in zip(prompts, grouped.tolist(), strict=True):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([tok.encode(p)])).logits[0, -1]
        assert s == pytest.approx(1 / (1 + math.exp(-(last[yes] - last[no]).item())), abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=14), max_size=30),
       st.integers(1, 6))  # fmt: skip
def test_prefix_groups_cover_every_prompt_once(seqs, min_shared):
    from coea_cli.llm.prefix import prefix_groups

    groups = prefix_groups(seqs, min_shared)
    members = sorted(i for _, m in groups for i in m)
    assert members == list(range(len(seqs)))
    for n, m in groups:
        head = seqs[m[0]][:n]
        assert all(list(seqs[i][:n]) == list(head) and len(seqs[i]) > n for i in m) or (
            len(m) == 1 and n == 0
        )
        if len(m) > 1:
            assert n >= min_shared and all(2 * n >= len(seqs[i]) for i in m)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=9, max_size=12), max_size=40),
       st.integers(1, 7))  # fmt: skip
def test_prefix_chunks_are_bounded_and_cover_every_prompt_once(seqs, size):
    from coea_cli.llm.prefix import prefix_chunks, prefix_groups

    chunks = prefix_chunks(seqs, size)
    members = sorted(i for c in chunks for _, m in c for i in m)
    assert members == list(range(len(seqs)))
    # however large a shared-context group, no batch holds more than `size` prompts
    assert all(sum(len(m) for _, m in c) <= size for c in chunks)
    # each piece keeps its group's shared prefix
    shared = {i: n for n, m in prefix_groups(seqs) for i in m}
    assert all(n == shared[i] for c in chunks for n, m in c for i in m)
