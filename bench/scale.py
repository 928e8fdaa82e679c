"""How each pipeline step's time and memory grow with the size of the log.

    python bench/scale.py                                   # scales 0.25,0.5,1 of ML-1M, 1 process
    python bench/scale.py --scales 0.02,0.05 --procs 1,2 --out /tmp/scale --json scale.json

For each scale s it writes a synthetic log in the MovieLens-1M layout (users.dat, movies.dat,
ratings.dat, `::` separated: 6,040 s users, 3,706 s items, about 1,000,209 s ratings), then
runs the whole pipeline in a fresh workspace with each --procs setting: prepare --format ml-1m,
tokenize-items, build-sids, profile-groups, train-dsie (and train-dsie --cutoff T-1, which
recommend's default --weights auto reads, as in examples/demo.sh), pco-round round 0 and
rounds 1..R (--rounds), recommend, evaluate. It prints one markdown table per scale and
process count (wall seconds, CPU seconds of the child processes, peak resident memory of the
largest process), the settings that keep the run affordable (train-dsie --epochs 1, rounds 1
by default) with per-epoch and per-round times and an extrapolation to the defaults (25
epochs, rounds 1..4), and a linearity table: each step's time at a scale divided by its time
at the smallest scale, beside the ratios of users, items and ratings.

recommend and evaluate serve the test period with the track's current round, which must be
the one just before it, so prepare gets --periods 0.8,0.1,0.1 for R = 1 (0.9 - 0.1 R, then
R + 1 periods of 0.1): the default split with its first rounds' periods merged into period 0.
Each round and the test period hold 10% of the log as with the defaults, and DSIE trains on
the same 90% (80% with --cutoff); --rounds 4 is the default split itself.

--procs 2: train-dsie and pco-round under `torchrun --nproc_per_node 2`, recommend as two
`recommend --shard I/2` processes at once and `recommend --merge-shards 2`; the other steps
run as one process. A command that fails is reported as "failed: ..." in its cell; a failed
pco-round under torchrun is then rerun in one process so that the later steps still run.
Threads follow examples/demo.sh: COEA_CPU_THREADS (default 2) for a step that runs alone, one
per process when two run at once.

The log: users in eight taste groups (correlated with age and gender) prefer two or three of
the 18 ML-1M genres and take about 80% of their ratings from them, adding a new genre later
on; item popularity is Zipf (exponent --zipf over a random order of the items); each user
rates in a few bursts (sessions seconds apart), their first burst around one of a few global
waves of arrivals, later bursts weeks apart, all inside ML-1M's span (April 2000 to
February 2003). Ratings per user follow ML-1M's shape (at least 20, median about 96) but
never exceed 40% of the catalogue, so below s of about 0.1 the log is denser than ML-1M and
holds fewer than 1,000,209 s ratings: the tables give the counts actually written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ML1M = {"users": 6040, "items": 3706, "ratings": 1_000_209}
GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip
# Share of ML-1M's movies tagged with each genre (roughly), so common genres stay common.
GENRE_WEIGHT = np.array(
    [13, 8, 3, 6, 31, 6, 3, 40, 2, 1, 9, 3, 3, 12, 7, 13, 4, 2], dtype=np.float64
)
WORDS = [
    "Night", "River", "Star", "Shadow", "King", "Love", "Storm", "Ghost", "City", "Dream",
    "Last", "Blue", "Iron", "Summer", "Secret", "Wild", "Silent", "Golden", "Lost", "Red",
]  # fmt: skip
AGES = [1, 18, 25, 35, 45, 50, 56]
SPAN = (956_703_932, 1_046_454_590)  # ML-1M's first and last timestamps
DAY = 86_400
N_GROUPS = 8
PREFERRED_SHARE = 0.8
MAX_ITEM_SHARE = 0.4


def synthetic_ml1m(folder: Path, scale: float, seed: int = 0, zipf: float = 1.0) -> dict:
    """Write users.dat, movies.dat and ratings.dat for `scale` x ML-1M; return the counts and
    each user's preferred genres (indices into GENRES, by user id - 1)."""
    rng = np.random.default_rng(seed)
    # What the whole log shares (taste groups, activity waves) does not depend on the scale,
    # so every scale's periods hold the same share of the users and ratings.
    shared = np.random.default_rng([seed, 1])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_users = max(20, round(ML1M["users"] * scale))
    n_items = max(40, round(ML1M["items"] * scale))
    n_genres = len(GENRES)

    # Items: a primary genre by ML-1M's genre shares, sometimes one or two more; a Zipf weight
    # over a random order of the items.
    gw = GENRE_WEIGHT / GENRE_WEIGHT.sum()
    has = np.zeros((n_items, n_genres), dtype=bool)
    has[np.arange(n_items), rng.choice(n_genres, n_items, p=gw)] = True
    for extra in (0.45, 0.15):
        more = np.flatnonzero(rng.random(n_items) < extra)
        has[more, rng.choice(n_genres, len(more), p=gw)] = True
    pop = 1.0 / np.arange(1, n_items + 1) ** zipf
    pop = pop[rng.permutation(n_items)]
    pop /= pop.sum()
    years = rng.integers(1919, 2001, n_items)
    movies = []
    for k in range(n_items):
        words = rng.choice(WORDS, 2, replace=False)
        genres = "|".join(GENRES[g] for g in np.flatnonzero(has[k]))
        movies.append(f"{k + 1}::{words[0]} {words[1]} {k + 1} ({years[k]})::{genres}")
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")

    # Users: a taste group sets three liked genres (each user keeps two or three of them), a
    # skew of age and gender, and a genre taken up later.
    group_likes = [shared.choice(n_genres, 3, replace=False, p=gw) for _ in range(N_GROUPS)]
    group = rng.integers(0, N_GROUPS, n_users)
    prefs, later, lines = [], [], []
    for u in range(n_users):
        g = group[u]
        keep = rng.choice(group_likes[g], rng.integers(2, 4), replace=False)
        prefs.append(np.sort(keep))
        later.append(int(rng.choice(np.setdiff1d(np.arange(n_genres), keep))))
        age = AGES[min(len(AGES) - 1, max(0, g % 6 + rng.integers(-1, 2)))]
        sex = "MF"[int(rng.random() < (0.2 if g % 2 else 0.45))]
        lines.append(
            f"{u + 1}::{sex}::{age}::{(3 * g + rng.integers(0, 3)) % 21}::{rng.integers(10000, 99999)}"
        )
    (folder / "users.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")

    # Ratings per user: ML-1M's shape (log-normal, median 96, at least 20), scaled to the
    # target total and capped by the catalogue.
    cap = max(5, int(MAX_ITEM_SHARE * n_items))
    count = rng.lognormal(np.log(96), 1.04, n_users)
    for _ in range(20):  # rescale what the clipping took away
        count = np.clip(count * ML1M["ratings"] * scale / count.sum(), min(20, cap), cap)
    count = np.round(count).astype(np.int64)

    # Items of a genre, by popularity within the genre: the mixture a user draws from.
    in_genre = has / np.maximum((has * pop[:, None]).sum(0), 1e-12) * pop[:, None]
    waves = np.sort(shared.uniform(SPAN[0], SPAN[0] + 0.75 * (SPAN[1] - SPAN[0]), 5))
    users, items, stamps, ratings = [], [], [], []
    for u in range(n_users):
        n = int(count[u])
        early = PREFERRED_SHARE * in_genre[:, prefs[u]].mean(1) + (1 - PREFERRED_SHARE) * pop
        late = (
            PREFERRED_SHARE * in_genre[:, [*prefs[u], later[u]]].mean(1)
            + (1 - PREFERRED_SHARE) * pop
        )
        # Without replacement (Gumbel top-k): the first 60% from the early mixture, the rest
        # from the late one, which adds the later genre.
        n_early = max(1, int(0.6 * n))
        keys = np.log(np.maximum(early, 1e-300)) + rng.gumbel(size=n_items)
        first = np.argpartition(-keys, n_early - 1)[:n_early]
        first = first[np.argsort(-keys[first])]
        keys = np.log(np.maximum(late, 1e-300)) + rng.gumbel(size=n_items)
        keys[first] = -np.inf
        rest = np.argpartition(-keys, n - n_early - 1)[: n - n_early] if n > n_early else []
        rest = np.asarray(rest, dtype=np.int64)
        rest = rest[np.argsort(-keys[rest])]
        chosen = np.concatenate([rng.permutation(first), rng.permutation(rest)])
        # Bursts: sessions of a few to many ratings, seconds apart; the first starts near a
        # global wave, the next ones weeks later.
        n_bursts = int(min(n, 1 + rng.poisson(3)))
        share = rng.dirichlet(np.ones(n_bursts))
        share[0] += 0.5
        sizes = 1 + rng.multinomial(n - n_bursts, share / share.sum())
        start = rng.choice(waves) + rng.normal(0, 20 * DAY)
        gaps = rng.exponential(45 * DAY, n_bursts)
        gaps[0] = 0
        t_burst = start + np.cumsum(gaps)
        t = np.concatenate(
            [tb + np.cumsum(rng.exponential(40, s)) for tb, s in zip(t_burst, sizes, strict=True)]
        )
        t = np.clip(t.astype(np.int64), SPAN[0], SPAN[1])
        liked = has[chosen][:, np.union1d(prefs[u], [later[u]])].any(1)
        r = np.where(
            liked,
            rng.choice([2, 3, 4, 5], n, p=[0.05, 0.2, 0.4, 0.35]),
            rng.choice([1, 2, 3, 4, 5], n, p=[0.12, 0.2, 0.33, 0.25, 0.1]),
        )
        users.append(np.full(n, u + 1))
        items.append(chosen + 1)
        stamps.append(np.sort(t))
        ratings.append(r)
    users, items = np.concatenate(users), np.concatenate(items)
    stamps, ratings = np.concatenate(stamps), np.concatenate(ratings)
    with open(folder / "ratings.dat", "w", encoding="latin-1") as f:
        f.writelines(
            f"{a}::{b}::{c}::{d}\n"
            for a, b, c, d in zip(
                users.tolist(), items.tolist(), ratings.tolist(), stamps.tolist(), strict=True
            )
        )
    return {
        "scale": scale,
        "users": n_users,
        "items": n_items,
        "ratings": len(users),
        "preferred": [p.tolist() for p in prefs],
    }


