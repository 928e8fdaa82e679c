"""The `pco-round` command: advance a track by whole rounds, safely under cron."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.errors import BadInput
from coea_cli.pco.context import load_world
from coea_cli.pco.models import LLMOptions, ensure_backbone, sid_token_list
from coea_cli.pco.rounds import RoundOptions, report_on_test_period, round_k, round_zero
from coea_cli.pco.state import MAIN, Track, load_state, save_state

OBJECTIVES = ("sft_kl", "dpo", "sft")


def options(o: dict, seed: int, device: str) -> tuple[LLMOptions, RoundOptions]:
    if o["objective"] not in OBJECTIVES:
        raise BadInput(f"--objective must be one of {', '.join(OBJECTIVES)}")
    llm = LLMOptions(
        base_model=o["base_model"], quant=None if o["quant"] == "auto" else o["quant"],
        device=device, lora_r=o["lora_r"], attn=o["attn"], backbone_hidden=o["backbone_hidden"],
        backbone_layers=o["backbone_layers"], backbone_steps=o["backbone_steps"], seed=seed,
    )  # fmt: skip
    fields = {f.name for f in dataclasses.fields(RoundOptions)}
    rnd = RoundOptions(**{k: v for k, v in o.items() if k in fields})
    return llm, rnd


def plan(state: dict | None, world, rounds: int, round_: int | None) -> list[int]:
    """Round numbers to run: round 0 when there is no state, then one per new period."""
    last_period = world.test_period - 1  # the test period is never trained on
    done = -1 if state is None else int(state["round"])
    if round_ is not None:
        if round_ > done + 1:
            raise BadInput(f"--round {round_}: round {done + 1} must run first")
        if round_ > last_period:
            raise BadInput(f"--round {round_}: period {round_} is the test period or later")
        return [round_]
    todo = list(range(done + 1, last_period + 1))
    return todo[:rounds]


def run_pco(ctx: Ctx) -> dict:
    o = ctx.options
    track = Track(ctx.work, o["track"] or MAIN)
    llm, rnd = options(o, ctx.seed, ctx.device)
    with store.workspace_lock(ctx.work, "pco-round"):
        world = load_world(ctx.work)
        state = load_state(track)
        todo = plan(state, world, o["rounds"], o["round"])
        if not todo:
            console.log(f"nothing to do: track {track.name} has run every period before the test")
            return {"status": "nothing to do", "round": state["round"] if state else None}
        if o["dry_run"]:
            for k in todo:
                what = "initial training on period 0" if k == 0 else f"fine-tune on period {k}"
                console.log(f"would run round {k} ({what}) on track {track.name}")
            return {"status": "dry run", "rounds": todo, "track": track.name, "options": o}
        backbone = ensure_backbone(ctx.work, world, llm)
        tokens = sid_token_list(ctx.work)
        results = []
        for k in todo:
            state = _one_round(ctx, track, k, state, world, backbone, llm, rnd, tokens)
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


def _one_round(ctx, track, k, state, world, backbone, llm, rnd, tokens) -> dict:
    from coea_cli.pco.models import load_model
    from coea_cli.pco.scoring import Prompter

    folder = track.round_dir(k)
    options = {**ctx.options, "round": k}
    with store.stage(folder, "pco-round", options, [], ctx.seed) as st:
        if k == 0:
            metrics = round_zero(world, track, backbone, llm, rnd, tokens, st.tmp)
            metrics["accepted"] = True
            novelty = str(track.adapter("novelty", 0).relative_to(ctx.work))
            relevance = str(track.adapter("relevance", 0).relative_to(ctx.work))
        else:
            metrics = round_k(world, track, k, state, backbone, llm, rnd, tokens, st.tmp)
            novelty = (
                metrics["novelty_path"] if metrics["accepted"] else state["current"]["novelty"]
            )
            relevance = (
                metrics["relevance_path"] if metrics["accepted"] else state["current"]["relevance"]
            )
        model, tok = load_model(backbone, llm, Path(ctx.work) / novelty, False, tokens)
        metrics["test"] = report_on_test_period(
            world, model, tok, Prompter(world, rnd.template_dir)
        )
        store.write_json(st.tmp / "metrics.json", metrics)
    verdict = "accepted" if metrics["accepted"] else "rejected: previous adapters stay current"
    console.log(f"round {k} {verdict}")
    history = [h for h in (state or {}).get("history", []) if h["round"] < k]
    entry = {
        "round": k,
        "period": k,
        "accepted": metrics["accepted"],
        "novelty": novelty,
        "relevance": relevance,
        "metrics": str((folder / "metrics.json").relative_to(ctx.work)),
    }
    new_state = {
        "track": track.name,
        "round": k,
        "current": {"novelty": novelty, "relevance": relevance},
        "backbone": str(backbone),
        "base_model": llm.base_model,
        "history": [*history, entry],
    }
    save_state(track, new_state)  # last: the round only counts once this is written
    return new_state
