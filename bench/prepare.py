"""Throughput and peak memory of `coea prepare`.

Runs the real command in a child process on (1) the embedded MovieLens-100K and (2) a
synthetic Parquet log of 10,000,000 interactions, and reports interactions/s and peak
resident memory against the in-memory size of the raw table.

    python bench/prepare.py [--rows 10000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"BENCH {dt} {peak} {code}", file=sys.stderr)
"""

BASELINE = """
import resource, sys
import numpy, pyarrow, pyarrow.parquet, pyarrow.compute, pyarrow.csv
from coea_cli.data import prepare, readers, run  # noqa
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def synthetic_log(path: Path, rows: int, seed: int = 0) -> int:
    """Zipf-distributed users and items over one year; returns the Arrow size of the table."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1000, rows // 100), max(500, rows // 500)
    users = (rng.zipf(1.3, rows) - 1) % n_users
    items = (rng.zipf(1.2, rows) - 1) % n_items
    table = pa.table(
        {
            "user": users.astype(np.int64),
            "item": items.astype(np.int64),
            "timestamp": rng.integers(1_600_000_000, 1_631_536_000, rows, dtype=np.int64),
            "rating": rng.integers(1, 6, rows).astype(np.float32),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return table.nbytes


def run_prepare(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "prepare", *args], capture_output=True, text=True
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"prepare failed:\n{proc.stderr[-2000:]}")
    _, dt, peak, code = line[-1].split()
    return {"seconds": float(dt), "peak_rss": int(peak), "exit": int(code)}


def baseline_rss() -> int:
    out = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True)
    return int(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    base = baseline_rss()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "baseline_rss": base}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ml = run_prepare(["--work", str(tmp / "ml"), "--force"])
        ml["interactions"] = 100_000
        results["ml-100k"] = ml
        path = tmp / "synthetic.parquet"
        t0 = time.perf_counter()
        raw_bytes = synthetic_log(path, a.rows)
        gen = time.perf_counter() - t0
        syn = run_prepare(
            ["--source", str(path), "--format", "table", "--work", str(tmp / "syn"), "--force"]
        )
        syn.update({"interactions": a.rows, "raw_table_bytes": raw_bytes, "generate_seconds": gen})
        results["synthetic"] = syn
    rows = []
    for name in ("ml-100k", "synthetic"):
        r = results[name]
        r["interactions_per_s"] = r["interactions"] / r["seconds"]
        r["peak_over_baseline"] = r["peak_rss"] - base
        rows.append(r)
    syn = results["synthetic"]
    syn["peak_ratio_to_raw"] = syn["peak_over_baseline"] / syn["raw_table_bytes"]
    print(f"machine: {results['machine']}; process baseline RSS {base / 2**20:.0f} MiB")
    print(f"{'log':<12}{'rows':>12}{'seconds':>10}{'rows/s':>14}{'peak MiB':>10}{'+base MiB':>10}")
    for name in ("ml-100k", "synthetic"):
        r = results[name]
        print(
            f"{name:<12}{r['interactions']:>12,}{r['seconds']:>10.2f}{r['interactions_per_s']:>14,.0f}"
            f"{r['peak_rss'] / 2**20:>10.0f}{r['peak_over_baseline'] / 2**20:>10.0f}"
        )
    print(
        f"synthetic raw table {syn['raw_table_bytes'] / 2**20:.0f} MiB; peak above baseline = "
        f"{syn['peak_ratio_to_raw']:.2f}x raw (goal < 3x); throughput goal >= 1,000,000/s"
    )
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
