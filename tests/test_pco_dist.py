"""`pco-round` under torchrun: two gloo processes (torch.multiprocessing.spawn) give what one
process gives. The fine-tuning loops (per-epoch losses and LoRA weights, up to float summation
order), the scoring and sampling passes (exactly: each batch is computed whole by one rank),
and a whole run of rounds 0 and 1 (state, round counts, adapters)."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path

import pytest
import torch

from coea_cli import store
from tests.helpers import coea
from tests.llm_fixtures import (
    DESCRIBE,
    SID,
    save_base,
    torch_one_thread,  # noqa: F401
)
from tests.pco_fixtures import TINY, tiny_workspace

VALID = [(i,) for i in range(8)]
TWO_LEVEL = [(i, j) for i in range(3) for j in range(4)]


# ---------------------------------------------------------------- two processes


def _worker(rank: int, world: int, port: int, job, args, out: str, join: bool) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    if join:  # else the command joins the group itself, as under torchrun
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(job(*args), f"{out}.{rank}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _two(tmp_path: Path, job, *args, join: bool = True) -> list:
    """`job(*args)` on each of 2 gloo processes; their results in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / job.__name__)
    torch.multiprocessing.spawn(_worker, args=(2, port, job, args, out, join), nprocs=2)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("dist") / "base")


def _llm_passes(base) -> dict:
    return {"fine_tune": _fine_tune(base, torch.float64), "scoring": _scoring(base)}


@pytest.fixture(scope="module")
def two_ranks(base, tmp_path_factory):
    """The fine-tuning and scoring jobs on 2 processes (one start-up for both: most of the
    time of a spawned process is importing torch and transformers)."""
    return _two(tmp_path_factory.mktemp("ranks"), _llm_passes, base)


def _lora(base, dtype=torch.float32):
    from coea_cli.llm.backbone import add_lora, load_backbone
    from coea_cli.llm.vocab import add_sid_tokens

    model, tok = load_backbone(base, quant="none", device="cpu", dtype=dtype)
    ids = add_sid_tokens(model, tok, SID)
    torch.manual_seed(0)
    return add_lora(model, r=4, new_token_ids=ids, dropout=0.0), tok


