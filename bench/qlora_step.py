"""A 4-bit QLoRA training step on a Qwen2-0.5B-shaped model with random weights (CUDA only),
and the model folder and tiny workspace on which bench/gpu_check.sh runs pco-round and recommend.

    python bench/qlora_step.py --model DIR [--attn coea_triton] [--batch 8] [--seq 512]
                               [--steps 8] [--json PATH]
    python bench/qlora_step.py --make-model DIR [--tiny]   # the model folder only (CPU works)
    python bench/qlora_step.py --make-workspace DIR        # a tiny workspace, DSIE trained

--model builds the folder when it has no config.json. The model has Qwen2-0.5B's shape
(24 layers, hidden 896, 14 query and 2 kv heads of dim 64, vocab 151,936, tied embeddings),
random bf16 weights and the tests' small byte-level tokenizer; --tiny makes a 2-layer one for
a CPU check of the script. A step is forward, backward and AdamW on LoRA r=16 (attention and
MLP projections) over the 4-bit NF4 base; each row gets a random length in [L/2, L], right
padded, so coea_triton runs its padded path. Reported: median ms/step after two warm-up
steps, valid tokens/s, peak CUDA memory. Without CUDA it exits at once with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN2_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
    tie_word_embeddings=True,
)  # fmt: skip
TINY = dict(QWEN2_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def make_model(path: Path, tiny: bool = False) -> Path:
    """A Qwen2-0.5B-shaped (or --tiny) causal LM with random bf16 weights and a small tokenizer,
    saved as a local Hugging Face folder. Built on the GPU when there is one (faster init)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.llm_fixtures import tokenizer

    tok = tokenizer(False)
    cfg = Qwen2Config(
        **(TINY if tiny else QWEN2_05B),
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_workspace(path: Path) -> Path:
    """tests/pco_fixtures' tiny workspace (30 users, 40 items, 3 periods; SIDs and item texts
    written directly) in `path`/work, then tokenize-items, profile-groups --groups 3 and a
    one-epoch train-dsie (torch attention), as recommend needs them; returns that folder."""
    import shutil

    from tests.helpers import coea
    from tests.pco_fixtures import tiny_workspace

    path.mkdir(parents=True, exist_ok=True)
    work = tiny_workspace(path)
    shutil.rmtree(work / "groups")  # the real command, with persona embeddings
    for args in (
        ("tokenize-items",),
        ("profile-groups", "--groups", 3),
        ("train-dsie", "--epochs", 1, "--hidden", 32, "--heads", 2, "--backend", "torch"),
    ):
        begin = time.perf_counter()
        result = coea(*args, "--work", work)
        if result.code != 0:
            raise SystemExit(f"{args[0]} failed ({result.code}): {result.stderr[-2000:]}")
        print(f"{args[0]}: {time.perf_counter() - begin:.1f} s", flush=True)
    return work


def qlora_step(model_dir: Path, attn: str, batch: int, seq_len: int, steps: int) -> dict:
    import torch

    from coea_cli.llm.backbone import add_lora, load_backbone

    if attn == "coea_triton":
        import coea_kernels.hf  # noqa: F401  (registers the attention implementation)
    torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    base, _ = load_backbone(model_dir, quant="4bit", device="cuda", attn_implementation=attn)
    load_s = time.perf_counter() - begin
    model = add_lora(base, r=16, alpha=32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(1, vocab, (batch, seq_len), generator=gen)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=gen)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    ids, mask, labels = ids.cuda(), mask.cuda(), labels.cuda()
    times = []
    for _ in range(steps + 2):
        torch.cuda.synchronize()
        begin = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    step_s = statistics.median(times[2:])
    return {
        "device": torch.cuda.get_device_name(),
        "model": "Qwen2-0.5B shape, random weights, 4-bit NF4 + LoRA r=16",
        "attn": attn, "batch": batch, "seq_len": seq_len, "valid_tokens": int(lengths.sum()),
        "load_4bit_s": round(load_s, 2), "step_ms": round(1000 * step_s, 1),
        "first_step_ms": round(1000 * times[0], 1),
        "tokens_per_s": round(int(lengths.sum()) / step_s),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss": round(float(loss.detach()), 3),
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model folder (built when missing)")
    parser.add_argument("--make-model", type=Path, help="build the model folder and exit")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU check)")
    parser.add_argument("--make-workspace", type=Path, help="build a tiny workspace and exit")
    parser.add_argument("--attn", choices=["coea_triton", "sdpa", "eager"], default="coea_triton")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.make_model:
        print(make_model(args.make_model, args.tiny))
        return 0
    if args.make_workspace:
        print(make_workspace(args.make_workspace))
        return 0
    if args.model is None:
        parser.error("give --model, --make-model or --make-workspace")
    import torch

    if not torch.cuda.is_available():
        print("qlora_step: no CUDA device: a 4-bit QLoRA step needs one (nothing measured)")
        return 2
    if not (args.model / "config.json").is_file():
        begin = time.perf_counter()
        make_model(args.model, args.tiny)
        print(f"built {args.model} in {time.perf_counter() - begin:.1f} s", flush=True)
    result = qlora_step(args.model, args.attn, args.batch, args.seq, args.steps)
    for key, value in result.items():
        print(f"  {key:<16} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