# ---------------------------------------------------------------- running the pipeline

ROOT = Path(__file__).resolve().parents[1]
# One child command under this wrapper: its own wall time, and the CPU time and the peak RSS
# of everything it started (RUSAGE_CHILDREN of a fresh process: torchrun's workers included).
WRAP = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "ab") as out, open(sys.argv[2], "ab") as err:
    rc = subprocess.run(sys.argv[3:], stdout=out, stderr=err).returncode
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": time.perf_counter() - t0,
                  "cpu": ru.ru_utime + ru.ru_stime, "max_rss": ru.ru_maxrss * 1024}))
"""
COEA = [sys.executable, "-m", "coea_cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
# The defaults the extrapolation aims at: train-dsie --epochs, and the rounds of the default
# split (prepare --periods 0.5,0.1,0.1,0.1,0.1,0.1: rounds 1..4, test period 5).
DSIE_EPOCHS, DEFAULT_ROUNDS = 25, 4


def periods(rounds: int) -> str:
    """prepare --periods for `rounds` rounds after round 0: the default split with its first
    rounds' periods merged into period 0, so the test period follows the last round (recommend
    and evaluate serve the track's current round) while each round and the test period still
    hold 10% of the log, DSIE still trains on the first 90% (and 80% for --cutoff T-1)."""
    if not 1 <= rounds <= 8:
        raise SystemExit("--rounds must be between 1 and 8")
    return ",".join([f"{0.9 - 0.1 * rounds:.1f}", *["0.1"] * (rounds + 1)])


class Pipeline:
    """One workspace: runs the steps in order, each in measured child processes."""

    def __init__(self, work: Path, procs: int, threads: int, on_step=None):
        self.work, self.procs, self.threads = work, procs, threads
        self.on_step = on_step or (lambda row: None)
        self.logs = work.parent / f"{work.name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.broken: str | None = None

    def _env(self, threads: int) -> dict:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, "COEA_CPU_THREADS": str(threads)}

    def _start(self, tag: str, argv: list[str], threads: int) -> subprocess.Popen:
        out, err = self.logs / f"{tag}.out", self.logs / f"{tag}.err"
        return subprocess.Popen(
            [sys.executable, "-c", WRAP, str(out), str(err), *argv],
            stdout=subprocess.PIPE, text=True, env=self._env(threads),
        )  # fmt: skip

    def _finish(self, tag: str, proc: subprocess.Popen) -> dict:
        stdout, _ = proc.communicate()
        r = json.loads(stdout.strip().splitlines()[-1])
        if r["rc"] != 0:
            r["error"] = failure_line((self.logs / f"{tag}.err").read_text(errors="replace"))
        return r

    def _measure(self, parts: list[tuple[str, list[str], int]]) -> dict:
        """Run the parts at once; wall time of the slowest, CPU summed, RSS per process."""
        t0 = time.perf_counter()
        procs = [(tag, self._start(tag, argv, th)) for tag, argv, th in parts]
        rs = [self._finish(tag, p) for tag, p in procs]
        bad = [r for r in rs if r["rc"] != 0]
        return {
            "wall": time.perf_counter() - t0,
            "cpu": sum(r["cpu"] for r in rs),
            "max_rss": max(r["max_rss"] for r in rs),
            "rc": bad[0]["rc"] if bad else 0,
            **({"error": bad[0]["error"]} if bad else {}),
        }

    def step(self, name: str, args: list[str], mode: str = "one", **extra) -> dict:
        """mode: one (a process), torchrun (self.procs ranks when > 1), shards (recommend)."""
        row = {"step": name, "command": f"coea {' '.join(args)}", "procs": 1, **extra}
        self.rows.append(row)
        if self.broken:
            row["skipped"] = self.broken
            return row
        base = [*args, "--work", str(self.work)]
        tag = f"{len(self.rows):02d}-{name.replace(' ', '_')}"
        each = max(1, self.threads // self.procs)
        if self.procs > 1 and mode == "torchrun":
            argv = [*TORCHRUN, str(self.procs), "-m", "coea_cli", *base]
            row.update(procs=self.procs, **self._measure([(tag, argv, each)]))
        elif self.procs > 1 and mode == "shards":
            n = self.procs
            shards = [
                (f"{tag}-shard{i}", [*COEA, *base, "--shard", f"{i}/{n}"], each) for i in range(n)
            ]
            r = self._measure(shards)
            row.update(procs=n, shards_wall=r["wall"], merge_wall=0.0, **r)
            if r["rc"] == 0:
                merge = [*COEA, *base, "--merge-shards", str(n)]
                m = self._measure([(f"{tag}-merge", merge, self.threads)])
                row.update(
                    merge_wall=m["wall"], wall=r["wall"] + m["wall"], cpu=r["cpu"] + m["cpu"],
                    max_rss=max(r["max_rss"], m["max_rss"]), rc=m["rc"],
                )  # fmt: skip
                if "error" in m:
                    row["error"] = m["error"]
        else:
            row.update(self._measure([(tag, [*COEA, *base], self.threads)]))
        if row["rc"] != 0 and row["procs"] > 1:
            # Record the failure, then run the step in one process so the later steps run.
            row["failed_with_procs"] = {k: row.pop(k) for k in ("procs", "wall", "cpu", "rc")}
            row["failed_with_procs"]["error"] = row.pop("error")
            row.update(procs=1, **self._measure([(f"{tag}-1proc", [*COEA, *base], self.threads)]))
        if row["rc"] != 0:
            self.broken = f"{name} failed"
        self.on_step(row)
        return row


def failure_line(stderr: str) -> str:
    """The most telling line of a failed command's stderr: its own error message when there
    is one (coea prints `error: ...`), else the last exception line, else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for pick in (
        lambda ln: ln.find("error: "),
        lambda ln: 0 if ln.split(":")[0].endswith(("Error", "Exception")) else -1,
    ):
        hits = [ln[pick(ln) :] for ln in lines if pick(ln) >= 0 and "ChildFailed" not in ln]
        if hits:
            return hits[-1][:200]
    return lines[-1][-200:] if lines else "no output"