def _trained(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _prompts(n: int, seed: int) -> list[str]:
    from coea_cli.llm.prompts import novelty_prompt

    rng = random.Random(seed)
    return [
        novelty_prompt(
            f"group {rng.randrange(5)}" + " and more" * rng.randrange(4),
            [(rng.randrange(8),) for _ in range(rng.randint(1, 5))],
            [(rng.randrange(8),) for _ in range(rng.randrange(3))],
            DESCRIBE,
        )
        for _ in range(n)
    ]


# ---------------------------------------------------------------- (a) fine-tuning


def _fine_tune(base, dtype=torch.float32) -> dict:
    """The three Novelty objectives (SFT + KL + unlikelihood, DPO) and Relevance, each on
    random examples whose batches include one of a single example (one rank's share empty)."""
    from coea_cli.llm.prompts import relevance_prompt
    from coea_cli.llm.train import train_novelty, train_relevance

    rng = random.Random(1)
    prompts = _prompts(25, seed=2)
    examples = [(p, (rng.randrange(8),)) for p in prompts[:20]]
    negatives = [(p, (rng.randrange(8),)) for p in prompts[20:]]
    loop = dict(epochs=2, lr=1e-2, batch_size=4, seed=3)
    out = {}
    model, tok = _lora(base, dtype)
    out["sft_kl"] = train_novelty(
        model, tok, examples, objective="sft_kl", kl_weight=0.5, valid_clusters=VALID,
        negatives=negatives, neg_weight=0.5, **loop,
    )  # fmt: skip
    out["sft_kl_weights"] = _trained(model)
    model, tok = _lora(base, dtype)
    pairs = [(p, (rng.randrange(4),), (4 + rng.randrange(4),)) for p in prompts[:9]]
    out["dpo"] = train_novelty(
        model, tok, [], objective="dpo", dpo_pairs=pairs, valid_clusters=VALID, **loop
    )
    out["dpo_weights"] = _trained(model)
    model, tok = _lora(base, dtype)
    rel = [
        (relevance_prompt(f"g{rng.randrange(3)}", [(rng.randrange(8),)], [], (c,), DESCRIBE), y)
        for c, y in ((rng.randrange(8), rng.randrange(2)) for _ in range(13))
    ]
    out["relevance"] = train_relevance(model, tok, rel, **loop)
    out["relevance_weights"] = _trained(model)
    for k in ("sft_kl", "dpo", "relevance"):
        out[k].pop("seconds")
    return out


def test_fine_tuning_on_two_processes_matches_one(base, two_ranks):
    from coea_cli.llm.train import _batches

    # the batches of 25, 9 and 13 examples by 4 end with one of a single example
    for n in (25, 9, 13):
        sizes = [len(b) for b in _batches([1] * n, 4, torch.Generator().manual_seed(0))]
        assert sorted(sizes)[0] == 1
    # float64 weights: in float32, Adam turns summation-order noise in near-zero gradient
    # components into weight differences of ~1e-5 after a few steps; in float64 the two runs
    # agree to ~1e-14, so a wrong share or scale of the gradient cannot hide in the tolerance
    one = _fine_tune(base, torch.float64)
    runs = [r["fine_tune"] for r in two_ranks]
    for key in ("sft_kl", "dpo", "relevance"):
        for r in runs:
            assert r[key].keys() == one[key].keys()
            for stat, value in one[key].items():
                want = value if isinstance(value, str) else pytest.approx(value, rel=1e-5)
                assert r[key][stat] == want, (key, stat)
        weights = one[f"{key}_weights"]
        assert runs[0][f"{key}_weights"].keys() == weights.keys()
        for name, w in weights.items():
            assert torch.equal(runs[0][f"{key}_weights"][name], runs[1][f"{key}_weights"][name])
            torch.testing.assert_close(
                runs[0][f"{key}_weights"][name], w, rtol=1e-9, atol=1e-11, msg=f"{key} {name}"
            )
    # the runs trained something: losses fell, LoRA B left zero
    assert one["sft_kl"]["epoch_loss"][1] < one["sft_kl"]["epoch_loss"][0]
    assert {"sft", "kl", "unlikelihood"} <= one["sft_kl"].keys()
    assert any("lora_B" in n and w.abs().max() > 1e-3 for n, w in one["dpo_weights"].items())


# ---------------------------------------------------------------- (b) scoring, sampling


def _scoring(base) -> dict:
    from coea_cli.llm.decoding import (
        ClusterTrie,
        cluster_logprobs,
        relevance_scores,
        sample_clusters,
        score_batches,
    )

    model, tok = _lora(base)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a random effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(n)))
    prompts = _prompts(13, seed=4)
    rng = random.Random(5)
    banned = [{(rng.randrange(8),) for _ in range(rng.randrange(4))} for _ in prompts]
    banned[6] = set(VALID)  # nothing left to sample
    out = {
        "logprobs": cluster_logprobs(model, tok, prompts, VALID, batch_size=4),
        "raw": cluster_logprobs(model, tok, prompts, TWO_LEVEL, constrained=False, batch_size=8),
        "relevance": relevance_scores(model, tok, prompts[:11], batch_size=3),
    }
    trie = ClusterTrie.from_clusters(tok, VALID)
    s = sample_clusters(
        model, tok, prompts, trie, banned, n=3, temperature=1.3, max_batch=6, seed=5
    )
    out["samples"], out["invalid"] = s.clusters, s.invalid
    out["after"] = torch.rand(4)  # the generator is where one process leaves it
    scored = []

    def score(batch):
        scored.append(batch)
        return torch.tensor(batch, dtype=torch.float32) + 0.5

    batches = [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]
    out["gathered"] = score_batches(torch.zeros(10), batches, score)
    out["scored"] = scored
    return out


def test_scoring_and_sampling_on_two_processes_match_one(base, two_ranks):
    one = _scoring(base)
    runs = [r["scoring"] for r in two_ranks]
    for r in runs:
        for key in ("logprobs", "raw", "relevance", "after", "gathered"):
            assert torch.equal(r[key], one[key]), key
        assert r["samples"] == one["samples"] and r["invalid"] == one["invalid"]
    assert one["samples"][6] == [] and all(
        len(x) == 3 for i, x in enumerate(one["samples"]) if i != 6
    )
    assert len({tuple(x) for x in one["samples"]}) > 3  # the draws vary
    # each rank scored every other batch, and every rank holds all of them
    assert torch.equal(one["gathered"], torch.arange(10) + 0.5)
    assert one["scored"] == [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]
    assert runs[0]["scored"] == [[0, 1], [5]] and runs[1]["scored"] == [[2, 3, 4], [6, 7, 8, 9]]


