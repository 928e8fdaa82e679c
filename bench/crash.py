"""Crash harness: SIGKILL each state-changing command at random moments, then check that the
previous artifact still loads and that a rerun completes with an uninterrupted run's outputs.

    python bench/crash.py                        # 5 kills per command, seed 0
    python bench/crash.py --kills 5 --seed 1 --json crash.json

A tiny synthetic workspace (tests/synth.py: 30 users, 40 items; tiny model options) is built
once by running every command. Then, for each of prepare, tokenize-items, build-sids,
profile-groups, train-dsie, pco-round and recommend:

1. reference: the command runs uninterrupted on a copy of the workspace (with --force, or
   the next PCO round) and is timed (T);
2. each of the n kills: on a fresh copy the command starts in a child process and gets
   SIGKILL after a random delay (seeded): half of the kills anywhere in [0, T], half in the
   writes (from the moment the reference run's first temporary file or folder appeared to
   T), each half stratified (one kill per equal slice, uniform inside it). Then
   - what it left is counted: temporary files and folders, folders moved aside mid-swap,
     adapter and round folders newer than the track's state;
   - the next command's start (`Workspace.sweep`) cleans them, and the artifact loads
     through the workspace layer and holds the previous run's data or the reference's, file
     for file;
   - the rerun exits 0, leaves nothing behind and writes the reference's data files byte for
     byte (every command here is deterministic on the CPU; report files with timings are
     not compared).

Last, two `recommend --force` run at once: both must exit 0 and leave a loadable recs/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli import store  # noqa: E402
from coea_cli.errors import CoeaError  # noqa: E402
from coea_cli.serving import Reader  # noqa: E402
from coea_cli.workspace import Workspace, read_table  # noqa: E402
from coea_cli.workspace.tracks import unfinished_rounds  # noqa: E402
from tests.pco_fixtures import TINY  # noqa: E402
from tests.synth import make_log  # noqa: E402

SIDS = ["--hidden", "32", "--latent-dim", "8", "--epochs", "15", "--batch-size", "32"]
DSIE = ["--epochs", "2", "--hidden", "32", "--heads", "2", "--long-len", "20"]
DSIE += ["--short-len", "4", "--batch-size", "16", "--warmup", "2"]
COMMANDS = ("prepare", "tokenize-items", "build-sids", "profile-groups", "train-dsie",
            "pco-round", "recommend")  # fmt: skip
KEPT = ("previous", "new", "previous = new", "other")  # the artifact after a kill
SERVE = ["--round", "0", "--k", "10", "--n", "2", "--weights", "top-m"]


def steps(raw: dict) -> dict[str, tuple[list[str], list[str]]]:
    """command -> (arguments of every run, the data files compared)."""
    source = ["--source", str(raw["interactions"]), "--format", "table", "--items",
              str(raw["items"]), "--users", str(raw["users"]), "--min-user", "1",
              "--min-item", "1", "--periods", "0.5,0.25,0.25"]  # fmt: skip
    return {
        "prepare": ([*source, "--force"], ["data/interactions.parquet", "data/items.parquet",
                    "data/users.parquet", "data/dataset.json"]),
        "tokenize-items": (["--force"], ["items/item_text.parquet",
                           "items/item_emb.safetensors"]),
        "build-sids": ([*SIDS, "--force"], ["sids/sids.parquet", "sids/clusters.parquet",
                       "sids/rqvae.safetensors"]),
        "profile-groups": (["--groups", "3", "--force"], ["groups/groups.parquet",
                           "groups/personas.parquet", "groups/group_emb.safetensors"]),
        "train-dsie": ([*DSIE, "--force"], ["dsie/dsie.safetensors",
                       "dsie/user_states.safetensors", "dsie/config.json"]),
        # the base workspace has round 0: each run here is round 1
        "pco-round": ([str(a) for a in TINY], ["pco/state.json",
                      "llm/novelty/round-001/adapter_model.safetensors",
                      "llm/relevance/round-001/adapter_model.safetensors",
                      "pco/round-001/examples.parquet", "pco/round-001/candidates.parquet",
                      "pco/round-001/verified.parquet"]),
        "recommend": ([*SERVE, "--force"], ["recs/recs.parquet"]),
    }  # fmt: skip


def coea(work: Path, command: str, args: list[str], **popen) -> subprocess.Popen:
    """`coea COMMAND ARGS --work WORK` in a child process of its own process group."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "coea_cli", command, *args, "--work", str(work)]
    return subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, **popen
    )


