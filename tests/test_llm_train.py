import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from coea_cli.llm.backbone import add_lora, load_backbone
from coea_cli.llm.decoding import cluster_logprobs, relevance_scores
from coea_cli.llm.losses import dpo_loss, kl_to_previous, relevance_loss, sft_loss
from coea_cli.llm.prompts import novelty_prompt, relevance_prompt
from coea_cli.llm.train import train_novelty, train_relevance
from coea_cli.llm.vocab import add_sid_tokens
from tests.llm_fixtures import (
    DESCRIBE,
    SID,
    save_base,
    torch_one_thread,  # noqa: F401
)

VALID = [(i,) for i in range(8)]


def _log(*p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


def test_kl_hand_computed():
    assert kl_to_previous(_log(0.5, 0.5)[None], _log(0.25, 0.75)[None]).item() == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-7
    )
    # rows are renormalised first; the result is the mean over rows
    new = _log(1, 1, 2)[None].repeat(2, 1)
    prev = torch.stack([_log(1, 1, 2), _log(2, 1, 1)])
    want = 0.5 * (0 + 0.25 * math.log(0.5) + 0.25 * 0 + 0.5 * math.log(2))
    assert kl_to_previous(new, prev).item() == pytest.approx(want, abs=1e-7)
    x = torch.randn(3, 5)
    assert kl_to_previous(x, x + 1.7).item() == pytest.approx(0, abs=1e-6)


def test_dpo_hand_computed():
    t = torch.tensor
    assert dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=1.0).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-1.0))), abs=1e-6
    )  # 0.3133
    got = dpo_loss(t([-1.0, -3.0]), t([-2.0, -1.0]), t([-1.5, -2.0]), t([-1.5, -2.0]), beta=0.1)
    want = (-math.log(1 / (1 + math.exp(-0.1))) - math.log(1 / (1 + math.exp(0.2)))) / 2
    assert got.item() == pytest.approx(want, abs=1e-6)
    assert dpo_loss(t([-1.0]), t([-1.0]), t([-1.0]), t([-1.0])).item() == pytest.approx(
        math.log(2), abs=1e-6
    )


def test_sft_and_relevance_loss_reference():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 3:] = torch.tensor([4, 7])
    labels[1, 4] = 2
    want = (
        -(
            torch.log_softmax(logits[0, 2], -1)[4]
            + torch.log_softmax(logits[0, 3], -1)[7]
            + torch.log_softmax(logits[1, 3], -1)[2]
        )
        / 3
    )
    assert sft_loss(logits, labels).item() == pytest.approx(want.item(), abs=1e-5)
    pair = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    want = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 - 1 / (1 + math.exp(1)))) / 2
    assert relevance_loss(pair, torch.tensor([1, 0])).item() == pytest.approx(want, abs=1e-6)
    assert relevance_loss(pair, torch.tensor([1, 0])).item() == pytest.approx(
        F.cross_entropy(pair, torch.tensor([0, 1])).item(), abs=1e-6
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("train") / "base")


def _lora(base, seed=0):
    model, tok = load_backbone(base, quant="none", device="cpu")
    ids = add_sid_tokens(model, tok, SID)
    torch.manual_seed(seed)
    return add_lora(model, r=8, new_token_ids=ids, dropout=0.0), tok


def _mapping_examples():
    """A deterministic task: recent cluster i -> next cluster (3i + 1) mod 8."""
    return [
        (novelty_prompt(f"group {i}", [(i,)], [], DESCRIBE), ((3 * i + 1) % 8,)) for i in range(8)
    ]


