"""Loading the Novelty and Relevance LLMs: backbone, SID tokens, LoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LORA_ALPHA = 32  # LoRA scaling numerator, the same for every rank


@dataclass(frozen=True)
class LLMSpec:
    """Everything that decides how an LLM is loaded. PCO builds it from its options and
    records it in the track's state; serving rebuilds it from that record."""

    backbone: Path  # local Hugging Face causal-LM folder
    quant: str | None  # 4bit, 8bit, none; None: 4bit on CUDA, none on CPU
    attn: str
    lora_r: int
    lora_alpha: int
    device: str  # cpu or cuda
    seed: int
    sid_tokens: tuple[str, ...]


def load_model(spec: LLMSpec, adapter: Path | None, trainable: bool):
    """Base model plus a saved adapter, or a fresh LoRA adapter (SID tokens added, their rows
    trained) when `adapter` is None. Returns (model, tokenizer). A saved adapter loaded only
    to infer is merged into an unquantized base: one matrix product per projection."""
    from coea_cli.llm.backbone import add_lora, is_quantized, load_adapter, load_backbone
    from coea_cli.llm.vocab import add_sid_tokens

    if spec.attn == "coea_triton":
        import coea_kernels.hf  # noqa: F401  (registers the attention implementation)
    base, tokenizer = load_backbone(
        spec.backbone, quant=spec.quant, device=spec.device, attn_implementation=spec.attn
    )
    if adapter is not None:
        model, saved_tok = load_adapter(base, adapter, is_trainable=trainable)
        if not trainable and not is_quantized(base):
            model = model.merge_and_unload()
        return model, saved_tok or tokenizer
    new_ids = add_sid_tokens(base, tokenizer, list(spec.sid_tokens), seed=spec.seed)
    model = add_lora(base, r=spec.lora_r, alpha=spec.lora_alpha, new_token_ids=new_ids)
    return model, tokenizer


def serving_spec(ws, track, state: dict, device: str, seed: int) -> LLMSpec:
    """The spec a track's adapters were trained with (its state's `serving` record), checked
    against the workspace: serving never falls back to another backbone or SID version."""
    from coea_cli.errors import ArtifactError
    from coea_cli.workspace import Serving
    from coea_cli.workspace.tracks import fingerprint

    path = track.state_path()
    serving = Serving.from_dict(state.get("serving") or {}, path)
    if serving.sid_version != ws.sids().version:
        raise ArtifactError(
            path,
            "pco-round --round 0",
            f"track {track.name} was trained on SID version {serving.sid_version}, but "
            f"sids/ now holds version {ws.sids().version}",
        )
    backbone = Path(serving.backbone)
    backbone = backbone if backbone.is_absolute() else ws.root / backbone
    if not (backbone / "config.json").is_file():
        raise ArtifactError(backbone, "pco-round", "the track's backbone is missing")
    if fingerprint(backbone) != serving.backbone_fingerprint:
        raise ArtifactError(
            path,
            "pco-round --round 0",
            f"the backbone {backbone} changed since track {track.name} was trained",
        )
    return spec_of(serving, backbone, ws, device, seed)


def spec_of(serving, backbone: Path, ws, device: str, seed: int) -> LLMSpec:
    return LLMSpec(
        backbone=backbone,
        quant=None if serving.quant == "auto" else serving.quant,
        attn=serving.attn,
        lora_r=serving.lora_r,
        lora_alpha=serving.lora_alpha,
        device=device,
        seed=seed,
        sid_tokens=tuple(ws.sids().layout.tokens()),
    )
