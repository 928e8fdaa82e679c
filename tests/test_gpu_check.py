"""bench/gpu_check.sh and its helpers without a GPU: a clear stop, and the closing table."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: it would run")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@no_cuda
def test_gpu_check_without_cuda_stops_at_once(tmp_path):
    begin = time.perf_counter()
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out")],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device" in done.stderr and "nothing run" in done.stderr
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - begin < 60


@no_cuda
def test_qlora_step_without_cuda_stops(tmp_path, capsys):
    assert _load("qlora_step").main(["--model", str(tmp_path / "model")]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "model").exists()


def test_summary_table(tmp_path, capsys):
    def row(shape, padding, method, fwd, both):
        return {"shape": shape, "padding": padding, "method": method, "fwd_ms": fwd,
                "fwd_bwd_ms": both}  # fmt: skip

    rows = []
    for padding in ("right", "left"):
        rows += [
            row("dsie-small", padding, "triton", 0.04, 0.10),
            row("dsie-small", padding, "sdpa-efficient", 0.13, 0.43),
            row("dsie-small", padding, "sdpa-math", 0.50, 1.20),
            row("dsie-small", padding, "flash-nopad", 0.046, 0.371),
            row("dsie-long", padding, "triton", 0.20, 0.60),
            row("dsie-long", padding, "sdpa-efficient", 0.50, 1.60),
            row("dsie-long", padding, "flash-nopad", 0.12, 0.56),
        ]
    meta = {"dtype": "bf16", "device": "H200", "torch": "2.13", "triton": "3.9"}
    (tmp_path / "attention.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    (tmp_path / "walltimes.tsv").write_text("attention\t101.5\tok\nqlora\t0\tskipped (budget)\n")
    bench = _load("attention")
    assert bench.summary(tmp_path) == 0
    text = capsys.readouterr().out
    lines = [line.split() for line in text.splitlines()]
    small = next(line for line in lines if line[:2] == ["dsie-small", "right"])
    # Time ratios: best SDPA 0.13 / 0.04 = 3.25 and 0.43 / 0.10 = 4.30 (goal 3: met); flash
    # does not count at dsie-small.
    assert small[2:5] == ["0.040", "/", "0.100"] and small[11:15] == ["3.25", "/", "4.30", "ok"]
    assert small[-1] == "-"
    long = next(line for line in lines if line[:2] == ["dsie-long", "left"])
    # SDPA 0.50 / 0.20 = 2.50 (missed); flash 0.12 / 0.20 = 0.60 and 0.56 / 0.60 = 0.93.
    assert long[11:15] == ["2.50", "/", "2.67", "MISS"] and long[15:] == [
        "0.60",
        "/",
        "0.93",
        "MISS",
    ]
    assert "skipped (budget)" in text
    assert bench.summary(tmp_path / "empty") == 1
