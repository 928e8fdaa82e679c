"""The `pco-round` command: advance a track by whole rounds, safely under cron.

Under `torchrun` every rank runs the same rounds: the LLM fine-tuning, sampling and scoring
are shared among them (see `llm/train.py`, `llm/decoding.py`); rank 0 alone holds the
workspace lock, builds the scratch backbone and writes every artifact, and the others wait
for it at barriers, so every rank ends with the same state and returns the same summary.
"""

from __future__ import annotations

from pathlib import Path

from coea_cli import console, dist, store
from coea_cli.common import Ctx
from coea_cli.errors import BadInput
from coea_cli.llm.context import World
from coea_cli.llm.models import LORA_ALPHA, spec_of
from coea_cli.options import PcoOptions
from coea_cli.pco.advance import advance
from coea_cli.pco.backbone import ensure_backbone
from coea_cli.workspace import MAIN, Serving, Track, Workspace
from coea_cli.workspace.tracks import fingerprint


def plan(state: dict | None, test_period: int, rounds: int, round_: int | None) -> list[int]:
    """Round numbers to run: round 0 when there is no state, then one per new period."""
    last_period = test_period - 1  # the test period is never trained on
    done = -1 if state is None else int(state["round"])
    if round_ is not None:
        if round_ > done + 1:
            raise BadInput(f"--round {round_}: round {done + 1} must run first")
        if round_ > last_period:
            raise BadInput(f"--round {round_}: period {round_} is the test period or later")
        return [round_]
    todo = list(range(done + 1, last_period + 1))
    return todo[:rounds]


def serving_record(ws: Workspace, o: PcoOptions, backbone: Path) -> Serving:
    """What this run's adapters are trained with, for the state file."""
    inside = backbone.resolve().is_relative_to(ws.root.resolve())
    return Serving(
        base_model=o.base_model if o.base_model == "scratch" else str(backbone.resolve()),
        backbone=backbone.resolve().relative_to(ws.root.resolve()).as_posix()
        if inside
        else str(backbone.resolve()),
        backbone_fingerprint=fingerprint(backbone),
        quant=str(o.quant),
        attn=str(o.attn),
        lora_r=o.lora_r,
        lora_alpha=LORA_ALPHA,
        sid_version=ws.sids().version,
        context=o.context(),
        template_dir=o.template_dir,
    )


def start_state(ws: Workspace, track: Track, context: str) -> dict | None:
    """The state a run continues from: the track's own; for a new track the main track's
    round 0 when both train with the same context; else None (the track trains its own
    round 0, e.g. `--track nodsie --no-dsie`)."""
    own = track.state(branch=False)
    if own is not None or track.name == MAIN:
        return own
    main = ws.track(MAIN).state()
    if main is not None and main.get("serving", {}).get("context") == context:
        return track.state()
    return None


SAME_TRAINING = (
    "base_model", "backbone_fingerprint", "quant", "lora_r", "sid_version", "context",
    "template_dir",
)  # fmt: skip


def check_same_training(state: dict | None, new: Serving, track: Track) -> None:
    """A track's rounds all train on one backbone, quantisation, LoRA shape and SID version;
    continuing with other settings would fine-tune adapters against a model they do not fit."""
    if state is None or "serving" not in state:
        return
    old = Serving.from_dict(state["serving"], track.state_path())
    changed = [
        f"{k}: {getattr(old, k)} -> {getattr(new, k)}"
        for k in SAME_TRAINING
        if getattr(old, k) != getattr(new, k)
    ]
    if changed:
        raise BadInput(
            f"track {track.name} was trained with other settings ({'; '.join(changed)}); use "
            "the same options, or rerun from round 0 (`coea pco-round --round 0`) after "
            "rebuilding what changed"
        )


def run_pco(ctx: Ctx[PcoOptions]) -> dict:
    rank, size, _ = dist.init_distributed(ctx.device)
    try:
        return _run(ctx, rank, size)
    finally:
        dist.close(size)


def _run(ctx: Ctx[PcoOptions], rank: int, size: int) -> dict:
    o = ctx.opts
    ws = ctx.ws
    track = ws.track(o.track)
    # rank 0 alone holds the lock (a second holder would be refused); the others start once
    # it does, and the state they read cannot change under them
    with dist.on_rank0(store.workspace_lock(ctx.work, "pco-round"), rank, size):
        world = World.load(ws)
        state = start_state(ws, track, o.context())
        todo = plan(state, world.test_period, o.rounds, o.round)
        if not todo:
            console.log(f"nothing to do: track {track.name} has run every period before the test")
            return {"status": "nothing to do", "round": state["round"] if state else None}
        if o.dry_run:
            for k in todo:
                what = "initial training on period 0" if k == 0 else f"fine-tune on period {k}"
                console.log(f"would run round {k} ({what}) on track {track.name}")
            return {
                "status": "dry run",
                "rounds": todo,
                "track": track.name,
                "options": o.recorded(),
            }
        backbone = ensure_backbone(ws, world, o, ctx.seed)
        serving = serving_record(ws, o, backbone)
        check_same_training(state if todo[0] > 0 else None, serving, track)
        spec = spec_of(serving, backbone, ws, ctx.device, ctx.seed)
        results = []
        for k in todo:
            state = advance(ctx.ws, track, k, state, world, spec, serving, o, ctx.started)
            results.append(state["history"][-1])
    last = results[-1]
    return {
        "status": "ok",
        "track": track.name,
        "rounds": [r["round"] for r in results],
        "accepted": [r["accepted"] for r in results],
        "current": state["current"],
        "last": {k: v for k, v in last.items() if not isinstance(v, dict)},
    }
