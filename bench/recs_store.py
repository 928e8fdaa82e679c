"""Writing the stored lists at scale: a synthetic 5M users x 20 items through the writer that
`recommend` uses (recs.lmdb and recs.parquet), its time, size and memory, then a check by the
reader API.

    python bench/recs_store.py [--users 5000000] [--k 20] [--items 100000] [--out DIR]

The lists are random (RECORD rows), the original user ids random integers as strings, the
original item ids strings; the LMDB map starts at 64 MiB and grows as it fills. Peak RSS is
the process's maximum resident memory (the synthetic lists themselves take users x k x 13
bytes, plus the original id strings). The folder is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli import store  # noqa: E402
from coea_cli.serving import Reader  # noqa: E402
from coea_cli.workspace import recs as layout  # noqa: E402


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=5_000_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--out", type=Path, help="parent folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    parent = Path(tempfile.mkdtemp(prefix="coea-recs-", dir=a.out))
    folder = parent / "recs"
    rng = np.random.default_rng(0)
    t0, c0 = time.time(), time.process_time()
    n = a.users * a.k
    rec = np.zeros(n, layout.RECORD)
    rec["item"] = rng.integers(0, a.items, n, dtype=np.int32)
    rec["score"] = rng.standard_normal(n, dtype=np.float32)
    rec["cluster"] = rng.integers(0, 256, n, dtype=np.int32)
    rec["source"] = rng.integers(0, 3, n, dtype=np.uint8)
    lists = layout.Lists(np.arange(a.users), np.arange(a.users + 1, dtype=np.int64) * a.k, rec)
    users = [str(x) for x in rng.permutation(a.users * 10)[: a.users]]
    items = [f"item-{i}" for i in range(a.items)]
    made = time.time() - t0, time.process_time() - c0
    t1, c1 = time.time(), time.process_time()
    with store.atomic_dir(folder) as tmp:
        seconds = layout.write(tmp, lists, users, items, layout.new_meta(note="synthetic"))
    wrote = time.time() - t1, time.process_time() - c1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sizes = {
        "lmdb": _size(folder / "recs.lmdb"),
        "parquet": _size(folder / "recs.parquet"),
    }
    # check: every 997th user's list through the reader, and the Parquet row count
    t2 = time.time()
    with Reader(folder) as reader:
        assert reader.version["users"] == a.users and reader.version["k"] == a.k
        for u in range(0, a.users, 997):
            got = reader.get(users[u]).item_ids
            assert list(got) == rec["item"][u * a.k : (u + 1) * a.k].tolist(), u
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(folder / "recs.parquet").metadata.num_rows
    assert rows == n, rows
    checked = time.time() - t2
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "load_average": os.getloadavg(),
        "users": a.users,
        "k": a.k,
        "rows": n,
        "synthesis_s": {"wall": round(made[0], 1), "cpu": round(made[1], 1)},
        "write_s": {"wall": round(wrote[0], 1), "cpu": round(wrote[1], 1), **seconds},
        "bytes": sizes,
        "bytes_per_user": {k: round(v / a.users, 1) for k, v in sizes.items()},
        "peak_rss_bytes": rss,
        "check_s": round(checked, 1),
    }
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    if not a.keep:
        shutil.rmtree(parent)


if __name__ == "__main__":
    main()