def run(work: Path, command: str, args: list[str]) -> tuple[float, float | None]:
    """Run to the end; exit 0 or stop with its stderr. Returns the wall time and when its
    writes began: the first moment a temporary entry appeared in the workspace."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = coea(work, command, args, stderr=err)
        writing = None
        while p.poll() is None:
            if writing is None and work.exists() and sum(leftovers(work).values()):
                writing = time.perf_counter() - t0
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"coea {command} exited {p.returncode}:\n{err.read()}")
    return seconds, writing


def moments(n: int, seconds: float, writing: float | None, rng: random.Random) -> list[float]:
    """n kill delays: the even ones spread over the whole run, the odd ones over its writes
    (from `writing` to the end), each set stratified (one per equal slice, uniform inside)."""
    windows = [(0.0, seconds), (writing if writing is not None else 0.0, seconds)]
    out = []
    for j in range(n):
        lo, hi = windows[j % 2]
        m = (n + 1 - j % 2) // 2  # kills in this window
        out.append(lo + (j // 2 + rng.random()) / m * (hi - lo))
    return out


def build(folder: Path) -> tuple[Path, dict]:
    """The tiny workspace, every command run once (pco-round: round 0), and the steps."""
    raw = make_log(folder / "raw", n_users=30, n_items=40, per_user=24)
    work = folder / "base"
    plan = steps(raw)
    for command, (args, _) in plan.items():
        run(work, command, args)
    return work, plan


def digest(work: Path, files: list[str]) -> dict:
    return {f: store.sha256_file(work / f) if (work / f).is_file() else None for f in files}


def leftovers(work: Path) -> dict:
    """What dead processes left: temporary entries, folders moved aside, unfinished rounds."""
    found = {".tmp-": 0, ".old-": 0}
    for _, dirs, files in os.walk(work):
        for name in dirs + files:
            kind = store.leftover(name)
            if kind is not None:
                found[kind[0]] += 1
        dirs[:] = [d for d in dirs if store.leftover(d) is None]
    return {"temporary": found[".tmp-"], "moved_aside": found[".old-"],
            "unfinished_rounds": len(unfinished_rounds(work))}  # fmt: skip


def load(work: Path, command: str) -> None:
    """Read the command's artifact through the workspace layer (raises when it cannot)."""
    ws = Workspace(work)
    if command == "prepare":
        ws.history()
    elif command == "tokenize-items":
        ws.item_embedding("fused"), ws.item_texts()
    elif command == "build-sids":
        ws.sids()
    elif command == "profile-groups":
        ws.groups(), ws.persona_embeddings()
    elif command == "train-dsie":
        ws.dsie_weights(), ws.user_states(), ws.dsie_config()
    elif command == "pco-round":
        track = ws.track()
        state = track.require_state()
        for role in ("novelty", "relevance"):
            track.recorded_adapter(state["current"][role])
    elif command == "recommend":
        read_table(ws.recs().file("table"), "recommend")
        reader = Reader(ws.recs().file("lmdb"))
        assert reader.version, "recs.lmdb has no meta"
        reader.close()


