"""MovieLens-100K replayed week by week through `examples/cron.sh`: how new items fare.

    python bench/coldstart.py --work /tmp/replay            # cutoff at 60% of the log, 6 weeks
    python bench/coldstart.py --work /tmp/replay --weeks 3 --json out.json

The log before the cutoff (a quantile of the timestamps) is the initial workspace, run through
the demo's pipeline (prepare with the demo's periods, tokenize-items, build-sids,
profile-groups, train-dsie, pco-round over every period, recommend --latest). Then each of
--weeks weeks is written as a CSV and handed to `examples/cron.sh`, exactly as cron would.

After week w's run it records:
- the collision rate of week w's new items before the dedup level (build-sids' report);
- the share of week w's new items that appear in some user's list, and of lists holding a new
  item (the lists of `recommend --latest`, as of the end of week w);
- hit rate on new items in week w + 1: over the users known after week w who, in week w + 1,
  interact with an item that first appeared in week w, the share whose list holds one of those
  items. Against popularity of new items: the k most-interacted items new in week w, unseen by
  the user (PopNew@k), and the same list cut to as many slots as CoEA gave new items for that
  user (PopNew, matched slots). Differences are paired over (user, week), with a 95% bootstrap
  interval.
Resumable: every step is a no-op when its inputs are unchanged; weeks already measured are
read back from <work>/../<name>-weeks.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli import store  # noqa: E402
from coea_cli.data.fetch import embedded_dataset  # noqa: E402

WEEK = 7 * 24 * 3600
SYSTEMS = ("coea", "pop_new", "pop_new_matched")


def read_atomic(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[1:]


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def raw_tables(folder: Path) -> dict:
    """The embedded ML-100K as CSV: items and users tables, interactions sorted by time."""
    src = embedded_dataset("ml-100k")
    inter = np.array(read_atomic(src / "ml-100k.inter"), dtype=np.int64)  # user item rating ts
    inter = inter[np.argsort(inter[:, 3], kind="stable")]
    items = [(r[0], r[1], r[2], "|".join(r[3].split())) for r in read_atomic(src / "ml-100k.item")]
    users = [r[:4] for r in read_atomic(src / "ml-100k.user")]
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "inter": inter,
        "items": write_csv(folder / "items.csv", ["item", "title", "year", "categories"], items),
        "users": write_csv(folder / "users.csv", ["user", "age", "gender", "occupation"], users),
    }


def log_csv(path: Path, rows: np.ndarray) -> Path:
    return write_csv(
        path, ["user", "item", "rating", "timestamp"], [[u, i, r, t] for u, i, r, t in rows]
    )


def run(cmd: list, env: dict) -> None:
    t = time.time()
    print("$ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    p = subprocess.run([str(c) for c in cmd], env=env)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}")
    print(f"  ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)


def initial(work: Path, raw: dict, log: Path, coea: str, env: dict) -> None:
    base = [coea]
    run([*base, "prepare", "--source", log, "--format", "table", "--items", raw["items"],
         "--users", raw["users"], "--work", work], env)  # fmt: skip
    for step in (["tokenize-items"], ["build-sids"], ["profile-groups"], ["train-dsie"],
                 ["pco-round", "--rounds", 99], ["recommend", "--latest"]):  # fmt: skip
        run([*base, *step, "--work", work], env)


def week_measures(work: Path, n_items_before: int, k: int) -> dict:
    """What week w's run left: its new items, their collisions, and the lists."""
    data = store.read_json(work / "data" / "dataset.json")
    report = store.read_json(work / "sids" / "report.json")
    added = (report.get("additions") or [{}])[-1]
    new = np.arange(n_items_before, int(data["items"]))
    recs = store.read_parquet(work / "recs" / "recs.parquet")
    users = recs["user_id"].to_numpy()
    items = recs["item_id"].to_numpy()
    lists: dict[int, list[int]] = {}
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        lists.setdefault(u, []).append(i)
    in_lists = np.isin(new, items)
    with_new = [np.isin(v[:k], new).any() for v in lists.values()]
    return {
        "new_items": len(new),
        "new_users": int(data["periods"][-1].get("new_users", 0)),
        "collision_rate_before_dedup": added.get("collision_rate_before_dedup"),
        "new_items_in_some_list": float(in_lists.mean()) if len(new) else None,
        "lists_with_a_new_item": float(np.mean(with_new)),
        "lists": {str(u): v[:k] for u, v in lists.items()},
        "new": new.tolist(),
        "test_period": int(data["test_period"]),
    }


