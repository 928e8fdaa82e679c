"""The Relevance LLM's judging in `recommend`, each prompt whole against shared contexts once.

    python bench/relevance_prefix.py WORK [--users N] [--threads T] [--json out.json]

WORK is a workspace after `recommend` (e.g. `make demo`'s). The candidates of every user (or
the first N) are built as `recommend` builds them, with the main track's current adapters:
the Novelty LLM's draws, then the Relevance LLM judging each distinct draw. The judging runs
twice on the same prompts, side by side: every prompt whole (batched by length), and the
prompts grouped by their shared context, each context once with its key/value cache copied
to its candidates (`coea_cli.llm.prefix`). Reports prompts, groups, tokens, wall and CPU
seconds of each, their ratio and the largest difference of P(Yes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coea_cli.evaluation.stored import serving_options  # noqa: E402
from coea_cli.llm import decoding, prefix  # noqa: E402
from coea_cli.recs.engine import Engine, track_variant  # noqa: E402
from coea_cli.workspace import MAIN, Workspace  # noqa: E402


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("work", type=Path)
    ap.add_argument("--users", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ws = Workspace(a.work)
    serve, seed = serving_options(ws)
    test = int(ws.dataset()["test_period"])
    engine = Engine(ws, test, "cpu")
    users = np.arange(engine.world.n_users)[: a.users]
    variant = track_variant(ws, ws.track(MAIN), "cpu", seed, before=test)
    calls = []
    original = decoding.relevance_scores

    def capture(model, tok, prompts, **kw):
        calls.append((model, tok, list(prompts)))
        return original(model, tok, prompts, **kw)

    decoding.relevance_scores = capture
    engine.candidates(users, variant, serve, seed)
    decoding.relevance_scores = original
    model, tok, prompts = calls[0]
    ids = decoding.encode_prompts(tok, prompts)
    groups = prefix.prefix_groups(ids)
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch thread(s)",
        "load_average": os.getloadavg(),
        "users": len(users),
        "prompts": len(prompts),
        "groups": len(groups),
        "tokens_whole": sum(len(x) for x in ids),
        "tokens_shared": sum(n + sum(len(ids[i]) - n for i in m) for n, m in groups),
    }
    out = {}
    for name, shared in (("whole", False), ("shared", True), ("whole_again", False)):
        prefix_ok = prefix.supports_prefix
        prefix.supports_prefix = (lambda m: True) if shared else (lambda m: False)
        w0, c0 = time.perf_counter(), time.process_time()
        out[name] = original(model, tok, prompts, batch_size=32)
        res[f"{name}_wall_s"] = time.perf_counter() - w0
        res[f"{name}_cpu_s"] = time.process_time() - c0
        prefix.supports_prefix = prefix_ok
    whole = min(res["whole_wall_s"], res["whole_again_wall_s"])
    res["speedup_wall"] = whole / res["shared_wall_s"]
    res["max_abs_diff"] = float((out["whole"] - out["shared"]).abs().max())
    for k, v in res.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