def dsie_epochs_seconds(work: Path, out: str) -> float | None:
    """Training seconds per epoch from <out>/report.json (validation and set-up excluded)."""
    try:
        s = json.loads((work / out / "report.json").read_text())["summary"]
        return s["train_seconds"] / max(1, s["epochs"])
    except (OSError, KeyError, ValueError):
        return None


def run_pipeline(
    raw: Path, work: Path, procs: int, threads: int, epochs: int, rounds: int, on_step=None
):
    p = Pipeline(work, procs, threads, on_step)
    split = ["--periods", periods(rounds)]
    p.step("prepare", ["prepare", "--source", str(raw), "--format", "ml-1m", *split])
    test = None
    try:
        test = json.loads((work / "data" / "dataset.json").read_text())["test_period"]
    except (OSError, KeyError, ValueError):
        p.broken = p.broken or "no data/dataset.json"
    for name in ("tokenize-items", "build-sids", "profile-groups"):
        p.step(name, [name])
    ep = ["--epochs", str(epochs)]
    dsie = p.step("train-dsie", ["train-dsie", *ep], "torchrun", epochs=epochs)
    cut = test - 1 if test else 0
    dsie_cut = p.step(
        "train-dsie --cutoff", ["train-dsie", *ep, "--cutoff", str(cut)], "torchrun", epochs=epochs
    )
    for row, out in ((dsie, "dsie"), (dsie_cut, f"dsie-before-{cut}")):
        if row.get("rc") == 0:
            row["epoch_seconds"] = dsie_epochs_seconds(work, out)
            if row["epoch_seconds"] is not None:
                row["extrapolated_wall"] = (
                    row["wall"] + (DSIE_EPOCHS - epochs) * row["epoch_seconds"]
                )
    p.step("pco-round 0", ["pco-round"], "torchrun", rounds=1)
    r = p.step("pco-round 1..R", ["pco-round", "--rounds", str(rounds)], "torchrun", rounds=rounds)
    if r.get("rc") == 0 and test:
        r["round_seconds"] = r["wall"] / rounds
        r["extrapolated_wall"] = r["round_seconds"] * DEFAULT_ROUNDS
    p.step("recommend", ["recommend"], "shards")
    p.step("evaluate", ["evaluate"])
    return p.rows, test


