"""The base model of a track: `--base-model PATH`, or the scratch backbone built once."""

from __future__ import annotations

from pathlib import Path

from coea_cli import console, dist
from coea_cli.llm.backbone import check_model_folder
from coea_cli.llm.context import World
from coea_cli.options import PcoOptions
from coea_cli.workspace import Workspace


def ensure_backbone(ws: Workspace, world: World, o: PcoOptions, seed: int) -> Path:
    """The base model folder; the scratch backbone is built (and pre-trained) on first use
    from the item texts, cluster descriptions, personas and period-0 SID histories.

    Under torchrun rank 0 alone builds it while the others wait; then every rank continues
    from rank 0's torch random state, as one process continues from the build's."""
    if o.base_model != "scratch":
        return check_model_folder(o.base_model, "--base-model")
    rank, size = dist.current()
    out = ws.backbone
    if rank == 0 and not (out / "config.json").is_file():
        _build(ws, world, o, seed, out)
    dist.barrier(size)
    dist.share_rng(0, size)
    return out


def _build(ws: Workspace, world: World, o: PcoOptions, seed: int, out: Path) -> None:
    from coea_cli.llm.scratch import ScratchSpec, build_scratch_backbone

    sids = ws.sids()
    sid_of = sids.strings()
    texts = [t for t in ws.item_texts() if t]
    texts += list(world.describe.values()) + list(world.persona.values())
    seqs = world.history.before(1)  # period 0 only
    sid_sequences = ["".join(sid_of[i] for i in seqs.of(u)) for u in seqs.users()]
    spec = ScratchSpec(
        hidden=o.backbone_hidden, layers=o.backbone_layers, steps=o.backbone_steps, seed=seed
    )
    console.log(
        f"building the scratch backbone ({spec.layers} layers, hidden {spec.hidden}, "
        f"{spec.steps} steps) from {len(texts)} texts and {len(sid_sequences)} SID histories"
    )
    with console.progress("pre-train backbone", spec.steps, "steps") as advance:
        build_scratch_backbone(
            out,
            spec,
            texts=texts,
            sid_sequences=sid_sequences,
            sid_tokens=sids.layout.tokens(),
            progress=lambda step, total, loss: advance(1, loss=loss),
        )
