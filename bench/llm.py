"""Benchmark of the LLM layer.

CPU: build the scratch backbone on a synthetic MovieLens-100K-sized corpus (1,682 item texts,
943 SID histories) and measure pre-training tokens/s, LoRA fine-tuning tokens/s, constrained
sampling samples/s and cluster scoring prompts/s.
CUDA (when present): a Qwen2-0.5B-shaped model with random weights, loaded in 4-bit NF4: QLoRA
step time, peak memory and sampling throughput.

    python bench/llm.py [--steps N] [--threads T] [--json PATH] [--skip-cuda] [--skip-cpu]

Wall times on a shared machine depend on its load; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coea_cli.options import PcoOptions
from coea_cli.workspace.sids import SidLayout
from coea_cli.workspace.sids import cluster_token as cluster_to_text

GENRES = "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir "
GENRES = (GENRES + "Horror Musical Mystery Romance Sci-Fi Thriller War Western").split()
WORDS = [
    "love",
    "night",
    "city",
    "last",
    "man",
    "story",
    "day",
    "dead",
    "time",
    "return",
    "king",
    "star",
    "home",
    "house",
    "life",
]
LEVELS, CODES = 3, 64


def synthetic_corpus(n_items: int = 1682, n_users: int = 943, mean_len: int = 106, seed: int = 0):
    """Item texts, cluster descriptions, personas and SID histories of MovieLens-100K size."""
    rng = random.Random(seed)
    sids = [(*tuple(rng.randrange(CODES) for _ in range(LEVELS)), 0) for _ in range(n_items)]
    items = []
    for _i in range(n_items):
        title = " ".join(rng.choice(WORDS).title() for _ in range(rng.randint(1, 4)))
        genres = "|".join(rng.sample(GENRES, rng.randint(1, 3)))
        items.append(f"{title} ({rng.randint(1930, 1998)}) {genres}")
    clusters = sorted({s[:1] for s in sids})
    describe = {
        c: f"{', '.join(rng.sample(GENRES, 2))}: {items[rng.randrange(n_items)]}" for c in clusters
    }
    personas = [
        f"Group {g}: {rng.choice(['students', 'engineers', 'retirees', 'artists'])} aged "
        f"{rng.randint(18, 60)}, mostly {rng.choice(GENRES)}"
        for g in range(40)
    ]
    histories = []
    for _ in range(n_users):
        n = max(20, int(rng.expovariate(1 / mean_len)))
        histories.append("".join(cluster_to_text(sids[rng.randrange(n_items)]) for _ in range(n)))
    tokens = SidLayout((*[CODES] * LEVELS, 8)).tokens()
    texts = items + list(describe.values()) + personas
    return dict(
        texts=texts,
        histories=histories,
        tokens=tokens,
        clusters=clusters,
        describe=describe,
        personas=personas,
    )


def _prompts(corpus, n: int, seed: int = 1):
    from coea_cli.llm.prompts import novelty_prompt

    rng = random.Random(seed)
    cl = corpus["clusters"]
    out = []
    for _ in range(n):
        recent = rng.sample(cl, 5)
        out.append(
            (
                novelty_prompt(
                    rng.choice(corpus["personas"]), recent, rng.sample(cl, 10), corpus["describe"]
                ),
                rng.choice(cl),
            )
        )
    return out


def bench_cpu(steps: int, work: Path) -> dict:
    import torch

    from coea_cli.llm.backbone import add_lora, load_backbone
    from coea_cli.llm.decoding import ClusterTrie, cluster_logprobs, sample_clusters
    from coea_cli.llm.scratch import ScratchSpec, build_scratch_backbone
    from coea_cli.llm.train import train_novelty
    from coea_cli.llm.vocab import add_sid_tokens

    corpus = synthetic_corpus()
    stamps = {}

    def progress(step, total, loss):
        stamps.setdefault("first", time.perf_counter())
        stamps["last"], stamps["steps"], stamps["loss"] = time.perf_counter(), step, loss
        if step % 25 == 0 or step == total:
            print(f"  pre-train step {step}/{total} loss {loss:.3f}", file=sys.stderr)

    t0, cpu0 = time.perf_counter(), time.process_time()
    pco = PcoOptions()
    spec = ScratchSpec(hidden=pco.backbone_hidden, layers=pco.backbone_layers, steps=steps)
    path = build_scratch_backbone(
        work / "backbone",
        spec,
        texts=corpus["texts"],
        sid_sequences=corpus["histories"],
        sid_tokens=corpus["tokens"],
        progress=progress,
    )
    build_s, build_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    info = json.loads((path / "coea_scratch.json").read_text())
    pre_tps = (stamps["steps"] - 1) * 16 * 256 / (stamps["last"] - stamps["first"])

    model, tok = load_backbone(path, quant="none", device="cpu")
    ids = add_sid_tokens(model, tok, corpus["tokens"])
    model = add_lora(model, new_token_ids=ids)
    data = _prompts(corpus, 64)
    lengths = sorted(len(tok.encode(p)) for p, _ in data)
    n_tok = sum(lengths) + len(data)
    t0 = time.perf_counter()
    train_novelty(model, tok, data, epochs=1, batch_size=8, lr=1e-3)
    lora_s = time.perf_counter() - t0

    trie = ClusterTrie.from_clusters(tok, corpus["clusters"])
    prompts = [p for p, _ in data[:32]]
    sample_clusters(model, tok, prompts[:2], trie, n=2, seed=0)  # warm-up
    t0 = time.perf_counter()
    s = sample_clusters(model, tok, prompts, trie, n=8, max_batch=128, seed=0)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lp = cluster_logprobs(model, tok, prompts, corpus["clusters"])
    score_s = time.perf_counter() - t0
    return {
        "device": f"CPU ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} threads",
        "scratch_parameters": info["parameters"],
        "scratch_vocab": info["vocab"],
        "corpus_tokens": info["tokens"],
        "scratch_steps": steps,
        "scratch_build_s": round(build_s, 1),
        "scratch_build_cpu_s": round(build_cpu, 1),
        "scratch_loss_first_last": [round(info["loss_first"], 3), round(info["loss_last"], 3)],
        "pretrain_tokens_per_s": round(pre_tps),
        "novelty_prompt_tokens_median_max": [lengths[len(lengths) // 2], lengths[-1]],
        "lora_sft_tokens_per_s": round(n_tok / lora_s),
        "sample_samples_per_s": round(len(prompts) * 8 / gen_s, 1),
        "sample_invalid": s.invalid,
        "cluster_logprobs_prompts_per_s": round(len(prompts) / score_s, 1),
        "cluster_logprobs_row_sum": round(float(lp.exp().sum(-1).mean()), 5),
    }


def bench_cuda(work: Path) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from coea_cli.llm.backbone import add_lora, load_backbone, save_adapter
    from coea_cli.llm.decoding import ClusterTrie, sample_clusters
    from coea_cli.llm.scratch import build_tokenizer
    from coea_cli.llm.train import train_novelty
    from coea_cli.llm.vocab import add_sid_tokens

    corpus = synthetic_corpus(n_users=50)
    src = work / "qwen2-0.5b-random"
    tok = build_tokenizer(corpus["texts"], [], vocab_size=8000)
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    tok.save_pretrained(src)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, tok = load_backbone(src, quant="4bit", device="cuda")
    load_s = time.perf_counter() - t0
    ids = add_sid_tokens(model, tok, corpus["tokens"])
    model = add_lora(model, new_token_ids=ids)
    data = _prompts(corpus, 8 * 12)
    times = []
    train_novelty(model, tok, data[:8], batch_size=8)  # warm-up
    torch.cuda.synchronize()

    def progress(step, total, loss):
        torch.cuda.synchronize()
        times.append(time.perf_counter())

    t0 = time.perf_counter()
    train_novelty(model, tok, data[8:], batch_size=8, progress=progress)
    steps = [b - a for a, b in zip([t0, *times[:-1]], times, strict=True)][1:]
    peak = torch.cuda.max_memory_allocated() / 2**30
    trie = ClusterTrie.from_clusters(tok, corpus["clusters"])
    prompts = [p for p, _ in data[:64]]
    sample_clusters(model, tok, prompts[:4], trie, n=4)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    s = sample_clusters(model, tok, prompts, trie, n=8, max_batch=512)
    torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    save_adapter(model, work / "adapter", tok)
    return {
        "device": torch.cuda.get_device_name(),
        "model": "Qwen2-0.5B shape, random weights, 4-bit NF4 + LoRA r=16",
        "load_4bit_s": round(load_s, 2),
        "qlora_step_ms_median": round(1000 * sorted(steps)[len(steps) // 2], 1),
        "qlora_batch": 8,
        "peak_memory_gib": round(peak, 2),
        "sample_samples_per_s": round(len(prompts) * 8 / gen_s, 1),
        "sample_invalid": s.invalid,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="scratch pre-training steps")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--skip-cuda", action="store_true")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_cpu:
            results["cpu"] = bench_cpu(args.steps, Path(tmp))
        if not args.skip_cuda and torch.cuda.is_available():
            results["cuda"] = bench_cuda(Path(tmp))
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    for part, res in results.items():
        if not isinstance(res, dict):
            print(f"{part}: {res}")
            continue
        print(f"\n[{part}]")
        for k, v in res.items():
            print(f"  {k:<32} {v}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