# ---------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def note(row: dict) -> str:
    parts = []
    if "failed_with_procs" in row:
        f = row["failed_with_procs"]
        parts.append(f"failed: {f['error']} (with {f['procs']} procs; 1 process shown)")
    if row.get("epoch_seconds") is not None:
        parts.append(
            f"{row['epochs']} epoch(s), {row['epoch_seconds']:.1f} s/epoch training; "
            f"{DSIE_EPOCHS} epochs ~ {row['extrapolated_wall']:,.0f} s"
        )
    if row.get("round_seconds") is not None:
        parts.append(
            f"{row['rounds']} round(s), {row['round_seconds']:.1f} s/round; rounds 1..{DEFAULT_ROUNDS} "
            f"~ {row['extrapolated_wall']:,.0f} s"
        )
    if "merge_wall" in row:
        parts.append(f"shards {row['shards_wall']:.1f} s + merge {row['merge_wall']:.1f} s")
    return "; ".join(parts)


def cell(row: dict, key: str, fmt) -> str:
    if "skipped" in row:
        return "not run"
    if row.get("rc", 0) != 0:
        return f"failed: {row['error']}" if key == "wall" else ""
    return fmt(row[key])


def table(run: dict) -> str:
    rows = run["steps"]
    lines = [
        f"scale {run['scale']} (procs {run['procs']}): {run['log']['users']:,} users, "
        f"{run['log']['items']:,} items, {run['log']['ratings']:,} ratings written; after "
        f"prepare {run['prepared']}; train-dsie --epochs {run['epochs']}, pco-round round 0 + "
        f"--rounds {run['rounds']}; COEA_CPU_THREADS {run['threads']} "
        f"({max(1, run['threads'] // run['procs'])} per process when {run['procs']} run at once)",
        "",
        "| step | procs | wall s | CPU s | peak RSS MiB | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['procs']} | {cell(r, 'wall', lambda v: f'{v:,.1f}')} | "
            f"{cell(r, 'cpu', lambda v: f'{v:,.1f}')} | {cell(r, 'max_rss', mib)} | "
            f"{note(r)} |"
        )
    done = [r for r in rows if r.get("rc") == 0]
    full = sum(r.get("extrapolated_wall", r["wall"]) for r in done)
    lines.append(
        f"| total | | {sum(r['wall'] for r in done):,.1f} | {sum(r['cpu'] for r in done):,.1f} | "
        f"{mib(max((r['max_rss'] for r in done), default=0))} | with default epochs and "
        f"rounds ~ {full:,.0f} s |"
    )
    return "\n".join(lines)