# ---------------------------------------------------------------- (c) pco-round


def _pco_round(work: str, args: list, port: int) -> dict:
    """pco-round twice: first while this process holds the workspace lock on rank 0 (another
    descriptor: refused as for another process), then for real."""
    out = {}
    rank = int(os.environ["RANK"])
    lock = store.workspace_lock(Path(work), "another pco-round")
    if rank == 0:
        lock.__enter__()
    r = coea("pco-round", *args, "--work", work)
    out["locked"] = {"code": r.code, "stdout": r.stdout, "stderr": r.stderr}
    if rank == 0:
        lock.__exit__(None, None, None)
    os.environ["MASTER_PORT"] = str(port)  # a new group on a fresh port
    r = coea("pco-round", *args, "--work", work)
    if r.code != 0:  # exit non-zero: spawn then stops the other rank rather than leave it waiting
        raise RuntimeError(f"rank {rank}: exit {r.code}\n{r.stderr}")
    return {**out, "code": r.code, "stdout": r.stdout, "stderr": r.stderr}


def _adapters(work: Path) -> dict:
    from safetensors.torch import load_file

    return {
        str(p.relative_to(work)): load_file(p)
        for p in sorted((work / "llm").rglob("adapter_model.safetensors"))
    }


COUNTS = (
    "users", "train_users", "heldout_users", "candidates", "candidate_hits", "observed_novel",
    "observed_novel_unjudged", "verified_positive", "verified_positive_proposed",
    "verified_negative", "uncertain", "replayed", "invalid_samples", "accepted",
    "train_transitions", "heldout_transitions",
)  # fmt: skip


def test_pco_round_on_two_processes_matches_one(tmp_path):
    work = tiny_workspace(tmp_path / "one")
    other = tmp_path / "two" / "work"
    shutil.copytree(work, other)
    # every engaged cluster a positive, every ignored proposal a negative: every step runs
    args = [*TINY, "--rounds", 2, "--no-verify", "--update-relevance"]
    args = [str(a) for a in (*args, "--json")]
    one = coea("pco-round", *args, "--work", work)
    assert one.code == 0, one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = _two(tmp_path, _pco_round, str(other), args, port, join=False)
    # the locked attempt: every rank stops with the lock's exit code, nothing written
    assert [r["locked"]["code"] for r in runs] == [75, 75]
    assert all("locked by" in r["locked"]["stderr"] for r in runs)
    assert [r["code"] for r in runs] == [0, 0], runs[0]["stderr"] + runs[1]["stderr"]
    assert json.loads(runs[0]["stdout"]) == one.json()  # the same summary, printed once
    assert runs[1]["stdout"] == "" and "round 0" in runs[0]["stderr"]
    assert "round" not in runs[1]["stderr"]  # rank 0 alone logs
    # the same state, but for the backbone's fingerprint: it hashes coea_scratch.json, which
    # records the build's seconds; the backbones themselves are the same
    states = [store.read_json(w / "pco" / "state.json") for w in (work, other)]
    for state in states:
        state["serving"].pop("backbone_fingerprint")
    assert states[0] == states[1]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        a, b = (w / "llm" / "backbone" / name for w in (work, other))
        assert a.read_bytes() == b.read_bytes()
    files = [sorted(str(p.relative_to(w)) for p in w.rglob("*")) for w in (work, other)]
    assert files[0] == files[1]
    for k in (0, 1):
        a, b = (store.read_json(w / "pco" / f"round-00{k}" / "metrics.json") for w in (work, other))
        for key in COUNTS:
            assert a.get(key) == b.get(key), (k, key)
        fit = a["novelty_fit"]
        assert fit["epoch_loss"] == pytest.approx(b["novelty_fit"]["epoch_loss"], rel=1e-5)
        assert fit["steps"] == b["novelty_fit"]["steps"] > 0
    assert a["verified_positive"] > 0 and a["verified_negative"] > 0
    assert a["novelty_fit"]["negatives"] > 0
    want, got = _adapters(work), _adapters(other)
    assert len(want) == 4 and want.keys() == got.keys()
    for path, tensors in want.items():
        for name, t in tensors.items():
            torch.testing.assert_close(got[path][name], t, rtol=1e-4, atol=1e-5, msg=path)
