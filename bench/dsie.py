"""DSIE benchmarks on a workspace after `prepare`, `build-sids` and `profile-groups`.

    python bench/dsie.py --work /tmp/ml                 # CPU training throughput
    python bench/dsie.py --work /tmp/ml --gpu           # + epoch time, Triton vs SDPA (CUDA)
    python bench/dsie.py --work /tmp/ml --quality --seeds 0,1,2 --jobs 3
                                                        # + leave-one-out comparison table
    python bench/dsie.py ... --json PATH                # also write the results as JSON

Throughput: one training epoch of the default model (train-dsie defaults) on the pipeline
split; sequences/s = training windows per second (a window = up to long_len + 1 items of one
user), targets/s = predicted next items per second; CPU seconds of the process are reported
beside wall seconds because a shared machine slows the wall clock.
GPU: the same model with backend="triton" and backend="torch" (SDPA with a padding mask) for
the long-term branch, bf16 autocast, one warm-up epoch, then the median of 3 epochs each.
Quality: runs `coea train-dsie --protocol loo --compare` (popularity, short-only, long-only
without group, DSIE --no-group, DSIE) for each of --seeds (model initialisation and batch
order; `--jobs` of them at once) and prints the mean and standard deviation over seeds,
protocol first.
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
from coea_cli.dsie.keys import encode_histories, load_tables
from coea_cli.dsie.model import DSIE, DSIEConfig
from coea_cli.dsie.train import TrainConfig, Trainer
from coea_cli.groups.run import load_groups, load_item_codes


def build(work: Path, device: str, backend: str = "auto"):
    tables = load_tables(work)
    _, persona = load_groups(work, tables.n_users)
    codes = load_item_codes(work, tables.n_items)
    split = pipeline_split(tables.sequences(tables.test_period))
    cfg = DSIEConfig(
        n_items=tables.n_items,
        code_sizes=[int(c) + 1 for c in codes.max(axis=0)],
        levels=codes.shape[1] - 1,
        n_groups=len(persona),
        persona_dim=persona.shape[1],
        backend=backend,
    )
    torch.manual_seed(0)
    model = DSIE(cfg, torch.as_tensor(codes), torch.as_tensor(persona)).to(device)
    windows = training_windows(split.train, cfg.long_len)
    return tables, split, model, windows


def _no_eval(model) -> dict:
    return {"ndcg": 0.0, "ndcg@10": 0.0, "hr@10": 0.0}


def cpu_throughput(work: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    tables, _, model, windows = build(work, "cpu")
    trainer = Trainer(model, windows, tables.groups, TrainConfig(), _no_eval, label="bench")
    wall, cpu = time.perf_counter(), time.process_time()
    stats = trainer.train_epoch()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    targets = int((windows.lengths() - 1).sum())
    t0 = time.perf_counter()
    users = np.arange(tables.n_users)
    seqs = tables.sequences(tables.test_period)
    encode_histories(model, [seqs.of(u) for u in users], users, tables.groups)
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
        tables, _, model, windows = build(work, "cuda", backend)
        trainer = Trainer(
            model, windows, tables.groups, TrainConfig(), _no_eval, device="cuda", label=backend
        )
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


def quality(work: Path, extra: list[str], seeds: list[int], jobs: int) -> dict:
    """`train-dsie --protocol loo --compare` once per seed (into dsie-loo-s<seed>/), `jobs`
    at a time (one thread each when jobs > 1); the table shows the mean and standard deviation
    over seeds, the protocol first."""
    procs, reports = [], {}
    env = dict(os.environ, OMP_NUM_THREADS="1") if jobs > 1 else None
    t0 = time.perf_counter()
    for seed in seeds:
        cmd = [sys.executable, "-m", "coea_cli", "train-dsie", "--work", str(work)]
        cmd += ["--protocol", "loo", "--compare", "--seed", str(seed), "--out", f"dsie-loo-s{seed}"]
        procs.append(subprocess.Popen([*cmd, "--json", *extra], stdout=subprocess.DEVNULL, env=env))
        if len(procs) >= jobs:
            _wait(procs.pop(0))
    for p in procs:
        _wait(p)
    seconds = time.perf_counter() - t0
    for seed in seeds:
        reports[seed] = json.loads((work / f"dsie-loo-s{seed}" / "report.json").read_text())
    protocol = reports[seeds[0]]["protocol"]
    print(f"Protocol: {protocol}")
    print(f"Seeds: {seeds}; mean +- standard deviation over seeds (test = last item per user)")
    print(f"{'model':52s} {'HR@10':>16s} {'NDCG@10':>16s} {'epochs':>7s} {'train s':>8s}")
    rows = {}
    for name in reports[seeds[0]]["compare"]:
        per = [reports[s]["compare"][name] for s in seeds]
        hr = np.array([r["test"]["hr@10"] for r in per])
        nd = np.array([r["test"]["ndcg@10"] for r in per])
        ep = np.mean([r.get("epochs", 0) for r in per])
        secs = np.mean([r.get("train_seconds", 0) for r in per])
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
    return {"protocol": protocol, "seeds": seeds, "rows": rows, "seconds": round(seconds, 1)}


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
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at once for --quality")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {"cpu": cpu_throughput(args.work, args.threads)}
    print("CPU training throughput:", json.dumps(results["cpu"]))
    if args.gpu:
        if torch.cuda.is_available():
            results["gpu"] = gpu_epochs(args.work)
            print("GPU epochs:", json.dumps(results["gpu"]))
        else:
            print("GPU epochs: skipped (no CUDA device)")
    if args.quality:
        seeds = [int(x) for x in args.seeds.split(",")]
        results["quality"] = quality(args.work, args.train_args.split(), seeds, args.jobs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
