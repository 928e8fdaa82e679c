"""`coea pco-round`: one Periodic Collaborative Optimization round per new period."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    rounds: Annotated[
        int, typer.Option(help="Run up to this many rounds in sequence (each one period).")
    ] = 1,
    round: Annotated[
        int | None,
        typer.Option(
            "--round", help="Run exactly this round (0 = initial training; redo allowed)."
        ),
    ] = None,
    track: Annotated[
        str,
        typer.Option(
            help="Chain of rounds to advance. Tracks other than 'main' branch from the shared "
            "round 0 and keep their own adapters (e.g. an ablation run with --no-kl)."
        ),
    ] = "main",
    base_model: Annotated[
        str,
        typer.Option(
            help="Local Hugging Face causal-LM folder, or 'scratch' to build a small Qwen2-style "
            "model and tokenizer from the workspace (offline default)."
        ),
    ] = "scratch",
    quant: Annotated[
        str,
        typer.Option(help="Base weights: auto (4bit on CUDA, none on CPU), 4bit, 8bit or none."),
    ] = "auto",
    attn: Annotated[
        str,
        typer.Option(help="Attention implementation: sdpa, eager or coea_triton (GPU kernel)."),
    ] = "sdpa",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    backbone_hidden: Annotated[int, typer.Option(help="Scratch backbone hidden size.")] = 128,
    backbone_layers: Annotated[int, typer.Option(help="Scratch backbone layers.")] = 4,
    backbone_steps: Annotated[int, typer.Option(help="Scratch backbone pre-training steps.")] = 200,
    n: Annotated[int, typer.Option("--n", help="Novelty samples per user.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_m: Annotated[int, typer.Option(help="Clusters kept after Relevance best-of-n.")] = 3,
    tau_pos: Annotated[
        float, typer.Option(help="Relevance score needed to verify an engaged cluster.")
    ] = 0.5,
    tau_neg: Annotated[
        float,
        typer.Option(help="Relevance score under which an unengaged candidate is a negative."),
    ] = 0.5,
    objective: Annotated[
        str,
        typer.Option(
            help="Novelty fine-tuning: sft_kl (SFT + KL to the previous round), dpo, sft."
        ),
    ] = "sft_kl",
    kl_weight: Annotated[float, typer.Option(help="Weight lambda of the KL term.")] = 0.5,
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.1,
    replay: Annotated[
        float, typer.Option(help="Share of each round's examples replayed from earlier rounds.")
    ] = 0.3,
    epochs: Annotated[int, typer.Option(help="Epochs per round.")] = 1,
    round0_epochs: Annotated[int, typer.Option(help="Epochs of the round-0 training.")] = 2,
    round0_per_user: Annotated[
        int, typer.Option(help="Round 0: novel transitions taken per user from period 0.")
    ] = 3,
    positives_per_user: Annotated[
        int, typer.Option(help="Verified positives used per user and round (0: all).")
    ] = 3,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW, LoRA parameters).")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 16,
    update_relevance: Annotated[
        bool, typer.Option(help="Also fine-tune the Relevance LLM on each period's labels.")
    ] = False,
    holdout: Annotated[
        float, typer.Option(help="Share of a period's users held out for re-evaluation.")
    ] = 0.2,
    epsilon: Annotated[
        float, typer.Option(help="Reject a round whose held-out quality drops by more than this.")
    ] = 0.02,
    verify: Annotated[
        bool,
        typer.Option(
            help="Filter positives and negatives by the Relevance LLM (--no-verify: data only)."
        ),
    ] = True,
    kl: Annotated[bool, typer.Option(help="Keep the KL term (--no-kl: plain SFT).")] = True,
    reeval: Annotated[
        bool,
        typer.Option(help="Re-evaluate and roll back a worse round (--no-reeval: always accept)."),
    ] = True,
    dsie: Annotated[
        bool,
        typer.Option(
            help="Give the LLMs persona and long-term context (--no-dsie: recent window only)."
        ),
    ] = True,
    template_dir: Annotated[
        str | None, typer.Option(help="Folder with novelty.txt / relevance.txt prompt templates.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and exit.")] = False,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Advance the workspace by PCO rounds: round 0 trains the Novelty and Relevance LLMs on
    period 0; each round k >= 1 generates candidates for period k's users, verifies them with the
    Relevance LLM against observed engagement, fine-tunes the Novelty LLM, re-evaluates it on
    held-out users and accepts or rolls back. Holds the workspace lock; a run with no new period
    exits 0 with "nothing to do"."""
    params = dict(locals())
    from coea_cli.pco.run import run_pco

    common.run("pco-round", params, run_pco)
