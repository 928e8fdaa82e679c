"""The `train-dsie` command: split, train (or resume), evaluate, write the model and states."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from coea_cli import console, store
from coea_cli.common import Ctx
from coea_cli.dist import close, init_distributed
from coea_cli.dsie.baselines import item_counts, popularity_metrics
from coea_cli.dsie.data import Split, loo_split, pipeline_split, training_windows
from coea_cli.dsie.infer import encode_histories, evaluate_ranking, grow
from coea_cli.dsie.model import DSIE, DSIEConfig
from coea_cli.dsie.train import TrainConfig, Trainer, fingerprint
from coea_cli.errors import BadInput
from coea_cli.options import DsieOptions, Protocol
from coea_cli.workspace import Dir, History, UserSequences, Workspace, check_name

COMMAND = "train-dsie"
# Ablations trained by --compare, as overrides of the main options.
VARIANTS = {
    "short-only (SASRec, last short-len items)": {"branches": "short", "use_group": False},
    "long-only, no group (SASRec, last long-len items)": {"branches": "long", "use_group": False},
    "DSIE --no-group": {"branches": "both", "use_group": False},
}


@dataclass
class Inputs:
    """What training reads from the workspace."""

    history: History
    groups: np.ndarray  # [U] group of each user
    persona: np.ndarray  # [G, d]
    codes: np.ndarray  # [N, L+1]
    sid_version: str
    cutoff: int  # pipeline protocol: nothing from this period on is read
    init: dict | None = None  # weights to start from (--init-from)


def run_train_dsie(ctx: Ctx[DsieOptions]) -> dict | None:
    rank, world, device = init_distributed(ctx.device)
    try:
        return _run(ctx, rank, world, device)
    finally:
        close(world)


def _run(ctx: Ctx[DsieOptions], rank: int, world: int, device: str) -> dict | None:
    o = ctx.opts
    ws = ctx.ws
    test = int(ws.dataset()["test_period"])
    cutoff = test if o.cutoff is None else o.cutoff
    if cutoff > test:
        raise BadInput(f"--cutoff {cutoff}: the last period is {test}")
    name = o.out or ("dsie-loo" if o.protocol == Protocol.loo else ws.dsie_name(cutoff))
    data = _inputs(ws, cutoff)  # missing artifacts / users without a group -> exit 2
    data.init = _init_weights(ws, o.init_from, data.sid_version)
    out = ws.dsie(name)
    paths = [ws.data.require("interactions"), ws.data.require("dataset")]
    paths += [ws.sids_dir.require("sids"), ws.groups_dir.require("groups")]
    paths += [ws.groups_dir.require("emb")]
    st = ctx.stage(out.path, paths)
    if ctx.fresh(st):
        report = store.read_json(out.file("report"))
        return {"status": "up to date", **report["summary"]}
    split, seqs_for_states = _split(o.protocol, data.history, cutoff)
    torch.manual_seed(ctx.seed)
    model_cfg = DSIEConfig.from_options(
        o, data.history.n_items, ws.sids().layout, data.persona.shape
    )
    train_cfg = TrainConfig.from_options(o, ctx.seed)
    if rank == 0:
        console.log(split.description)
        console.log(
            f"{len(split.val)} validation users"
            + (f", {len(split.test)} test users" if split.test is not None else "")
            + f"; device {device}"
            + (f", {world} processes" if world > 1 else "")
        )
    fp = fingerprint(
        inputs=st.input_hashes(),
        model=model_cfg.to_dict(),
        protocol=str(o.protocol),
        seed=ctx.seed,
        train={
            k: v
            for k, v in asdict(train_cfg).items()
            if k not in ("epochs", "patience", "eval_every")
        },
    )
    main = _train_one(
        "dsie", model_cfg, train_cfg, data, split, device,
        ckpt_dir=ws.checkpoints(name), fp=fp, resume=o.resume, rank=rank, world=world,
    )  # fmt: skip
    report = _report(o, split, data.history, main, model_cfg, train_cfg)
    if o.compare:
        report["compare"] = _compare(model_cfg, train_cfg, data, split, device, rank, world, main)
        if rank == 0:
            _print_table(report)
    if rank != 0:
        return None  # only rank 0 writes and reports
    model = main["model"]
    users = np.arange(data.history.n_users, dtype=np.int64)
    states = encode_histories(model, [seqs_for_states.of(u) for u in users], users, data.groups)
    with st.write() as tmp:
        _write(out, tmp, model, model_cfg, train_cfg, o, states, report, data)
    return {"status": "written", **report["summary"]}


def _inputs(ws: Workspace, cutoff: int) -> Inputs:
    """The history, each user's group at the cutoff, personas and SIDs."""
    sids = ws.sids()
    persona = ws.persona_embeddings()
    groups = ws.groups().at(cutoff)
    return Inputs(ws.history(), groups, persona, sids.codes, sids.version, cutoff)


