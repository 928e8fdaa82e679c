"""`coea prepare`: raw interaction logs -> the workspace's canonical tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Ctx, Device, Force, Json, Seed, Work


def cli(
    dataset: Annotated[
        str | None,
        typer.Option(help="Embedded dataset to use when no --source is given: ml-100k."),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(help="Raw logs: a folder or zip (ml-100k, ml-1m, recbole) or a table file."),
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format", help="Format of --source / --append: ml-100k, ml-1m, recbole or table."
        ),
    ] = "recbole",
    columns: Annotated[
        str | None,
        typer.Option(help="Column mapping for --format table, e.g. user=uid,item=iid,time=ts."),
    ] = None,
    items: Annotated[
        Path | None, typer.Option(help="Items table for --format table (id, title, categories).")
    ] = None,
    users: Annotated[
        Path | None, typer.Option(help="Users table for --format table (id and attributes).")
    ] = None,
    min_user: Annotated[
        int, typer.Option(help="k-core: minimum interactions per user (iterated with --min-item).")
    ] = 5,
    min_item: Annotated[int, typer.Option(help="k-core: minimum interactions per item.")] = 5,
    rating_threshold: Annotated[
        float | None,
        typer.Option(
            help="Keep only ratings >= this value (implicit feedback). Default: keep all."
        ),
    ] = None,
    dedup: Annotated[
        bool, typer.Option(help="Remove exact duplicate interactions (first one kept).")
    ] = True,
    periods: Annotated[
        str,
        typer.Option(
            help="Chronological periods: fractions summing to 1 (period 0 = initial training, "
            "last = test) or N equal slices."
        ),
    ] = "0.5,0.1,0.1,0.1,0.1,0.1",
    append: Annotated[
        Path | None,
        typer.Option(
            help="Add these logs as a new period to an existing workspace (ids of known users "
            "and items kept; --format and --columns describe them). Takes the workspace lock."
        ),
    ] = None,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Read raw logs, filter them, give users and items dense ids and split time into periods.

    Writes data/interactions.parquet, data/items.parquet, data/users.parquet and
    data/dataset.json. Without --source it reads the embedded MovieLens-100K.
    """
    params = dict(locals())
    from coea_cli.data.run import run_prepare

    common.run("prepare", params, run_prepare)


__all__ = ["Ctx", "cli"]