def hits_next_week(work: Path, wk: dict, nxt: np.ndarray, k: int) -> dict:
    """Per (user, week) values on week w + 1's interactions `nxt` (original ids)."""
    users = store.read_parquet(work / "data" / "users.parquet")
    items = store.read_parquet(work / "data" / "items.parquet")
    uid = {o: i for i, o in enumerate(users.sort_by("user_id")["original_id"].to_pylist())}
    iid = {o: i for i, o in enumerate(items.sort_by("item_id")["original_id"].to_pylist())}
    new = set(wk["new"])
    inter = store.read_parquet(work / "data" / "interactions.parquet")
    period = inter["period"].to_numpy()
    last = period == wk["test_period"]
    counts = np.bincount(inter["item_id"].to_numpy()[last], minlength=len(iid))
    popular_new = sorted(new, key=lambda i: (-counts[i], i))
    seen: dict[int, set] = {}
    for u, i in zip(inter["user_id"].to_pylist(), inter["item_id"].to_pylist(), strict=True):
        seen.setdefault(u, set()).add(i)
    truth: dict[int, set] = {}
    for u, i, _, _ in nxt.tolist():
        u, i = uid.get(str(u)), iid.get(str(i))
        if u is not None and i in new:
            truth.setdefault(u, set()).add(i)
    rows = []
    for u, want in sorted(truth.items()):
        ours = wk["lists"].get(str(u), [])[:k]
        pop = [i for i in popular_new if i not in seen.get(u, set())][:k]
        slots = sum(i in new for i in ours)
        rows.append(
            {
                "coea": float(bool(want & set(ours))),
                "pop_new": float(bool(want & set(pop))),
                "pop_new_matched": float(bool(want & set(pop[:slots]))),
            }
        )
    return {"users": len(rows), "rows": rows}


def paired(a, b, n_boot: int = 4000, seed: int = 0) -> dict:
    """mean(a) - mean(b) with a 95% percentile bootstrap interval over paired rows."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not a.size:
        return {"diff": None, "lo": None, "hi": None}
    idx = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    d = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return {"diff": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cutoff", type=float, default=0.6, help="quantile of the timestamps")
    ap.add_argument("--weeks", type=int, default=6)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    coea = os.environ.get("COEA", str(Path(sys.executable).parent / "coea"))
    env = {**os.environ, "COEA": coea, "OMP_NUM_THREADS": "1"}
    work = args.work.resolve()
    raw_dir = work.with_name(work.name + "-raw")
    raw = raw_tables(raw_dir)
    inter = raw["inter"]
    cut = int(np.quantile(inter[:, 3], args.cutoff))
    t0 = time.time()
    if not (work / "recs" / "recs.parquet").exists():
        initial(work, raw, log_csv(raw_dir / "initial.csv", inter[inter[:, 3] < cut]), coea, env)
    done_path = work.with_name(work.name + "-weeks.json")
    weeks = json.loads(done_path.read_text()) if done_path.exists() else []
    for w in range(len(weeks) + 1, args.weeks + 1):
        lo, hi = cut + (w - 1) * WEEK, cut + w * WEEK
        rows = inter[(inter[:, 3] >= lo) & (inter[:, 3] < hi)]
        n_before = int(store.read_json(work / "data" / "dataset.json")["items"])
        path = log_csv(raw_dir / f"week-{w}.csv", rows)
        t = time.time()
        run(["bash", ROOT / "examples" / "cron.sh", work, path, raw["items"], raw["users"]], env)
        wk = week_measures(work, n_before, args.k)
        nxt = inter[(inter[:, 3] >= hi) & (inter[:, 3] < hi + WEEK)]
        wk["next"] = hits_next_week(work, wk, nxt, args.k)
        wk["week"], wk["interactions"], wk["seconds"] = w, len(rows), round(time.time() - t, 1)
        weeks.append(wk)
        done_path.write_text(json.dumps(weeks))
    print(json.dumps(summary(weeks, args, time.time() - t0), indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary(weeks, args, time.time() - t0), indent=2))


WEEK_KEYS = (
    "week", "interactions", "new_items", "new_users", "collision_rate_before_dedup",
    "new_items_in_some_list", "lists_with_a_new_item", "seconds",
)  # fmt: skip


def summary(weeks: list, args, seconds: float) -> dict:
    rows = [r for wk in weeks for r in wk["next"]["rows"]]

    def col(key):
        return [r[key] for r in rows]

    new = sum(wk["new_items"] for wk in weeks)
    collided = sum((wk["collision_rate_before_dedup"] or 0) * wk["new_items"] for wk in weeks)
    in_lists = sum((wk["new_items_in_some_list"] or 0) * wk["new_items"] for wk in weeks)
    per_week = [
        {key: wk[key] for key in WEEK_KEYS} | {"next_week_users": wk["next"]["users"]}
        for wk in weeks
    ]
    hr = {key: float(np.mean(col(key))) if rows else None for key in SYSTEMS}
    return {
        "cutoff_quantile": args.cutoff,
        "k": args.k,
        "weeks": per_week,
        "new_items": new,
        "collision_rate_before_dedup": collided / new if new else None,
        "new_items_in_some_list": in_lists / new if new else None,
        "next_week": {
            "users": len(rows),
            "hr_new": hr,
            "coea_minus_pop_new": paired(col("coea"), col("pop_new")),
            "coea_minus_pop_new_matched": paired(col("coea"), col("pop_new_matched")),
        },
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
