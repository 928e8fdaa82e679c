"""Serving from offline storage with the reader API (`coea_cli.serving.Reader`): lookups per
second and latency by original user id in one long-lived process, and a rewrite of the store
by another process while this one serves.

    python bench/serving.py [--users 1000000] [--k 20] [--lookups 1000000] [--json out.json]
    python bench/serving.py --work coea-work      # a workspace's recs/ instead (no rewrite;
                                                  # also prints recommend's users/s)

Without --work a synthetic store (random lists, original ids that are not the dense ids) is
written to a temporary folder with the same writer `recommend` uses. Figures:
- lookup: `reader.get(user)` returns the user's list (fields decoded when first read);
  throughput from an untimed loop, latency (p50/p99/max) from a loop timing every call;
- lookup + decode: the same, reading every field (original item ids, scores, clusters,
  sources), as a handler that answers with the whole list does;
- get_many: batches of 100 users;
- preload: the same lookups and batches with `Reader(..., preload=True)` (every list in a
  dict), its load time and the resident memory it adds;
- rewrite: another process writes a new version and swaps it in while this one keeps
  looking up (check_every 0.05 s); counts lookups and errors during the rewrite, the latency
  then, and the time from the swap to the first lookup served from the new version, and
  checks that version's lists; once with the store and once preloaded (the lookup that
  notices the new version loads it: the max latency shows it).
Wall and CPU seconds are both given: on a shared machine the wall figures are lower bounds of
what the process would do alone.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli import store  # noqa: E402
from coea_cli.serving import Reader  # noqa: E402
from coea_cli.workspace import recs as layout  # noqa: E402


def synthetic(n_users: int, k: int, n_items: int, seed: int, item_base: int = 0):
    rng = np.random.default_rng(seed)
    rec = np.zeros(n_users * k, layout.RECORD)
    rec["item"] = rng.integers(0, n_items, len(rec))
    rec["score"] = rng.normal(size=len(rec))
    rec["cluster"] = rng.integers(0, 256, len(rec))
    rec["source"] = rng.integers(0, 3, len(rec))
    lists = layout.Lists(np.arange(n_users), np.arange(n_users + 1) * k, rec)
    ids = np.random.default_rng(12345).permutation(n_users * 10)[:n_users]  # same in each version
    users = [str(u) for u in ids]
    items = [f"item-{i + item_base}" for i in range(n_items)]
    return lists, users, items


def write_store(folder: Path, n_users: int, k: int, n_items: int, seed: int, base: int = 0):
    lists, users, items = synthetic(n_users, k, n_items, seed, base)
    meta = layout.new_meta(round=seed, note="synthetic")
    with store.atomic_dir(folder) as tmp:
        layout.write(tmp, lists, users, items, meta, parquet=False)
    return meta, users


def _rss_mib() -> float:
    """Resident memory of this process now (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _clock():
    return time.perf_counter(), time.process_time()


def lookups(reader: Reader, users: list[str], n: int, seed: int, decode: bool) -> dict:
    order = [users[i] for i in np.random.default_rng(seed).integers(0, len(users), n)]
    get = reader.get
    for u in order[:20_000]:  # warm the pages and the code paths
        get(u)
    w0, c0 = _clock()
    if decode:
        for u in order:
            x = get(u)
            x.items, x.scores, x.clusters, x.sources  # noqa: B018
    else:
        for u in order:
            get(u)
    w1, c1 = _clock()
    lat = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    if decode:
        for j, u in enumerate(order):
            s = clock()
            x = get(u)
            x.items, x.scores, x.clusters, x.sources  # noqa: B018
            lat[j] = clock() - s
    else:
        for j, u in enumerate(order):
            s = clock()
            get(u)
            lat[j] = clock() - s
    return {
        "lookups": n,
        "per_s_wall": n / (w1 - w0),
        "per_s_cpu": n / max(c1 - c0, 1e-9),
        "wall_s": w1 - w0,
        "cpu_s": c1 - c0,
        **_latency(lat),
    }


def _latency(lat_ns: np.ndarray) -> dict:
    return {
        "p50_us": float(np.percentile(lat_ns, 50) / 1e3),
        "p99_us": float(np.percentile(lat_ns, 99) / 1e3),
        "max_us": float(lat_ns.max() / 1e3),
    }


def floor(folder: Path, users: list[str], n: int, seed: int) -> dict:
    """The same keys read with py-lmdb alone (keys encoded beforehand, one transaction, no
    result object): what any Python reader of this store can at best do on this machine."""
    import lmdb

    keys = [
        ("o:" + users[i]).encode() for i in np.random.default_rng(seed).integers(0, len(users), n)
    ]
    env = lmdb.open(str(folder / "recs.lmdb"), readonly=True, lock=False, readahead=False)
    with env.begin() as txn:
        get = txn.get
        w0, c0 = _clock()
        for key in keys:
            get(key)
        w1, c1 = _clock()
    env.close()
    return {"per_s_wall": n / (w1 - w0), "per_s_cpu": n / max(c1 - c0, 1e-9)}


def batches(reader: Reader, users: list[str], n: int, seed: int, size: int = 100) -> dict:
    order = [users[i] for i in np.random.default_rng(seed).integers(0, len(users), n)]
    w0, c0 = _clock()
    for s in range(0, n, size):
        reader.get_many(order[s : s + size])
    w1, c1 = _clock()
    return {"batch": size, "per_s_wall": n / (w1 - w0), "per_s_cpu": n / max(c1 - c0, 1e-9)}


def rewrite(folder: Path, reader: Reader, users: list[str], a) -> dict:
    """Another process writes a new version while this one looks up; then check it."""
    code = (
        "import sys, time, json; sys.path.insert(0, sys.argv[1]);"
        "from bench.serving import write_store; from pathlib import Path;"
        "m, _ = write_store(Path(sys.argv[2]), *map(int, sys.argv[3:7]), base=10**9);"
        "print(json.dumps({'generation': m['generation'], 'swapped': time.time()}))"
    )
    args = [str(ROOT), str(folder), str(a.users), str(a.k), str(a.items), str(a.seed + 1)]
    reader.check_every = 0.05
    old = reader.version["generation"]
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    rng = np.random.default_rng(a.seed + 2)
    lat, errors, missing, first_new = [], 0, 0, None
    clock = time.perf_counter_ns
    t0 = time.time()
    while True:
        done = child.poll() is not None
        for u in rng.integers(0, len(users), 1000):
            s = clock()
            try:
                x = reader.get(users[u])
                if x is None:
                    missing += 1
                else:
                    x.items  # noqa: B018
            except Exception:
                errors += 1
            lat.append(clock() - s)
        if first_new is None and reader.version["generation"] != old:
            first_new = time.time()
        if done and first_new is not None:
            break
        if done and time.time() - t0 > 600:
            break
    out = json.loads(child.stdout.read())
    new_lists, new_users, new_items = synthetic(a.users, a.k, a.items, a.seed + 1, 10**9)
    sample = np.random.default_rng(a.seed + 3).integers(0, a.users, 2000)
    wrong = 0
    for u in sample:
        x = reader.get(new_users[u])
        want = [new_items[i] for i in new_lists.records["item"][u * a.k : (u + 1) * a.k]]
        wrong += x is None or list(x.items) != want
    return {
        "lookups_during_rewrite": len(lat),
        "errors": errors,
        "not_found": missing,
        "rewrite_wall_s": out["swapped"] - t0,
        "new_version_served": reader.version["generation"] == out["generation"],
        "seconds_from_swap_to_new_version": (first_new or float("nan")) - out["swapped"],
        "new_lists_checked": len(sample),
        "new_lists_wrong": int(wrong),
        **{f"during_{k}": v for k, v in _latency(np.array(lat)).items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--work", type=Path, help="a workspace (its recs/) instead of a synthetic store"
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--lookups", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "load_average": os.getloadavg(),
    }
    tmp = None
    if a.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="coea-serving-")
        folder = Path(tmp.name) / "recs"
        t0 = time.time()
        _, users = write_store(folder, a.users, a.k, a.items, a.seed)
        res["store"] = {"users": a.users, "k": a.k, "write_s": round(time.time() - t0, 1)}
    else:
        folder = a.work / "recs"
        t = store.read_parquet(a.work / "data" / "users.parquet", ["original_id"])
        users = [str(u) for u in t["original_id"].to_pylist()]
        res["store"] = {"workspace": str(a.work), "users": len(users)}
        report = store.read_json(folder / "report.json")  # what the last `recommend` took
        res["recommend"] = {
            k: report.get(k) for k in ("users", "users_per_second", "seconds", "round")
        }
    res["store"]["bytes"] = (folder / "recs.lmdb" / "data.mdb").stat().st_size
    reader = Reader(folder)
    res["lookup"] = lookups(reader, users, a.lookups, a.seed, decode=False)
    res["lookup_decode"] = lookups(reader, users, a.lookups, a.seed, decode=True)
    res["get_many"] = batches(reader, users, a.lookups, a.seed)
    reader.close()  # py-lmdb opens one environment per file and process
    res["lmdb_floor"] = floor(folder, users, a.lookups, a.seed)
    rss0, t0 = _rss_mib(), time.perf_counter()
    reader = Reader(folder, preload=True)
    res["preload"] = {"load_s": time.perf_counter() - t0, "rss_mib": _rss_mib() - rss0}
    res["preload_lookup"] = lookups(reader, users, a.lookups, a.seed, decode=False)
    res["preload_get_many"] = batches(reader, users, a.lookups, a.seed)
    reader.close()
    for preload in (False, True):
        reader = Reader(folder, preload=preload)
        if tmp is not None:
            res["preload_rewrite" if preload else "rewrite"] = rewrite(folder, reader, users, a)
        reader.close()
    print(f"machine: {res['machine']}, load average {res['load_average']}")
    print(f"store: {res['store']}")
    if "recommend" in res:
        print(f"recommend (its report.json): {res['recommend']}")
    for key, label in (("lookup", "lookup"), ("lookup_decode", "lookup + decode")):
        x = res[key]
        print(
            f"{label}: {x['per_s_wall']:,.0f}/s wall ({x['wall_s']:.2f} s), "
            f"{x['per_s_cpu']:,.0f}/s per CPU second ({x['cpu_s']:.2f} s); "
            f"p50 {x['p50_us']:.1f} us, p99 {x['p99_us']:.1f} us, max {x['max_us']:.0f} us"
        )
    g = res["get_many"]
    print(f"get_many (batches of {g['batch']}): {g['per_s_wall']:,.0f} users/s wall, "
          f"{g['per_s_cpu']:,.0f}/s per CPU second")  # fmt: skip
    f = res["lmdb_floor"]
    print(f"py-lmdb get alone (pre-encoded keys): {f['per_s_wall']:,.0f}/s wall, "
          f"{f['per_s_cpu']:,.0f}/s per CPU second")  # fmt: skip
    p, x, g = res["preload"], res["preload_lookup"], res["preload_get_many"]
    print(
        f"preload=True: loaded in {p['load_s']:.1f} s, +{p['rss_mib']:.0f} MiB resident; lookup "
        f"{x['per_s_wall']:,.0f}/s wall, {x['per_s_cpu']:,.0f}/s per CPU second; p50 "
        f"{x['p50_us']:.1f} us, p99 {x['p99_us']:.1f} us, max {x['max_us']:.0f} us; get_many "
        f"{g['per_s_wall']:,.0f} users/s"
    )
    for key in ("rewrite", "preload_rewrite"):
        if key in res:
            print(f"{key}: {res[key]}")
    print("goal: >= 300,000 lookups/s and p99 < 50 us")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