def linearity(runs: list[dict], procs: int) -> str:
    """Each step's wall and CPU time at every scale over its time at the smallest scale,
    beside the ratios of the log's sizes, and the exponent b of wall time ~ scale^b between
    the smallest and the largest scale (1 = linear, 2 = quadratic)."""
    runs = sorted((r for r in runs if r["procs"] == procs), key=lambda r: r["scale"])
    if len(runs) < 2:
        return ""
    first, span = runs[0], runs[-1]["scale"] / runs[0]["scale"]
    scales = " | ".join(str(r["scale"]) for r in runs[1:])
    lines = [
        f"linearity, procs {procs}: time at each scale / time at scale {first['scale']}, "
        "wall (CPU); b: wall ~ scale^b between the smallest and the largest scale, 1 = linear. "
        "At small scales fixed start-up costs (imports, model loading, the backbone's fixed "
        "pre-training steps) keep the ratios low.",
        "",
        f"| ratio to scale {first['scale']} | {scales} | b |",
        "|---|" + "---:|" * len(runs),
    ]
    for key in ("scale", "users", "items", "ratings"):
        vals = [(r["scale"] if key == "scale" else r["log"][key]) for r in runs]
        lines.append(f"| {key} | " + " | ".join(f"{v / vals[0]:.2f}" for v in vals[1:]) + " | |")
    totals = []
    for k, row0 in enumerate(first["steps"]):
        rs = [r["steps"][k] for r in runs]
        if any(r.get("rc") != 0 for r in rs):
            lines.append(f"| {row0['step']} | " + " | ".join("-" for _ in rs[1:]) + " | |")
            continue
        totals.append(rs)
        lines.append(ratio_row(row0["step"], [r["wall"] for r in rs], [r["cpu"] for r in rs], span))
    if len(totals) == len(first["steps"]):
        wall = [sum(t[j]["wall"] for t in totals) for j in range(len(runs))]
        cpu = [sum(t[j]["cpu"] for t in totals) for j in range(len(runs))]
        lines.append(ratio_row("total", wall, cpu, span))
    return "\n".join(lines)


