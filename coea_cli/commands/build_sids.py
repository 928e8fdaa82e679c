"""`coea build-sids`: item vectors -> RQ-VAE Collaborative Semantic IDs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    method: Annotated[
        str,
        typer.Option(
            help="rqvae (MLP encoder/decoder + residual codebooks) or rq-kmeans "
            "(residual k-means on the vectors, fast baseline)."
        ),
    ] = "rqvae",
    levels: Annotated[
        int, typer.Option(help="Number of code levels L (before the dedup level).")
    ] = 3,
    codebook_size: Annotated[
        str,
        typer.Option(
            help="Codes per level: auto, K, or K1,...,KL. auto = 2^round(log2(sqrt(N))) clipped "
            "to [2, 256] (1,349 items -> 32; 100,000 -> 256)."
        ),
    ] = "auto",
    embedding: Annotated[
        str,
        typer.Option(
            help="Which tensor of item_emb.safetensors to quantise: fused, content or collab."
        ),
    ] = "fused",
    embeddings: Annotated[
        Path | None,
        typer.Option(help="Item embedding file. Default: WORK/items/item_emb.safetensors."),
    ] = None,
    latent_dim: Annotated[int, typer.Option(help="RQ-VAE latent dimension.")] = 32,
    hidden: Annotated[
        str, typer.Option(help="RQ-VAE encoder hidden widths (the decoder mirrors them).")
    ] = "256,128",
    epochs: Annotated[
        str,
        typer.Option(
            help="RQ-VAE maximum training epochs, or auto = ceil(150000 / N) clipped to "
            "[10, 200] (1,349 items -> 112; 100,000 -> 10)."
        ),
    ] = "auto",
    patience: Annotated[
        int,
        typer.Option(help="Stop when reconstruction loss has not improved for this many epochs."),
    ] = 10,
    batch_size: Annotated[int, typer.Option(help="RQ-VAE batch size.")] = 512,
    lr: Annotated[float, typer.Option(help="RQ-VAE learning rate (Adam).")] = 2e-3,
    beta: Annotated[float, typer.Option(help="Commitment loss weight.")] = 0.25,
    init_sample: Annotated[
        int, typer.Option(help="Items sampled for the k-means initialisation of each codebook.")
    ] = 20_000,
    cpu_threads: Annotated[
        int,
        typer.Option(
            help="CPU threads for RQ-VAE training and k-means (0 = library default). One is "
            "fastest for these small matrices, above all on a busy machine."
        ),
    ] = 1,
    rebalance: Annotated[
        bool,
        typer.Option(
            help="Rebalance colliding items across last-level codes before the dedup level."
        ),
    ] = True,
    rebalance_candidates: Annotated[
        int, typer.Option(help="Last-level codes (nearest to an item's residual) it may move to.")
    ] = 16,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Quantise item vectors into L levels of codes plus a dedup level: one unique SID per item.

    Reads items/item_emb.safetensors, data/items.parquet and data/interactions.parquet;
    writes sids/sids.parquet, rqvae.safetensors, sid_index.lmdb, clusters.parquet and
    report.json. The level-1 code (optionally 1+2) is an item's interest cluster.
    """
    params = dict(locals())
    from coea_cli.sids.run import run_build_sids

    common.run("build-sids", params, run_build_sids)
