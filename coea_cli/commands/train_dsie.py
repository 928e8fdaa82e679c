"""`coea train-dsie`: the dual-branch sequence encoder; user states and serving keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coea_cli import common
from coea_cli.common import Config, Device, Force, Json, Seed, Work


def cli(
    protocol: Annotated[
        str,
        typer.Option(
            help="pipeline: train on everything before the test period, validate on each "
            "user's last such interaction (writes dsie/). loo: leave-one-out over the full "
            "sequences (last item test, second-last validation) for comparison with the "
            "literature (writes dsie-loo/)."
        ),
    ] = "pipeline",
    compare: Annotated[
        bool,
        typer.Option(
            help="Also train the ablations (short-only, long-only without group, no group) "
            "and score popularity on the same split; all go into report.json."
        ),
    ] = False,
    branches: Annotated[
        str,
        typer.Option(
            help="both (DSIE), short (one causal encoder over the recent window: SASRec-like) "
            "or long (one causal encoder over the last --long-len items)."
        ),
    ] = "both",
    group: Annotated[
        bool,
        typer.Option(
            "--group/--no-group",
            help="Group token (projected persona embedding) and group-consistency loss in the "
            "long-term branch.",
        ),
    ] = True,
    item_embedding: Annotated[
        bool,
        typer.Option(
            "--item-embedding/--no-item-embedding",
            help="Add an item-id embedding to the sum of SID level embeddings.",
        ),
    ] = True,
    hidden: Annotated[int, typer.Option(help="Hidden size of tokens and states.")] = 64,
    heads: Annotated[int, typer.Option(help="Attention heads (head size 16..128).")] = 2,
    long_layers: Annotated[int, typer.Option(help="Blocks of the long-term encoder.")] = 2,
    short_layers: Annotated[int, typer.Option(help="Blocks of the short-term encoder.")] = 1,
    long_len: Annotated[int, typer.Option(help="T_L: items read by the long-term branch.")] = 200,
    short_len: Annotated[
        int, typer.Option(help="T_S: window of the short-term branch (most recent items).")
    ] = 10,
    dropout: Annotated[float, typer.Option(help="Dropout on embeddings and blocks.")] = 0.2,
    epochs: Annotated[int, typer.Option(help="Most training epochs.")] = 25,
    batch_size: Annotated[int, typer.Option(help="Sequences per global batch.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (after warmup).")] = 1e-3,
    weight_decay: Annotated[
        float, typer.Option(help="AdamW weight decay on linear weights.")
    ] = 0.01,
    warmup: Annotated[int, typer.Option(help="Linear learning-rate warmup steps.")] = 50,
    patience: Annotated[
        int,
        typer.Option(help="Early stopping: evaluations without a better validation metric."),
    ] = 8,
    eval_every: Annotated[int, typer.Option(help="Validate every this many epochs.")] = 1,
    early_stop_metric: Annotated[
        str,
        typer.Option(
            help="Validation metric for early stopping and the kept weights: ndcg (no cut-off, "
            "uses every user's rank: least noisy), mrr, ndcg@10, hr@10, ndcg@20 or hr@20."
        ),
    ] = "ndcg",
    group_weight: Annotated[
        float, typer.Option(help="Weight of the group-consistency loss.")
    ] = 0.1,
    cluster_weight: Annotated[
        float, typer.Option(help="Weight of the auxiliary next-cluster losses (per SID level).")
    ] = 0.1,
    sampled_softmax_above: Annotated[
        int,
        typer.Option(
            help="Catalogues with more items than this use sampled softmax (--negatives "
            "uniform negatives shared by a batch) instead of the full softmax."
        ),
    ] = 50_000,
    negatives: Annotated[int, typer.Option(help="Negatives of the sampled softmax.")] = 1024,
    recent: Annotated[
        int, typer.Option(help="Distinct recent level-1 clusters in each user's serving key.")
    ] = 5,
    backend: Annotated[
        str,
        typer.Option(
            help="Attention backend of the long-term branch: auto (Triton on CUDA), triton, torch."
        ),
    ] = "auto",
    out: Annotated[
        str | None,
        typer.Option(help="Output folder name in the workspace (default dsie, or dsie-loo)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from the last epoch checkpoint (checkpoints/<out>/): model, "
            "optimizer, scheduler, RNG and epoch."
        ),
    ] = False,
    work: Work = Path("coea-work"),
    config: Config = None,
    seed: Seed = 0,
    device: Device = "auto",
    force: Force = False,
    json_out: Json = False,
) -> None:
    """Train DSIE on the SID-embedded histories; write user states and serving keys.

    Reads data/, sids/ and groups/; writes dsie/dsie.safetensors, dsie/config.json,
    dsie/user_states.safetensors ("long", "short", "fused" [U, h], "user_id"),
    dsie/user_keys.parquet (user_id, group, recent_clusters, familiar_clusters) and
    dsie/report.json. Runs under torchrun (DDP) too.
    """
    params = dict(locals())
    from coea_cli.dsie.run import run_train_dsie

    common.run("train-dsie", params, run_train_dsie)