def ratio_row(name: str, wall: list[float], cpu: list[float], span: float) -> str:
    cells = [
        f"{w / wall[0]:.2f} ({c / cpu[0]:.2f})" for w, c in zip(wall[1:], cpu[1:], strict=True)
    ]
    b = np.log(wall[-1] / wall[0]) / np.log(span)
    return f"| {name} | " + " | ".join(cells) + f" | {b:.2f} |"


def prepared_counts(work: Path) -> str:
    try:
        d = json.loads((work / "data" / "dataset.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    c = d.get("counts", {}).get("after_kcore", {})
    return ", ".join(f"{c[k]:,} {k}" for k in ("users", "items", "interactions") if k in c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="0.25,0.5,1", help="fractions of ML-1M's size")
    ap.add_argument("--procs", default="1", help="process counts to run, e.g. 1,2")
    ap.add_argument("--out", type=Path, help="folder for logs and workspaces (default: temp)")
    ap.add_argument("--epochs", type=int, default=1, help="train-dsie --epochs")
    ap.add_argument("--rounds", type=int, default=1, help="pco-round rounds after round 0")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic log")
    ap.add_argument("--zipf", type=float, default=1.0, help="exponent of item popularity")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    a = ap.parse_args(argv)
    scales = [float(x) for x in a.scales.split(",")]
    procs = [int(x) for x in a.procs.split(",")]
    threads = int(os.environ.get("COEA_CPU_THREADS", "2"))
    tmp = None
    if a.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="coea-scale-")
        a.out = Path(tmp.name)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "settings": {"epochs": a.epochs, "rounds": a.rounds, "threads": threads, "seed": a.seed},
        "runs": [],
    }
    print(f"machine: {results['machine']}; workspaces in {a.out}", file=sys.stderr)
    try:
        for s in scales:
            raw = a.out / f"s{s}" / "raw"
            t0 = time.perf_counter()
            log = synthetic_ml1m(raw, s, a.seed, a.zipf)
            log.pop("preferred")
            log["generate_seconds"] = round(time.perf_counter() - t0, 2)
            print(f"scale {s}: {log}", file=sys.stderr)
            for n in procs:
                work = a.out / f"s{s}" / f"procs{n}"
                if work.exists():
                    shutil.rmtree(work)
                run = {
                    "scale": s, "procs": n, "log": log, "test_period": None, "prepared": None,
                    "epochs": a.epochs, "rounds": a.rounds, "threads": threads, "steps": [],
                }  # fmt: skip
                results["runs"].append(run)

                def progress(row, run=run):
                    # A long run leaves its measurements behind as it goes.
                    run["steps"].append(row)
                    wall = f"{row['wall']:.1f} s" if "wall" in row else "not run"
                    print(f"  {row['step']}: {wall} {row.get('error', '')}", file=sys.stderr)
                    if a.json:
                        a.json.write_text(json.dumps(results, indent=2))

                steps, run["test_period"] = run_pipeline(
                    raw, work, n, threads, a.epochs, a.rounds, progress
                )
                run.update(steps=steps, prepared=prepared_counts(work))
                print(table(run) + "\n", flush=True)
        for n in procs:
            text = linearity(results["runs"], n)
            if text:
                print(text + "\n")
    finally:
        if a.json:
            a.json.write_text(json.dumps(results, indent=2))
        if tmp is not None:
            tmp.cleanup()
    failed = [r for run in results["runs"] for r in run["steps"] if r.get("rc", 0) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
