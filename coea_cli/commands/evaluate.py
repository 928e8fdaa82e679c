"""`coea evaluate`: quality, novelty, diversity and serendipity against baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    ks: Annotated[
        str, typer.Option(help="Cut-offs K, comma separated (10 is always included).")
    ] = "5,10,20",
    n: Annotated[int, typer.Option("--n", help="Novelty samples per serving key.")] = 10,
    top_m: Annotated[int, typer.Option(help="Novel clusters kept per user.")] = 3,
    temperature: Annotated[float, typer.Option(help="Novelty sampling temperature.")] = 1.0,
    explore_ratio: Annotated[
        float, typer.Option(help="Share of each CoEA list from novel clusters.")
    ] = 1.0,
    key_recent: Annotated[int, typer.Option(help="Recent clusters in a serving key.")] = 3,
    mmr_lambda: Annotated[
        float, typer.Option(help="Relevance weight of the DSIE + MMR baseline.")
    ] = 0.5,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Evaluate on the held-out last period with full ranking (protocol printed first):
    popularity, random novel items, DSIE top-K, DSIE + MMR, CoEA round 0, CoEA w/o KL, CoEA w/o
    DSIE and full CoEA, side by side. Writes eval/report.json, eval/report.md, eval/rounds.png
    (metrics across PCO rounds) and eval/tradeoff.png."""
    params = dict(locals())
    from coea_cli.evaluation.run import run_evaluate

    common.run("evaluate", params, run_evaluate)
