"""Loading the Novelty and Relevance LLMs: backbone (local or scratch), SID tokens, adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coea_cli import console, store
from coea_cli.errors import BadInput
from coea_cli.pco.context import World


@dataclass(frozen=True)
class LLMOptions:
    base_model: str = "scratch"
    quant: str | None = None  # None: 4bit on CUDA, none on CPU
    device: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    attn: str = "sdpa"
    backbone_hidden: int = 128
    backbone_layers: int = 4
    backbone_steps: int = 200
    seed: int = 0


def sid_token_list(work: Path) -> list[str]:
    """Every level-prefixed SID token used by the catalogue (levels plus the dedup level)."""
    sids = store.read_parquet(Path(work) / "sids" / "sids.parquet", command="build-sids")
    levels = sorted(c for c in sids.column_names if c[0] == "c" and c[1:].isdigit())
    cols = [*levels, "dup"]
    tokens = []
    for j, col in enumerate(cols):
        top = int(np.max(sids[col].to_numpy())) if sids.num_rows else 0
        letter = chr(ord("a") + j)
        tokens += [f"<{letter}_{c}>" for c in range(top + 1)]
    return tokens


def ensure_backbone(work: Path, world: World, opt: LLMOptions) -> Path:
    """The base model folder: `--base-model PATH`, or the scratch backbone (built once)."""
    if opt.base_model != "scratch":
        path = Path(opt.base_model)
        if not (path / "config.json").is_file():
            raise BadInput(f"--base-model {path}: not a Hugging Face model folder (no config.json)")
        return path
    from coea_cli.llm.scratch import build_scratch_backbone

    out = Path(work) / "llm" / "backbone"
    if (out / "config.json").is_file():
        return out
    sids = store.read_parquet(Path(work) / "sids" / "sids.parquet").sort_by("item_id")
    sid_of = sids["sid"].to_pylist()
    texts = _item_texts(work, world)
    texts += list(world.describe.values()) + list(world.persona.values())
    seqs = world.sequences(1)  # period 0 only
    sid_sequences = ["".join(sid_of[i] for i in items) for _, items in sorted(seqs.items())]
    console.log(
        f"building the scratch backbone ({opt.backbone_layers} layers, hidden "
        f"{opt.backbone_hidden}, {opt.backbone_steps} steps) from {len(texts)} texts and "
        f"{len(sid_sequences)} SID histories"
    )
    with console.progress("pre-train backbone", opt.backbone_steps, "steps") as advance:
        build_scratch_backbone(
            out,
            texts=texts,
            sid_sequences=sid_sequences,
            sid_tokens=sid_token_list(work),
            hidden=opt.backbone_hidden,
            layers=opt.backbone_layers,
            steps=opt.backbone_steps,
            seed=opt.seed,
            progress=lambda step, total, loss: advance(1, loss=loss),
        )
    return out


def _item_texts(work: Path, world: World) -> list[str]:
    path = Path(work) / "items" / "item_text.parquet"
    if path.exists():
        return [t for t in store.read_parquet(path)["text"].to_pylist() if t]
    return [t for t in world.titles if t]


def load_model(
    backbone: Path, opt: LLMOptions, adapter: Path | None, trainable: bool, sid_tokens: list[str]
):
    """Base model plus a saved adapter, or a fresh LoRA adapter (SID tokens added, their rows
    trained) when `adapter` is None."""
    from coea_cli.llm.backbone import add_lora, load_adapter, load_backbone
    from coea_cli.llm.vocab import add_sid_tokens

    if opt.attn == "coea_triton":
        import coea_kernels.hf  # noqa: F401  (registers the attention implementation)
    base, tokenizer = load_backbone(
        backbone, quant=opt.quant, device=opt.device, attn_implementation=opt.attn
    )
    if adapter is not None:
        model, saved_tok = load_adapter(base, adapter, is_trainable=trainable)
        return model, saved_tok or tokenizer
    new_ids = add_sid_tokens(base, tokenizer, sid_tokens, seed=opt.seed)
    model = add_lora(base, r=opt.lora_r, alpha=opt.lora_alpha, new_token_ids=new_ids)
    return model, tokenizer
