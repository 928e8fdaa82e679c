"""The `train-dsie` command: split, train (or resume), evaluate, write states and keys."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from coea_cli import console, store
from coea_cli.common import Ctx, skip_if_fresh
from coea_cli.data.run import data_paths
from coea_cli.dsie.baselines import item_counts, popularity_metrics
from coea_cli.dsie.data import PROTOCOLS, Split, loo_split, pipeline_split, training_windows
from coea_cli.dsie.keys import (
    Tables,
    encode_histories,
    evaluate_ranking,
    keys_from_sequences,
    load_tables,
)
from coea_cli.dsie.model import BRANCHES, DSIE, DSIEConfig
from coea_cli.dsie.train import TrainConfig, Trainer, fingerprint, init_distributed
from coea_cli.errors import BadInput
from coea_cli.groups.run import group_paths, load_groups, load_item_codes, sid_paths

COMMAND = "train-dsie"
STOP_METRICS = ("ndcg", "mrr", "ndcg@10", "hr@10", "ndcg@20", "hr@20")
# Options that change how the command runs, not what it writes.
NOT_RECORDED = ("resume",)
# Ablations trained by --compare, as overrides of the main options.
VARIANTS = {
    "short-only (SASRec, last short-len items)": {"branches": "short", "use_group": False},
    "long-only, no group (SASRec, last long-len items)": {"branches": "long", "use_group": False},
    "DSIE --no-group": {"branches": "both", "use_group": False},
}


def out_name(o: dict) -> str:
    return o["out"] or ("dsie" if o["protocol"] == "pipeline" else "dsie-loo")


def _check(o: dict) -> None:
    if o["protocol"] not in PROTOCOLS:
        raise BadInput(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    if o["branches"] not in BRANCHES:
        raise BadInput(f"--branches must be one of {', '.join(BRANCHES)}")
    if o["backend"] not in ("auto", "triton", "torch"):
        raise BadInput("--backend must be auto, triton or torch")
    positive = ("epochs", "batch_size", "hidden", "heads", "long_len", "short_len", "eval_every")
    positive += ("patience", "negatives", "recent")
    for name in positive:
        if o[name] < 1:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 1 (got {o[name]})")
    if o["hidden"] % o["heads"] or not 16 <= o["hidden"] // o["heads"] <= 128:
        raise BadInput("--hidden / --heads must be a whole head size between 16 and 128")
    if not 0 <= o["dropout"] < 1:
        raise BadInput("--dropout must be in [0, 1)")
    if o["lr"] <= 0:
        raise BadInput("--lr must be > 0")
    if o["early_stop_metric"] not in STOP_METRICS:
        raise BadInput(f"--early-stop-metric must be one of {', '.join(STOP_METRICS)}")


def run_train_dsie(ctx: Ctx) -> dict | None:
    _check(ctx.options)
    rank, world, device = init_distributed(ctx.torch_device())
    try:
        return _run(ctx, rank, world, device)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _run(ctx: Ctx, rank: int, world: int, device: str) -> dict | None:
    o = ctx.options
    tables = load_tables(ctx.work)  # missing artifacts / users without a group -> exit 2
    _, persona = load_groups(ctx.work, tables.n_users)
    codes = load_item_codes(ctx.work, tables.n_items)
    name = out_name(o)
    folder = ctx.work / name
    recorded = {k: v for k, v in o.items() if k not in NOT_RECORDED}
    inputs = _inputs(ctx.work)
    st = store.Stage(folder, COMMAND, recorded, inputs, ctx.seed)
    if skip_if_fresh(ctx, st.up_to_date(), str(folder)):
        report = store.read_json(folder / "report.json")
        return {"status": "up to date", **report["summary"]}
    split, seqs_for_states = _split(o["protocol"], tables)
    torch.manual_seed(ctx.seed)
    model_cfg = _model_config(o, tables, codes, persona)
    train_cfg = _train_config(o, ctx.seed)
    if rank == 0:
        console.log(split.description)
        console.log(
            f"{len(split.val)} validation users"
            + (f", {len(split.test)} test users" if split.test is not None else "")
            + f"; device {device}"
            + (f", {world} processes" if world > 1 else "")
        )
    fp = fingerprint(
        inputs={str(p): store.sha256_path(p) for p in inputs},
        model=model_cfg.to_dict(),
        protocol=o["protocol"],
        seed=ctx.seed,
        train={
            k: v
            for k, v in asdict(train_cfg).items()
            if k not in ("epochs", "patience", "eval_every")
        },
    )
    ckpt = ctx.work / "checkpoints" / name
    main = _train_one(
        "dsie", model_cfg, train_cfg, codes, persona, split, tables, device,
        ckpt_dir=ckpt, fp=fp, resume=o["resume"], rank=rank, world=world,
    )  # fmt: skip
    report = _report(o, split, tables, main, model_cfg, train_cfg)
    if o["compare"]:
        report["compare"] = _compare(
            o, model_cfg, train_cfg, codes, persona, split, tables, device, rank, world, main
        )
        if rank == 0:
            _print_table(report)
    if rank != 0:
        return None  # only rank 0 writes and reports
    model = main["model"]
    histories = [seqs_for_states.of(u) for u in range(tables.n_users)]
    users = np.arange(tables.n_users, dtype=np.int64)
    states = encode_histories(model, histories, users, tables.groups)
    keys = keys_from_sequences(seqs_for_states, tables.groups, tables.item_cluster, o["recent"])
    with store.stage(folder, COMMAND, recorded, inputs, ctx.seed) as stg:
        _write(stg.tmp, model, model_cfg, train_cfg, o, states, keys, report)
    return {"status": "written", **report["summary"]}


def _inputs(work: Path) -> list[Path]:
    d, s, g = data_paths(work), sid_paths(work), group_paths(work)
    return [d["interactions"], d["dataset"], s["sids"], g["groups"], g["emb"]]


def _split(protocol: str, t: Tables) -> tuple[Split, object]:
    """The split, and the sequences the written user states and keys are computed from."""
    if protocol == "pipeline":
        seqs = t.sequences(t.test_period)
        return pipeline_split(seqs), seqs
    full = t.sequences(None)
    # states and keys from everything but each user's held-out test item
    ptr, items = full.ptr, full.items
    keep = np.ones(len(items), dtype=bool)
    lengths = np.diff(ptr)
    keep[ptr[1:][lengths >= 3] - 1] = False
    new_ptr = np.concatenate([[0], np.cumsum(lengths - (lengths >= 3))]).astype(np.int64)
    from coea_cli.dsie.data import UserSequences

    return loo_split(full), UserSequences(new_ptr, items[keep])


def _model_config(o: dict, t: Tables, codes: np.ndarray, persona: np.ndarray) -> DSIEConfig:
    return DSIEConfig(
        n_items=t.n_items,
        code_sizes=[int(c) + 1 for c in codes.max(axis=0)],
        levels=codes.shape[1] - 1 if codes.shape[1] > 1 else 1,
        n_groups=int(persona.shape[0]),
        persona_dim=int(persona.shape[1]),
        hidden=o["hidden"],
        heads=o["heads"],
        long_layers=o["long_layers"],
        short_layers=o["short_layers"],
        long_len=o["long_len"],
        short_len=o["short_len"],
        dropout=o["dropout"],
        item_embedding=o["item_embedding"],
        branches=o["branches"],
        use_group=o["group"],
        backend=o["backend"],
    )


def _train_config(o: dict, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        lr=o["lr"],
        weight_decay=o["weight_decay"],
        warmup=o["warmup"],
        patience=o["patience"],
        eval_every=o["eval_every"],
        group_weight=o["group_weight"],
        cluster_weight=o["cluster_weight"],
        sampled_above=o["sampled_softmax_above"],
        negatives=o["negatives"],
        seed=seed,
        metric=o["early_stop_metric"],
    )


def _train_one(
    label, model_cfg, train_cfg, codes, persona, split, tables, device,
    ckpt_dir=None, fp=None, resume=False, rank=0, world=1,
) -> dict:  # fmt: skip
    """Build, train and evaluate one model; returns the model and its metrics."""
    torch.manual_seed(train_cfg.seed)
    model = DSIE(model_cfg, torch.as_tensor(codes), torch.as_tensor(persona)).to(device)
    windows = training_windows(split.train, model_cfg.long_len)
    if len(windows) == 0:
        raise BadInput("no user has two training interactions: nothing to train on")
    groups = tables.groups

    def validate(m):
        return evaluate_ranking(m, split.val, groups)

    trainer = Trainer(
        model, windows, groups, train_cfg, validate, device=device, ckpt_dir=ckpt_dir,
        fingerprint=fp, rank=rank, world=world, label=label,
    )  # fmt: skip
    start = time.perf_counter()
    fit = trainer.fit(resume=resume)
    result = {
        "model": model,
        "fit": fit,
        "seconds": round(time.perf_counter() - start, 2),
        "windows": len(windows),
        "val": evaluate_ranking(model, split.val, groups),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if split.test is not None:
        result["test"] = evaluate_ranking(model, split.test, groups)
    return result


def _popularity(split: Split, n_items: int) -> dict:
    out = {"val": popularity_metrics(item_counts(split.train, n_items), split.val)}
    if split.test is not None:
        counts = item_counts(split.train, n_items) + np.bincount(
            split.val.target, minlength=n_items
        )
        out["test"] = popularity_metrics(counts, split.test)
    return out


def _row(r: dict) -> dict:
    row = {"val": r["val"], "epochs": r["fit"]["epochs"], "best_epoch": r["fit"]["best_epoch"]}
    row["train_seconds"] = r["fit"]["train_seconds"]
    if "test" in r:
        row["test"] = r["test"]
    return row


def _report(o, split, tables, main, model_cfg, train_cfg) -> dict:
    pop = _popularity(split, tables.n_items)
    where = "test" if split.test is not None else "val"
    summary = {
        "protocol": o["protocol"],
        "evaluated_on": where,
        "users": int(main[where]["users"]),
        "hr@10": main[where]["hr@10"],
        "ndcg@10": main[where]["ndcg@10"],
        "popularity_hr@10": pop[where]["hr@10"],
        "popularity_ndcg@10": pop[where]["ndcg@10"],
        "epochs": main["fit"]["epochs"],
        "best_epoch": main["fit"]["best_epoch"],
        "train_seconds": main["fit"]["train_seconds"],
    }
    seq_s = [h["sequences_per_s"] for h in main["fit"]["history"]]
    return {
        "summary": summary,
        "protocol": split.description,
        "metrics": {k: main[k] for k in ("val", "test") if k in main},
        "popularity": pop,
        "model": model_cfg.to_dict(),
        "parameters": main["parameters"],
        "train": asdict(train_cfg),
        "training": {
            "windows": main["windows"],
            "sequences_per_s": round(float(np.median(seq_s)), 1) if seq_s else None,
            **main["fit"],
        },
    }


def _compare(
    o, model_cfg, train_cfg, codes, persona, split, tables, device, rank, world, main
) -> dict:
    """Popularity, the ablations and the main model on the same split."""
    rows = {"popularity": _popularity(split, tables.n_items)}
    for label, override in VARIANTS.items():
        cfg = replace(model_cfg, **override)
        if cfg == model_cfg:
            continue
        if rank == 0:
            console.log(f"--compare: training {label}")
        rows[label] = _row(
            _train_one(
                label, cfg, train_cfg, codes, persona, split, tables, device, rank=rank, world=world
            )
        )
    rows["DSIE (these options)"] = _row(main)
    return rows


def _print_table(report: dict) -> None:
    where = "test" if "test" in report["metrics"] else "val"
    console.log(f"Protocol: {report['protocol']}")
    console.log(
        f"{'model':52s} {'HR@10':>8s} {'NDCG@10':>8s} {'HR@20':>8s} {'NDCG@20':>8s}  ({where})"
    )
    for name, row in report["compare"].items():
        m = row[where]
        console.log(
            f"{name:52s} {m['hr@10']:8.4f} {m['ndcg@10']:8.4f} {m['hr@20']:8.4f} {m['ndcg@20']:8.4f}"
        )


def _write(folder: Path, model: DSIE, model_cfg, train_cfg, o, states, keys, report) -> None:
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "dsie.safetensors"))
    store.write_json(
        folder / "config.json",
        {
            "model": model_cfg.to_dict(),
            "train": asdict(train_cfg),
            "protocol": o["protocol"],
            "recent": o["recent"],
        },
    )
    store.write_tensors(
        folder / "user_states.safetensors",
        {**states, "user_id": np.arange(len(states["fused"]), dtype=np.int32)},
        metadata={"protocol": o["protocol"], "hidden": model_cfg.hidden},
    )
    store.write_parquet(folder / "user_keys.parquet", keys)
    store.write_json(folder / "report.json", report)