def trial(base: Path, tmp: Path, step: tuple, command: str, delay: float, reference: dict):
    """One kill after `delay` seconds, the checks, the rerun."""
    args, files = step
    work = tmp / "trial"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    before = digest(work, files)
    p = coea(work, command, args, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    killed = p.poll() is None
    if killed:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    left = leftovers(work)
    Workspace(work).sweep()  # what the next command does first
    try:
        load(work, command)
        loads = True
    except CoeaError as e:
        loads = str(e)
    now = digest(work, files)
    kept = "other"
    if now == before:
        kept = "previous = new" if before == reference else "previous"
    elif now == reference:
        kept = "new"
    row = {"delay_s": round(delay, 2), "killed": killed, "left": left, "loads": loads}
    row["kept"] = kept
    row["rerun_s"] = round(run(work, command, args)[0], 1)
    row["clean_after_rerun"] = not any(leftovers(work).values())
    row["same_as_uninterrupted"] = digest(work, files) == reference
    return row


def concurrent_recommend(base: Path, tmp: Path, args: list[str]) -> dict:
    work = tmp / "concurrent"
    shutil.copytree(base, work)
    procs = [coea(work, "recommend", args, stderr=subprocess.DEVNULL) for _ in range(2)]
    codes = [p.wait() for p in procs]
    load(work, "recommend")
    return {"exit_codes": codes, "loads": True, "clean": not any(leftovers(work).values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="kills per command")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default=",".join(COMMANDS), help="comma separated")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    t_start = time.perf_counter()
    out = {"kills_per_command": a.kills, "seed": a.seed, "commands": {}}
    with tempfile.TemporaryDirectory(prefix="coea-crash-") as d:
        tmp = Path(d)
        base, plan = build(tmp)
        out["build_s"] = round(time.perf_counter() - t_start, 1)
        for command in a.commands.split(","):
            args, files = plan[command]
            ref = tmp / "reference"
            shutil.rmtree(ref, ignore_errors=True)
            shutil.copytree(base, ref)
            t0 = time.perf_counter()
            seconds, writing = run(ref, command, args)
            reference = digest(ref, files)
            delays = moments(a.kills, seconds, writing, rng)
            rows = [trial(base, tmp, plan[command], command, d, reference) for d in delays]
            out["commands"][command] = {
                "uninterrupted_s": round(seconds, 1),
                "writes_from_s": None if writing is None else round(writing, 2),
                "harness_s": round(time.perf_counter() - t0, 1),
                "trials": rows,
            }
            print(summary_line(command, out["commands"][command]), flush=True)
        out["concurrent_recommend"] = concurrent_recommend(base, tmp, plan["recommend"][0])
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    print(f"concurrent recommend: {out['concurrent_recommend']}")
    print(f"total {out['total_s']} s (workspace built in {out['build_s']} s)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    bad = [
        c
        for c, v in out["commands"].items()
        for r in v["trials"]
        if r["loads"] is not True
        or r["kept"] == "other"
        or not (r["clean_after_rerun"] and r["same_as_uninterrupted"])
    ]
    if bad or out["concurrent_recommend"]["exit_codes"] != [0, 0]:
        raise SystemExit(f"failed: {sorted(set(bad)) or 'concurrent recommend'}")


def summary_line(command: str, figures: dict) -> str:
    rows = figures["trials"]
    left = {k: sum(r["left"][k] for r in rows) for k in rows[0]["left"]}
    kept = {k: sum(r["kept"] == k for r in rows) for k in KEPT}
    return (
        f"{command:15s} T={figures['uninterrupted_s']:5.1f}s "
        f"killed {sum(r['killed'] for r in rows)} of {len(rows)}; left behind {left}; "
        f"after the sweep: loads {sum(r['loads'] is True for r in rows)}, holds {kept}; "
        "reruns clean "
        f"{sum(r['clean_after_rerun'] for r in rows)}, equal to uninterrupted "
        f"{sum(r['same_as_uninterrupted'] for r in rows)}; {figures['harness_s']} s"
    )


if __name__ == "__main__":
    main()
