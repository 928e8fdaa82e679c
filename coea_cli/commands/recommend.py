"""`coea recommend`: serendipitous top-K lists in offline storage (LMDB + Parquet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    user: Annotated[
        str | None,
        typer.Option(help="Print this user's stored list (original user id) and exit."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Items per user.")] = 20,
    n: Annotated[int, typer.Option("--n", help="Novelty samples per serving key.")] = 10,
    top_m: Annotated[
        int,
        typer.Option(
            help="Novel clusters kept per user: the Relevance LLM's best of the n draws the user "
            "does not know yet, then the Novelty LLM's next most likely clusters."
        ),
    ] = 3,
    temperature: Annotated[float, typer.Option(help="Novelty sampling temperature.")] = 1.0,
    explore_ratio: Annotated[
        float,
        typer.Option(
            help="Share of the K slots filled from novel clusters; the rest (and any slot they "
            "cannot fill) come from DSIE's relevance-only ranking."
        ),
    ] = 1.0,
    key_recent: Annotated[
        int, typer.Option(help="Recent clusters in a serving key (with the user's group).")
    ] = 3,
    track: Annotated[str, typer.Option(help="PCO track whose current adapters serve.")] = "main",
    round: Annotated[
        int | None, typer.Option("--round", help="Serve a given round's adapters instead.")
    ] = None,
    dsie: Annotated[
        bool,
        typer.Option(
            help="Persona context and DSIE item ranking (--no-dsie: popularity, ablation)."
        ),
    ] = True,
    before_period: Annotated[
        int | None,
        typer.Option(help="Serve as of the start of this period (default: the test period)."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Compute only users with user_id % N == I (I/N), into recs/shards/I-of-N/, "
            "so a scheduler can fan out."
        ),
    ] = None,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Compute every user's top-K: per unique serving key (group, recent clusters) the Novelty
    LLM samples clusters and the Relevance LLM ranks them; the user's best unseen novel clusters
    give items ranked by DSIE. Writes recs/recs.lmdb and recs/recs.parquet; --user reads one."""
    params = dict(locals())
    from coea_cli.recs.run import run_recommend

    common.run("recommend", params, run_recommend)
