"""DSIE benchmarks on a workspace after `prepare`, `build-sids` and `profile-groups`.

    python bench/dsie.py --work /tmp/ml                 # CPU training throughput
    python bench/dsie.py --work /tmp/ml --gpu           # + epoch time, Triton vs SDPA (CUDA)
    python bench/dsie.py --work /tmp/ml --quality --seeds 0,1,2,3,4 --jobs 2 --quality-only
                                                        # + leave-one-out comparison table
    python bench/dsie.py ... --json PATH                # also write the results as JSON

Throughput: one training epoch of the default model (train-dsie defaults) on the pipeline
split; sequences/s = training windows per second (a window = up to long_len + 1 items of one
user), targets/s = predicted next items per second; CPU seconds of the process are reported
beside wall seconds because a shared machine slows the wall clock.
GPU: the same model with backend="triton" and backend="torch" (SDPA with a padding mask) for
the long-term branch, bf16 autocast, one warm-up epoch, then the median of 3 epochs each.
Quality: runs `coea train-dsie --protocol loo` for each of --seeds (model initialisation and
batch order) and each of --models (full DSIE, short-only, long-only without group, DSIE
--no-group; `--jobs` runs at once) and prints popularity and the mean and standard deviation
over seeds, protocol first, then DSIE minus short-only and minus --no-group paired over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coea_cli.dsie.data import pipeline_split, training_windows
from coea_cli.dsie.infer import encode_histories
from coea_cli.dsie.model import DSIE, DSIEConfig
from coea_cli.dsie.train import TrainConfig, Trainer
from coea_cli.options import DsieOptions
from coea_cli.workspace import Workspace


def build(work: Path, device: str, backend: str = "auto"):
    """The default model (train-dsie's defaults) on the pipeline split of a workspace."""
    ws = Workspace(work)
    h, sids, persona = ws.history(), ws.sids(), ws.persona_embeddings()
    groups = ws.groups().at(h.test_period)
    split = pipeline_split(h.before(h.test_period))
    opts = DsieOptions(backend=backend)
    cfg = DSIEConfig.from_options(opts, h.n_items, sids.layout, persona.shape)
    torch.manual_seed(0)
    model = DSIE(cfg, torch.as_tensor(sids.codes), torch.as_tensor(persona)).to(device)
    windows = training_windows(split.train, cfg.long_len)
    return h, groups, split, model, windows


def _no_eval(model) -> dict:
    return {"ndcg": 0.0, "ndcg@10": 0.0, "hr@10": 0.0}


def cpu_throughput(work: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    h, groups, _, model, windows = build(work, "cpu")
    cfg = TrainConfig.from_options(DsieOptions(), seed=0)
    trainer = Trainer(model, windows, groups, cfg, _no_eval, label="bench")
    wall, cpu = time.perf_counter(), time.process_time()
    stats = trainer.train_epoch()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    targets = int((windows.lengths() - 1).sum())
    t0 = time.perf_counter()
    users = np.arange(h.n_users)
    seqs = h.before(h.test_period)
    encode_histories(model, [seqs.of(u) for u in users], users, groups)
    enc = time.perf_counter() - t0
    return {
        "threads": threads,
        "windows": len(windows),
        "targets": targets,
        "epoch_wall_s": round(wall, 2),
        "epoch_cpu_s": round(cpu, 2),
        "sequences_per_s": round(len(windows) / wall, 1),
        "sequences_per_cpu_s": round(len(windows) / cpu, 1),
        "targets_per_s": round(targets / wall),
        "loss": round(stats["loss"], 4),
        "encode_users_per_s": round(len(users) / enc, 1),
        "load_average": os.getloadavg(),
    }


def gpu_epochs(work: Path, repeats: int = 3) -> dict:
    out = {"device": torch.cuda.get_device_name()}
    for backend in ("torch", "triton"):
        _, groups, _, model, windows = build(work, "cuda", backend)
        cfg = TrainConfig.from_options(DsieOptions(), seed=0)
        trainer = Trainer(model, windows, groups, cfg, _no_eval, device="cuda", label=backend)
        trainer.train_epoch()  # warm-up (Triton compilation, allocator)
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            stats = trainer.train_epoch()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[backend] = {
            "epoch_s": round(statistics.median(times), 3),
            "sequences_per_s": round(len(windows) / statistics.median(times), 1),
            "loss": round(stats["loss"], 4),
        }
    out["triton_speedup"] = round(out["torch"]["epoch_s"] / out["triton"]["epoch_s"], 3)
    return out


MODELS = {  # --models: name -> (row label, train-dsie options over the defaults)
    "full": ("DSIE (these options)", []),
    "short": ("short-only (SASRec, last short-len items)", ["--branches", "short", "--no-group"]),
    "long": ("long-only, no group (SASRec, last long-len items)",
             ["--branches", "long", "--no-group"]),
    "nogroup": ("DSIE --no-group", ["--no-group"]),
}  # fmt: skip


def quality(work: Path, extra: list[str], seeds: list[int], jobs: int, models: list[str]) -> dict:
    """`train-dsie --protocol loo` once per (seed, model) (into dsie-loo-MODEL-s<seed>/), `jobs`
    at a time (one thread each when jobs > 1); the table shows the mean and standard deviation
    over seeds, the protocol first."""
    procs, reports = [], {}
    env = dict(os.environ, OMP_NUM_THREADS="1") if jobs > 1 else None
    t0 = time.perf_counter()
    runs = [(seed, m) for seed in seeds for m in models]
    for seed, m in runs:
        cmd = [sys.executable, "-m", "coea_cli", "train-dsie", "--work", str(work)]
        cmd += ["--protocol", "loo", "--seed", str(seed), "--out", f"dsie-loo-{m}-s{seed}"]
        cmd += [*MODELS[m][1], "--json", *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
        if len(procs) >= jobs:
            _wait(procs.pop(0))
    for p in procs:
        _wait(p)
    seconds = time.perf_counter() - t0
    for seed, m in runs:
        reports[seed, m] = json.loads((work / f"dsie-loo-{m}-s{seed}" / "report.json").read_text())
    first = reports[runs[0]]
    print(f"Protocol: {first['protocol']}")
    print(f"Seeds: {seeds}; mean +- standard deviation over seeds (test = last item per user)")
    print(f"{'model':52s} {'HR@10':>16s} {'NDCG@10':>16s} {'epochs':>7s} {'train s':>8s}")
    pop = first["popularity"]["test"]
    rows = {"popularity": {"hr@10_mean": pop["hr@10"], "ndcg@10_mean": pop["ndcg@10"]}}
    print(f"{'popularity':52s} {pop['hr@10']:7.4f}{'':9s} {pop['ndcg@10']:7.4f}")
    for m in models:
        name = MODELS[m][0]
        per = [reports[s, m]["summary"] for s in seeds]
        hr = np.array([r["hr@10"] for r in per])
        nd = np.array([r["ndcg@10"] for r in per])
        ep = np.mean([r["epochs"] for r in per])
        secs = np.mean([r["train_seconds"] for r in per])
        rows[name] = {
            "hr@10": hr.tolist(),
            "ndcg@10": nd.tolist(),
            "hr@10_mean": round(float(hr.mean()), 4),
            "hr@10_sd": round(float(hr.std(ddof=1)) if len(hr) > 1 else 0.0, 4),
            "ndcg@10_mean": round(float(nd.mean()), 4),
            "ndcg@10_sd": round(float(nd.std(ddof=1)) if len(nd) > 1 else 0.0, 4),
            "epochs_mean": round(float(ep), 1),
            "train_seconds_mean": round(float(secs), 1),
        }
        r = rows[name]
        print(
            f"{name:52s} {r['hr@10_mean']:7.4f} +- {r['hr@10_sd']:.4f} "
            f"{r['ndcg@10_mean']:7.4f} +- {r['ndcg@10_sd']:.4f} {ep:7.1f} {secs:8.1f}"
        )
    paired = {}
    for label, m in (("short-only", "short"), ("no-group", "nogroup")):
        d = paired_difference(rows, MODELS["full"][0], MODELS[m][0])
        if d:
            paired[f"dsie_minus_{label}"] = d
            print(
                f"DSIE minus {label}, NDCG@10 paired over seeds: {d['mean']:+.4f} "
                f"(95% t interval {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f}, {d['seeds']} seeds)"
            )
    return {
        "protocol": first["protocol"],
        "seeds": seeds,
        "rows": rows,
        "paired": paired,
        "seconds": round(seconds, 1),
    }


def paired_difference(rows: dict, a: str, b: str, key: str = "ndcg@10") -> dict | None:
    """Mean of a - b over seeds (same seed = same split and initialisation) with a 95% t
    interval."""
    if a not in rows or b not in rows or len(rows[a][key]) < 2:
        return None
    from scipy.stats import t

    d = np.array(rows[a][key]) - np.array(rows[b][key])
    half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
            "seeds": len(d), "per_seed": d.tolist()}  # fmt: skip


def _wait(proc: subprocess.Popen) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"train-dsie failed (exit {proc.returncode}): {proc.args}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--gpu", action="store_true", help="also time Triton vs SDPA epochs (CUDA)")
    ap.add_argument("--quality", action="store_true", help="also run the leave-one-out comparison")
    ap.add_argument("--train-args", default="", help="extra train-dsie options for --quality")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds for --quality")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at once for --quality")
    ap.add_argument(
        "--models",
        default="full,short,long,nogroup",
        help=f"comma-separated, of {', '.join(MODELS)}, for --quality",
    )
    ap.add_argument("--quality-only", action="store_true", help="skip the throughput epoch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        ap.error(
            f"--models: unknown {', '.join(sorted(unknown))} (choose from {', '.join(MODELS)})"
        )
    results = {}
    if not args.quality_only:
        results["cpu"] = cpu_throughput(args.work, args.threads)
        print("CPU training throughput:", json.dumps(results["cpu"]))
    if args.gpu:
        if torch.cuda.is_available():
            results["gpu"] = gpu_epochs(args.work)
            print("GPU epochs:", json.dumps(results["gpu"]))
        else:
            print("GPU epochs: skipped (no CUDA device)")
    if args.quality:
        seeds = [int(x) for x in args.seeds.split(",")]
        results["quality"] = quality(args.work, args.train_args.split(), seeds, args.jobs, models)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
