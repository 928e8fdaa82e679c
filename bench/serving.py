"""Serving from offline storage: LMDB lookups per second and latency of `recommend --user`
style reads, and `recommend` throughput (users/s) on a workspace.

    python bench/serving.py --work coea-work [--lookups 200000] [--json out.json]

The lookup part reads the workspace's recs/recs.lmdb exactly as `coea recommend --user` does
(original id -> dense id -> packed list), in one process with one read transaction per
lookup. The throughput part reads recs/report.json written by the last `coea recommend`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from coea_cli import store
from coea_cli.recs.lists import RECORD


def lookups(work: Path, n: int, seed: int = 0) -> dict:
    users = store.read_parquet(work / "data" / "users.parquet", ["original_id"])
    keys = [b"o:" + str(u).encode() for u in users["original_id"].to_pylist()]
    order = np.random.default_rng(seed).integers(0, len(keys), n)
    env = store.open_lmdb(work / "recs" / "recs.lmdb")
    lat = np.empty(n, dtype=np.float64)
    found = 0
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for j, idx in enumerate(order):
        s = clock()
        with env.begin(buffers=True) as txn:
            dense = txn.get(keys[idx])
            if dense is not None:
                rec = np.frombuffer(txn.get(b"u:" + bytes(dense)), dtype=RECORD)
                found += len(rec) > 0
        lat[j] = clock() - s
    total = time.perf_counter() - t0
    env.close()
    return {
        "lookups": n,
        "found": found,
        "lookups_per_s": n / total,
        "p50_us": float(np.percentile(lat, 50) / 1e3),
        "p99_us": float(np.percentile(lat, 99) / 1e3),
        "max_us": float(lat.max() / 1e3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("coea-work"))
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor()}"}
    res["lookup"] = lookups(a.work, a.lookups)
    report = store.read_json(a.work / "recs" / "report.json")
    res["recommend"] = {
        "users": report["users"],
        "unique_keys": report["unique_keys"],
        "users_per_s": report["users_per_second"],
        "seconds": report["seconds"],
    }
    lk = res["lookup"]
    print(f"machine: {res['machine']}")
    print(
        f"LMDB lookups: {lk['lookups_per_s']:,.0f}/s, p50 {lk['p50_us']:.1f} us, "
        f"p99 {lk['p99_us']:.1f} us (goal >= 100,000/s and p99 < 100 us)"
    )
    r = res["recommend"]
    print(
        f"recommend: {r['users']} users, {r['unique_keys']} serving keys, "
        f"{r['users_per_s']:.1f} users/s; stages {r['seconds']}"
    )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