def _init_weights(ws: Workspace, name: str | None, sid_version: str) -> dict | None:
    """The weights of DSIE folder `name` (--init-from), trained on the same SID version."""
    if name is None:
        return None
    recorded = ws.dsie_config(check_name("--init-from", name)).get("sid_version")
    if recorded != sid_version:
        raise BadInput(
            f"--init-from {name}: trained on SID version {recorded}, sids/ holds {sid_version} "
            "(after `build-sids --rebuild`, train from scratch)"
        )
    return ws.dsie_weights(name)


def _split(protocol: Protocol, h: History, cutoff: int) -> tuple[Split, UserSequences]:
    """The split, and the sequences the written user states are computed from."""
    if protocol == Protocol.pipeline:
        seqs = h.before(cutoff)
        label = "the test period" if cutoff == h.test_period else f"period {cutoff}"
        return pipeline_split(seqs, label), seqs
    full = h.before(None)
    # states from everything but each user's held-out test item
    ptr, items = full.ptr, full.items
    keep = np.ones(len(items), dtype=bool)
    lengths = np.diff(ptr)
    keep[ptr[1:][lengths >= 3] - 1] = False
    new_ptr = np.concatenate([[0], np.cumsum(lengths - (lengths >= 3))]).astype(np.int64)
    return loo_split(full), UserSequences(new_ptr, items[keep])


def _train_one(
    label, model_cfg, train_cfg, data: Inputs, split, device,
    ckpt_dir=None, fp=None, resume=False, rank=0, world=1,
) -> dict:  # fmt: skip
    """Build, train and evaluate one model; returns the model and its metrics."""
    torch.manual_seed(train_cfg.seed)
    model = DSIE(model_cfg, torch.as_tensor(data.codes), torch.as_tensor(data.persona))
    if data.init is not None:
        grow(data.init, model)
    model = model.to(device)
    windows = training_windows(split.train, model_cfg.long_len)
    if len(windows) == 0:
        raise BadInput("no user has two training interactions: nothing to train on")
    groups = data.groups

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


def _report(o: DsieOptions, split, history: History, main, model_cfg, train_cfg) -> dict:
    pop = _popularity(split, history.n_items)
    where = "test" if split.test is not None else "val"
    summary = {
        "protocol": str(o.protocol),
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


def _compare(model_cfg, train_cfg, data: Inputs, split, device, rank, world, main) -> dict:
    """Popularity, the ablations and the main model on the same split."""
    rows = {"popularity": _popularity(split, data.history.n_items)}
    for label, override in VARIANTS.items():
        cfg = replace(model_cfg, **override)
        if cfg == model_cfg:
            continue
        if rank == 0:
            console.log(f"--compare: training {label}")
        rows[label] = _row(
            _train_one(label, cfg, train_cfg, data, split, device, rank=rank, world=world)
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


def _write(out: Dir, folder: Path, model: DSIE, model_cfg, train_cfg, o, states, report, data):
    """dsie.safetensors, config.json (with the SID version), user_states.safetensors (as of
    the test period for the pipeline protocol), report.json."""
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out.file("model", folder)))
    h = data.history
    states_at = data.cutoff if o.protocol == Protocol.pipeline else None
    store.write_json(
        out.file("config", folder),
        {
            "model": model_cfg.to_dict(),
            "train": asdict(train_cfg),
            "protocol": str(o.protocol),
            "cutoff": data.cutoff if o.protocol == Protocol.pipeline else None,
            "sid_version": data.sid_version,
        },
    )
    store.write_tensors(
        out.file("states", folder),
        {**states, "user_id": np.arange(len(states["fused"]), dtype=np.int32)},
        metadata={
            "protocol": str(o.protocol),
            "hidden": model_cfg.hidden,
            "before_period": states_at,
            "interactions": len(h.users),
        },
    )
    store.write_json(out.file("report", folder), report)
