"""One round on a track, from its state to the next: the round's folder written atomically,
then the state (written last, so a round only counts once it is complete). Used by
`pco-round` and by the simulator. Under torchrun every rank runs the round and builds the same
state; rank 0 alone writes, and the others wait for it before reading what it wrote."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from coea_cli import console, dist, store
from coea_cli.llm.context import Prompter, World
from coea_cli.llm.models import LLMSpec, load_model
from coea_cli.options import PcoOptions
from coea_cli.pco.rounds import RoundK, RoundZero, report_on_test_period
from coea_cli.workspace import Serving, Track, Workspace


def advance(
    ws: Workspace, track: Track, k: int, state: dict | None, world: World, spec: LLMSpec,
    serving: Serving, o: PcoOptions, started: float | None = None, report_test: bool = True,
) -> dict:  # fmt: skip
    """Run round k (0: initial training) and return the track's new state. With
    `report_test`, the round's metrics include the evaluation-only test-period figures."""
    rank, size = dist.current()
    folder = track.round_dir(k)
    inputs = _inputs(ws, track, state if k > 0 else None, spec)
    st = store.Stage(
        folder=folder,
        command="pco-round",
        options={**o.recorded(), "round": k},
        inputs=inputs,
        lineage=ws.lineage(inputs),
        seed=spec.seed,
        root=ws.root,
        started=started or time.time(),
    )
    with st.write() if rank == 0 else nullcontext(folder) as tmp:
        if k == 0:
            metrics = RoundZero(world, track, spec, o, tmp).run()
            metrics["accepted"] = True
            novelty = track.relative(track.adapter("novelty", 0))
            relevance = track.relative(track.adapter("relevance", 0))
        else:
            metrics = RoundK(world, track, spec, o, tmp, k, state).run()
            cur = state["current"]
            novelty = metrics["novelty_path"] if metrics["accepted"] else cur["novelty"]
            relevance = metrics["relevance_path"] if metrics["accepted"] else cur["relevance"]
        if report_test:
            dist.barrier(size)  # rank 0 has written the adapters
            model, tok = load_model(spec, Path(track.root) / novelty, False)
            prompter = Prompter(world, o.template_dir, spec.backbone)
            metrics["test"] = report_on_test_period(
                world, model, tok, prompter, context=o.context()
            )
        if rank == 0:
            store.write_json(track.round_file(k, "metrics", tmp), metrics)
    verdict = "accepted" if metrics["accepted"] else "rejected: previous adapters stay current"
    console.log(f"round {k} {verdict}")
    history = [h for h in (state or {}).get("history", []) if h["round"] < k]
    entry = {
        "round": k,
        "period": k,
        "accepted": metrics["accepted"],
        "novelty": novelty,
        "relevance": relevance,
        "metrics": track.relative(track.round_file(k, "metrics")),
    }
    new_state = {
        "track": track.name,
        "round": k,
        "current": {"novelty": novelty, "relevance": relevance},
        "serving": serving.to_dict(),
        "history": [*history, entry],
    }
    if rank == 0:
        track.save_state(new_state)  # last: the round only counts once this is written
    dist.barrier(size)  # the next round reads this one's adapters and examples
    return new_state


def _inputs(ws: Workspace, track: Track, state: dict | None, spec: LLMSpec) -> list[Path]:
    """What a round reads: the data, SIDs, groups, the backbone and the current adapters."""
    paths = [ws.data.require("interactions"), ws.sids_dir.require("sids")]
    paths += [ws.groups_dir.require("groups"), ws.groups_dir.require("personas")]
    if spec.backbone.resolve().is_relative_to(ws.root.resolve()):
        paths.append(spec.backbone)
    if state is not None:
        paths += [track.recorded_adapter(state["current"][r]) for r in ("novelty", "relevance")]
    return paths
