"""Wall time, peak memory and quality of `coea build-sids`.

Builds a synthetic workspace of N items (default 100,000) whose fused vectors are a
Gaussian mixture in D dims (default 96): 64 components with N(0, 1) centres and standard
deviation 1.0, one genre per component (30% of items also get a second, random genre), plus a Zipf interaction log for popularity. Then runs
the real `coea build-sids` command in a child process and reports its wall time, peak RSS
and the quality figures of its report.json. With --ml WORK it also runs on an existing
workspace (e.g. MovieLens-100K after `coea prepare` and `coea tokenize-items`).

    python bench/sids.py [--items 100000] [--dims 96] [--noise 1.0] [--method rqvae|both]
                         [--ml /tmp/ml] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coea_cli import store

CHILD = """
import resource, sys, time
from coea_cli.cli import main
t0 = time.perf_counter()
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
dt = time.perf_counter() - t0
cpu = time.process_time()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"BENCH {dt} {cpu} {peak} {code}", file=sys.stderr)
"""


def synthetic_workspace(
    work: Path, n_items: int, dims: int, n_genres: int = 64, noise: float = 1.0, seed: int = 0
) -> None:
    """data/items.parquet, data/interactions.parquet and items/item_emb.safetensors."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, n_genres, n_items)
    centers = rng.normal(0, 1, (n_genres, dims)).astype(np.float32)
    x = centers[genre] + rng.normal(0, noise, (n_items, dims)).astype(np.float32)
    names = [f"genre{g:02d}" for g in range(n_genres)]
    second = rng.integers(0, n_genres, n_items)
    two = rng.random(n_items) < 0.3
    cats = [
        [names[a], names[b]] if t and a != b else [names[a]]
        for a, b, t in zip(genre, second, two, strict=True)
    ]
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "items").mkdir(parents=True, exist_ok=True)
    store.write_parquet(
        work / "data" / "items.parquet",
        pa.table(
            {
                "item_id": pa.array(np.arange(n_items, dtype=np.int32)),
                "original_id": pa.array([f"i{i}" for i in range(n_items)]),
                "title": pa.array([f"Item {i}" for i in range(n_items)]),
                "year": pa.array(rng.integers(1950, 2024, n_items).astype(np.int32)),
                "categories": pa.array(cats, pa.list_(pa.string())),
            }
        ),
    )
    rows = 5 * n_items
    item = ((rng.zipf(1.2, rows) - 1) % n_items).astype(np.int32)
    ts = np.sort(rng.integers(1_600_000_000, 1_630_000_000, rows))
    store.write_parquet(
        work / "data" / "interactions.parquet",
        pa.table(
            {
                "user_id": pa.array(rng.integers(0, n_items // 10, rows).astype(np.int32)),
                "item_id": pa.array(item),
                "timestamp": pa.array(ts.astype(np.int64)),
                "rating": pa.array(np.ones(rows, np.float32)),
                "period": pa.array((np.arange(rows) >= 0.6 * rows).astype(np.int16)),
            }
        ),
    )
    store.write_tensors(
        work / "items" / "item_emb.safetensors",
        {
            "item_id": np.arange(n_items, dtype=np.int32),
            "fused": x,
            "cold": np.zeros(n_items, np.uint8),
        },
        {"synthetic": f"gaussian mixture, {n_genres} components, {dims} dims, noise {noise}"},
    )


def run_build(work: Path, extra: list[str]) -> dict:
    args = ["build-sids", "--work", str(work), "--device", "cpu", "--force", "--json", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not line or line[-1].split()[-1] != "0":
        raise SystemExit(f"build-sids failed:\n{proc.stderr[-3000:]}")
    _, dt, cpu, peak, _ = line[-1].split()
    report = store.read_json(work / "sids" / "report.json")
    coh = report["genre_coherence"] or {}
    return {
        "items": report["items"],
        "method": report["method"],
        "wall_s": round(float(dt), 1),
        "cpu_s": round(float(cpu), 1),
        "peak_rss_mib": round(int(peak) / 2**20),
        "codebook_sizes": report["codebook_sizes"],
        "unique_sids": report["unique_sids"],
        "all_unique": report["all_unique"],
        "collision_rate_from_quantiser": round(report["collisions"]["rate_from_quantiser"], 4),
        "collision_rate_before_dedup": round(report["collisions"]["rate_before_dedup"], 4),
        "largest_bucket": report["collisions"]["largest_bucket"],
        "level1_utilisation": report["level_stats"][0]["utilisation"],
        "level1_perplexity": round(report["level_stats"][0]["perplexity"], 1),
        "utilisation_by_level": [s["utilisation"] for s in report["level_stats"]],
        "recon_relative": round(report["reconstruction"]["relative"], 4),
        "coherence_same_cluster": round(coh.get("same_cluster", float("nan")), 4),
        "coherence_random": round(coh.get("random", float("nan")), 4),
        "coherence_ratio": round(coh.get("ratio") or float("nan"), 2),
        "epochs_run": report["training"].get("epochs_run"),
        "seconds": report["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=96)
    ap.add_argument("--genres", type=int, default=64, help="mixture components")
    ap.add_argument("--noise", type=float, default=1.0, help="std of each component")
    ap.add_argument("--method", default="rqvae", help="rqvae, rq-kmeans or both")
    ap.add_argument("--ml", type=Path, help="also run on this prepared + tokenized workspace")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    methods = ["rqvae", "rq-kmeans"] if args.method == "both" else [args.method]
    load = os.getloadavg()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": [round(v, 2) for v in load],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="coea-bench-sids-") as tmp:
        work = Path(tmp) / "work"
        synthetic_workspace(work, args.items, args.dims, args.genres, args.noise)
        for m in methods:
            r = {
                "dataset": f"synthetic {args.items:,} x {args.dims}, {args.genres} genres, "
                f"noise {args.noise}",
                **run_build(work, ["--method", m]),
            }
            print(json.dumps(r), flush=True)
            results["runs"].append(r)
    if args.ml:
        for m in methods:
            r = {"dataset": f"workspace {args.ml}", **run_build(args.ml, ["--method", m])}
            print(json.dumps(r), flush=True)
            results["runs"].append(r)
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