def test_sft_learns_mapping(base):
    model, tok = _lora(base)
    ex = _mapping_examples()
    prompts = [p for p, _ in ex]
    target = torch.tensor([c[0] for _, c in ex])

    def nll():
        lp = cluster_logprobs(model, tok, prompts, VALID, constrained=False)
        return -lp[torch.arange(8), target].mean().item()

    before = nll()
    steps = []
    m = train_novelty(
        model,
        tok,
        ex,
        epochs=15,
        lr=1e-2,
        batch_size=4,
        progress=lambda s, t, loss: steps.append((s, t)),
    )
    after = nll()
    assert steps[-1] == (30, 30) and m["steps"] == 30
    assert after < 0.25 * before, (before, after)
    assert after < 0.5 * math.log(8)  # far better than any prompt-independent guess
    assert m["epoch_loss"][-1] < 0.25 * m["epoch_loss"][0]
    picked = cluster_logprobs(model, tok, prompts, VALID).argmax(-1)
    assert (picked == target).float().mean() >= 0.75


def test_kl_term_keeps_distribution_close(base):
    ex = _mapping_examples()
    prompts = [p for p, _ in ex]
    out = {}
    for weight in (0.0, 20.0):
        model, tok = _lora(base)
        prev = cluster_logprobs(model, tok, prompts, VALID)
        m = train_novelty(
            model,
            tok,
            ex,
            epochs=4,
            lr=1e-2,
            batch_size=4,
            objective="sft_kl",
            kl_weight=weight,
            valid_clusters=VALID,
        )
        new = cluster_logprobs(model, tok, prompts, VALID)
        out[weight] = (kl_to_previous(new, prev).item(), m)
    assert out[20.0][0] < 0.5 * out[0.0][0], out
    assert out[0.0][1]["kl"] > out[20.0][1]["kl"]
    # a precomputed previous distribution gives exactly what ref_model=None gives
    model, tok = _lora(base)
    prev = cluster_logprobs(model, tok, prompts, VALID)
    m = train_novelty(
        model,
        tok,
        ex,
        epochs=4,
        lr=1e-2,
        batch_size=4,
        objective="sft_kl",
        kl_weight=20.0,
        valid_clusters=VALID,
        ref_model=prev,
    )
    assert m["epoch_loss"] == pytest.approx(out[20.0][1]["epoch_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="valid_clusters"):
        train_novelty(model, tok, ex, objective="sft_kl")


def test_dpo_prefers_chosen(base):
    model, tok = _lora(base)
    pairs = [
        (novelty_prompt(f"g{i}", [(i,)], [], DESCRIBE), ((i + 2) % 8,), ((i + 5) % 8,))
        for i in range(8)
    ]
    prompts = [p for p, _, _ in pairs]
    rows = torch.arange(8)
    ch = torch.tensor([c[0] for _, c, _ in pairs])
    rj = torch.tensor([r[0] for _, _, r in pairs])
    ref = cluster_logprobs(model, tok, prompts, VALID)
    m = train_novelty(
        model,
        tok,
        [],
        epochs=12,
        lr=1e-2,
        batch_size=4,
        objective="dpo",
        dpo_pairs=pairs,
        valid_clusters=VALID,
        beta=0.5,
    )
    lp = cluster_logprobs(model, tok, prompts, VALID)
    margin = (lp[rows, ch] - ref[rows, ch]) - (lp[rows, rj] - ref[rows, rj])
    assert (margin > 0).all()
    assert m["loss_first_step"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert m["epoch_loss"][-1] < 0.5 * m["epoch_loss"][0]
    assert m["dpo_accuracy"] == 1.0


def test_relevance_learns_labels(base):
    model, tok = _lora(base)
    ex = [
        (relevance_prompt(f"group {i % 3}", [(i % 8,)], [], (i % 8,), DESCRIBE), int(i % 2))
        for i in range(12)
    ]
    prompts = [p for p, _ in ex]
    labels = torch.tensor([y for _, y in ex], dtype=torch.float32)

    def bce():
        s = relevance_scores(model, tok, prompts).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(s, labels).item()

    before = bce()
    m = train_relevance(model, tok, ex, epochs=10, lr=1e-2, batch_size=4)
    after = bce()
    assert after < 0.3 * before, (before, after)
    assert m["accuracy"] == 1.0
    s = relevance_scores(model, tok, prompts)
    assert ((s > 0.5).float() == labels).all()


@pytest.mark.parametrize("levels", [1, 2])
def test_kl_is_zero_before_any_update(base, levels):
    """With lr=0 the model never moves, so KL(new || previous) must be 0 on every batch."""
    model, tok = _lora(base)
    valid = [(a, b)[:levels] for a in range(4) for b in range(3)][:: 3 if levels == 1 else 1]
    ex = [
        (
            novelty_prompt(f"g{i}", [valid[i % len(valid)]], [], DESCRIBE),
            valid[(i * 5) % len(valid)],
        )
        for i in range(6)
    ]
    m = train_novelty(
        model,
        tok,
        ex,
        epochs=1,
        lr=0.0,
        batch_size=4,
        objective="sft_kl",
        kl_weight=1.0,
        valid_clusters=valid,
    )
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    m = train_novelty(
        model,
        tok,
        ex,
        epochs=3,
        lr=1e-2,
        batch_size=4,
        objective="sft_kl",
        kl_weight=1.0,
        valid_clusters=valid,
    )
    assert m["kl"] > 1e-4


def test_unlikelihood_pushes_verified_negatives_down(base):
    """Proposals verified as bad are pushed down: the first step's unlikelihood equals
    -log(1 - p(c | prompt)) under the constrained distribution, and training lowers p(c)
    while the positive examples are still learned."""
    model, tok = _lora(base)
    ex = _mapping_examples()
    negs = [(p, ((c[0] + 1) % 8,)) for p, c in ex]  # the cluster after each target
    prompts = [p for p, _ in negs]
    cols = torch.tensor([c[0] for _, c in negs])
    p_before = cluster_logprobs(model, tok, prompts, VALID).exp()[torch.arange(8), cols]
    expected = float(-torch.log1p(-p_before).mean())
    m = train_novelty(model, tok, [], negatives=negs, neg_weight=1.0, valid_clusters=VALID,
                      epochs=1, lr=1e-9, batch_size=8)  # fmt: skip
    assert m["unlikelihood"] == pytest.approx(expected, rel=1e-3)  # one step, lr ~ 0
    model, tok = _lora(base)
    target = torch.tensor([c[0] for _, c in ex])
    t_before = cluster_logprobs(model, tok, prompts, VALID).exp()[torch.arange(8), target]
    m = train_novelty(model, tok, ex, negatives=negs, neg_weight=2.0, valid_clusters=VALID,
                      objective="sft_kl", kl_weight=0.1, epochs=20, lr=3e-3, batch_size=4)  # fmt: skip
    lp = cluster_logprobs(model, tok, prompts, VALID).exp()
    assert lp[torch.arange(8), cols].mean() < 0.5 * p_before.mean()
    assert lp[torch.arange(8), target].mean() > 1.5 * t_before.mean()  # still learned
    assert m["negatives"] == 8 and m["neg_weight"] == 2.0 and "kl" in m


@given(
    st.lists(st.integers(1, 200), min_size=1, max_size=300),
    st.integers(1, 17),
    st.integers(0, 2**31 - 1),
)
@settings(max_examples=60, deadline=None)
def test_batches_cover_every_example_once_with_little_padding(lengths, size, seed):
    from coea_cli.llm.decoding import length_batches
    from coea_cli.llm.train import _batches

    batches = _batches(lengths, size, torch.Generator().manual_seed(seed), pool=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= size for b in batches)
    assert batches == _batches(lengths, size, torch.Generator().manual_seed(seed), pool=4)
    # each pool of 4 batches is sorted by length: its batches do not overlap in length
    inference = length_batches([[0] * n for n in lengths], size)
    assert sorted(i for b in inference for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in inference for i in b]
    assert flat == sorted(lengths, reverse=True)


def test_length_grouping_pads_less_than_random_batches():
    from coea_cli.llm.train import _batches

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(30, 140, (2000,), generator=g).tolist()

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths)

    order = torch.randperm(2000, generator=g).tolist()
    random = [order[i : i + 16] for i in range(0, 2000, 16)]
    grouped = _batches(lengths, 16, torch.Generator().manual_seed(1))
    assert padded(grouped) < 1.05 < 1.3 < padded(random)
