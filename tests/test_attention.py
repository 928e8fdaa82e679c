"""coea_kernels.attention against float64 attention math (Triton interpreted on CPU)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coea_kernels import attention

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    import triton

    from coea_kernels import triton_attention as ta
needs_triton = pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed (the CPU install leaves it out)"
)

ROOT = Path(__file__).resolve().parents[1]
# Bound on max|x - ref| / max|ref| for the output and for each gradient.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# Floor of the denominator: gradients that are exactly 0 in theory (L = 1) are compared absolutely.
REF_FLOOR = 1e-2

# (id, B, Hq, Hkv, L, D, causal, padding, lengths or None)
CASES = [
    ("g1-right-causal-L37-D16", 3, 2, 2, 37, 16, True, "right", [37, 0, 1]),
    ("g2-left-causal-L50-D48", 3, 4, 2, 50, 48, True, "left", [50, 1, 23]),
    ("g7-right-causal-L70-D64", 2, 7, 1, 70, 64, True, "right", [70, 33]),
    ("g2-left-full-L37-D128", 2, 2, 1, 37, 128, False, "left", [0, 30]),
    ("g7-right-full-L50-D40", 3, 7, 1, 50, 40, False, "right", [1, 50, 17]),
    ("g1-nopad-causal-L64-D64", 2, 2, 2, 64, 64, True, "right", None),
    ("g2-left-causal-L1-D32", 2, 2, 1, 1, 32, True, "left", [1, 0]),
    # Left-padded rows whose tiles start mid-block (31, 33), a whole number of blocks (64, 16),
    # and empty: the kernels' tiles follow each row's start, an extra tile zero-fills the rest.
    ("g2-left-causal-L64-D32", 4, 4, 2, 64, 32, True, "left", [64, 33, 0, 31]),
    ("g2-left-full-L45-D16", 3, 2, 1, 45, 16, False, "left", [16, 7, 45]),
]
CUDA_CASES = [
    ("g1-right-causal-L200-D32", 4, 2, 2, 200, 32, True, "right", [200, 0, 1, 77]),
    ("g2-left-causal-L333-D96", 3, 4, 2, 333, 96, True, "left", [333, 150, 1]),
    ("g7-right-causal-L257-D64", 2, 14, 2, 257, 64, True, "right", [257, 100]),
    ("g7-left-full-L130-D80", 2, 7, 1, 130, 80, False, "left", [0, 129]),
    ("g1-nopad-causal-L512-D128", 2, 2, 2, 512, 128, True, "right", None),
]


def math_attention(q, k, v, causal, lengths, padding, scale):
    """Softmax over masked scores, in the input precision (use float64); padded queries give 0."""
    batch, hq, seq_len, _ = q.shape
    k = k.repeat_interleave(hq // k.shape[1], dim=1)
    v = v.repeat_interleave(hq // v.shape[1], dim=1)
    pos = torch.arange(seq_len)
    n = torch.full((batch,), seq_len) if lengths is None else lengths.cpu()
    if padding == "right":
        valid = pos[None, :] < n[:, None]
    else:
        valid = pos[None, :] >= seq_len - n[:, None]
    allowed = valid[:, :, None] & valid[:, None, :]
    if causal:
        allowed = allowed & (pos[None, None, :] <= pos[None, :, None])
    allowed = allowed[:, None].to(q.device)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key give 0
    return probs @ v, valid.to(q.device)


def _poisoned(fn):
    def alloc(*args, **kwargs):
        out = fn(*args, **kwargs)
        return out.fill_(float("nan") if out.is_floating_point() else -(2**30))

    return alloc


def _inputs(case, dtype, device, seed=0):
    _, batch, hq, hkv, seq_len, dim, *_ = case
    gen = torch.Generator().manual_seed(seed)

    def make(heads):
        x = torch.randn(batch, heads, seq_len, dim, generator=gen)
        return x.to(device=device, dtype=dtype).requires_grad_()

    q, k, v = make(hq), make(hkv), make(hkv)
    do = torch.randn(q.shape, generator=gen).to(device=device, dtype=dtype)
    return q, k, v, do


def rel_err(x, ref):
    return float((x.double() - ref).abs().max() / ref.abs().max().clamp_min(REF_FLOOR))


def check_case(case, dtype, device, backend, monkeypatch=None, seed=0):
    *_, dim, causal, padding, lens = case
    q, k, v, do = _inputs(case, dtype, device, seed)
    lengths = None if lens is None else torch.tensor(lens, device=device)
    scale = dim**-0.5
    if monkeypatch is not None:  # every buffer the kernels allocate starts as NaN
        monkeypatch.setattr(torch, "empty", _poisoned(torch.empty))
        monkeypatch.setattr(torch, "empty_like", _poisoned(torch.empty_like))
    out = attention(q, k, v, causal=causal, lengths=lengths, padding=padding, backend=backend)
    out.backward(do)
    if monkeypatch is not None:
        monkeypatch.undo()

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, valid = math_attention(q64, k64, v64, causal, lengths, padding, scale)
    ref.backward(do.double())

    pad_q = ~valid[:, None, :, None]
    for name, got in (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
    # Padded positions: exactly zero output and zero gradients.
    assert (out.masked_select(pad_q) == 0).all()
    assert (q.grad.masked_select(pad_q) == 0).all()
    assert (k.grad.masked_select(pad_q) == 0).all()
    assert (v.grad.masked_select(pad_q) == 0).all()
    errors = {
        "out": rel_err(out.detach(), ref.detach()),
        "dq": rel_err(q.grad, q64.grad),
        "dk": rel_err(k.grad, k64.grad),
        "dv": rel_err(v.grad, v64.grad),
    }
    bad = {name: err for name, err in errors.items() if err > TOL[dtype]}
    assert not bad, f"errors over {TOL[dtype]:g}: {bad}"
    return out


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_interpreter(case, dtype, monkeypatch):
    if not ta.INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    check_case(case, dtype, "cpu", "triton", monkeypatch)


@needs_triton
def test_later_calls_skip_the_autotuner(monkeypatch):
    """After a kernel's first call for an autotuning key, it is launched with the config the
    autotuner chose, directly; results stay right (new lengths, same key)."""
    if not ta.INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    monkeypatch.setattr(ta, "_BEST", {})
    case = CASES[1]
    check_case(case, torch.float32, "cpu", "triton")
    assert sorted(key[0] for key in ta._BEST) == [
        "_bwd_dkdv_kernel",
        "_bwd_dq_kernel",
        "_fwd_kernel",
    ]

    def entered(*args, **kwargs):
        raise AssertionError("the autotuner ran again")

    monkeypatch.setattr(type(ta._fwd_kernel), "run", entered)
    check_case((*case[:-1], [17, 50, 0]), torch.float32, "cpu", "triton", seed=1)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_torch_reference(case):
    check_case(case, torch.float32, "cpu", "torch")


@needs_triton
def test_strided_inputs_and_scale():
    """Inputs in [B, L, H, D] memory (as transformers makes them) and a custom scale."""
    if not ta.INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    gen = torch.Generator().manual_seed(3)
    batch, hq, hkv, seq_len, dim = 2, 4, 2, 29, 32
    q = torch.randn(batch, seq_len, hq, dim, generator=gen).transpose(1, 2)
    k = torch.randn(batch, seq_len, hkv, dim, generator=gen).transpose(1, 2)
    v = torch.randn(batch, seq_len, hkv, dim, generator=gen).transpose(1, 2)
    lengths = torch.tensor([20, 29])
    got = attention(q, k, v, lengths=lengths, padding="left", scale=0.3, backend="triton")
    assert got.stride() == q.stride()
    want = attention(
        q.contiguous(), k.contiguous(), v.contiguous(), lengths=lengths, padding="left",
        scale=0.3, backend="torch",
    )  # fmt: skip
    assert (got - want).abs().max() < 1e-5


def test_kernel_lengths_need_no_copy():
    """The Triton path hands the lengths to the kernels as they are (they compute each row's
    range themselves); only an unusual dtype or layout is converted."""
    from coea_kernels.attention import _kernel_lengths

    for dtype in (torch.int32, torch.int64):
        lengths = torch.tensor([3, 0, 7], dtype=dtype)
        assert _kernel_lengths(lengths, 3, lengths.device) is lengths
    assert _kernel_lengths(None, 3, torch.device("cpu")) is None
    broadcast = _kernel_lengths(torch.tensor([5]).expand(3), 3, torch.device("cpu"))
    assert broadcast.stride() == (1,) and broadcast.tolist() == [5, 5, 5]
    small = _kernel_lengths(torch.tensor([1, 2], dtype=torch.int16), 2, torch.device("cpu"))
    assert small.dtype == torch.int32 and small.tolist() == [1, 2]
    with pytest.raises(ValueError, match="shape"):
        _kernel_lengths(torch.tensor([1, 2]), 3, torch.device("cpu"))


def test_argument_errors(monkeypatch):
    q = torch.randn(1, 3, 8, 16)
    k = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, k)
    with pytest.raises(ValueError, match="head dim"):
        attention(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        attention(k, k, k, padding="middle")
    with pytest.raises(ValueError, match="backend"):
        attention(k, k, k, backend="cuda")
    with pytest.raises(ValueError, match="lengths"):
        attention(k, k, k, lengths=torch.tensor([1.5]))
    if HAS_TRITON:
        monkeypatch.setattr(ta, "INTERPRET", False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            attention(k, k, k, backend="triton")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no triton
    with pytest.raises(RuntimeError, match=r"pip install 'coea\[cuda\]'"):
        attention(k, k, k, backend="triton")
    assert attention(k, k, k, backend="auto").shape == k.shape  # the PyTorch path


@needs_triton
def test_autotune_configs(monkeypatch):
    """One config under the interpreter; on GPU a table per dtype and head dim, pruned to the
    length; COEA_ATTN_PIN=1 keeps the first config that fits."""
    kernels = {"fwd": (ta._fwd_kernel, ta._FWD), "dkdv": (ta._bwd_dkdv_kernel, ta._DKDV),
               "dq": (ta._bwd_dq_kernel, ta._DQ)}  # fmt: skip
    for kind, (kernel, table) in kernels.items():
        every = {row for rows in table.values() for row in rows}
        if ta.INTERPRET:
            assert [ta._row(c) for c in kernel.configs] == [ta._INTERPRET[kind]]
        else:
            assert len(kernel.configs) == len(every)
        assert ta.table_rows(table, torch.float32, 32) == table["fp32"]
        assert ta.table_rows(table, torch.bfloat16, 32) == table["d32"]
        assert ta.table_rows(table, torch.float16, 64) == table["d64"]
        assert ta.table_rows(table, torch.float16, 128) == table["16bit"]
    every = list(dict.fromkeys(row for rows in ta._FWD.values() for row in rows))
    configs = [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in every
    ]  # fmt: skip
    prune = ta._pruner(ta._FWD)["early_config_prune"]
    half, single = torch.empty(1, dtype=torch.float16), torch.empty(1)
    for block_d, name in ((32, "d32"), (64, "d64"), (128, "16bit")):
        long = prune(configs, {"L_KEY": 4096, "Q": half}, BLOCK_D=block_d)
        assert [ta._row(c) for c in long] == ta._FWD[name]
    fp32 = prune(configs, {"L_KEY": 4096, "Q": single}, BLOCK_D=64)
    assert [ta._row(c) for c in fp32] == ta._FWD["fp32"]
    short = prune(configs, {"L_KEY": 64, "Q": half}, BLOCK_D=128)
    assert 0 < len(short) < len(ta._FWD["16bit"])
    assert all(c.kwargs["BLOCK_M"] <= 64 and c.kwargs["BLOCK_N"] <= 64 for c in short)
    (tiny,) = prune(configs, {"L_KEY": 16, "Q": half}, BLOCK_D=128)  # nothing fits: smallest
    assert tiny.kwargs["BLOCK_M"] * tiny.kwargs["BLOCK_N"] == min(
        m * n for m, n, _, _ in ta._FWD["16bit"]
    )
    monkeypatch.setattr(ta, "PIN", True)
    (pinned,) = prune(configs, {"L_KEY": 4096, "Q": half}, BLOCK_D=32)
    assert ta._row(pinned) == ta._FWD["d32"][0]
    assert ta._l_key(200) == 256 and ta._l_key(3) == 16


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_attention", ROOT / "bench" / "attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_triton
def test_bench_flops_and_smoke(tmp_path):
    bench = _load_bench()
    # Causal rows of 3 and 4 tokens: 6 + 10 attended pairs, times 4 * D * heads.
    assert bench.forward_flops(torch.tensor([3, 4]), heads=2, dim=16) == 16 * 4 * 16 * 2
    assert bench.forward_flops(torch.tensor([3]), heads=1, dim=16, causal=False) == 9 * 4 * 16
    path = tmp_path / "smoke.json"
    assert bench.main(["--cpu-smoke", "--padding", "left", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    methods = {r["method"] for r in rows}
    assert {"torch", "sdpa-math", "flash-nopad"} <= methods
    if ta.INTERPRET:
        (mine,) = [r for r in rows if r["method"] == "triton"]
        assert mine["max_err"] < 1e-4 and mine["speedup_fwd"] > 0 and mine["of_flash_fwd"] > 0


@needs_triton
def test_compiles_for_hopper():
    """The CUDA path (not the interpreter) compiles for sm_90 with a small set of configs."""
    code = (
        "import sys, torch; sys.path.insert(0, 'bench'); import attention as b;"
        "from coea_kernels import triton_attention as ta;"
        "dt = [torch.float16, torch.float32];"
        "rows = list(b.compile_check(dt, [32], [True], limit=1, paddings=['left']));"
        "rows += list(b.compile_check(dt, [48], [True], limit=1, paddings=[None]));"
        "assert rows and all(r['shared_bytes'] > 0 for r in rows), rows;"
        "assert all(r['wgmma'] for r in rows if r['dtype'] == 'fp16'), rows;"
        "print(len(rows))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 dtypes x 3 kernels, left padding at D=32 and no lengths at D=48
    assert int(done.stdout.split()[-1]) == 2 * 2 * 3


@needs_triton
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CUDA_CASES + CASES, ids=[c[0] for c in CUDA_CASES + CASES])
def test_triton_cuda(case, dtype, monkeypatch):
    check_case(case, dtype, "cuda", "triton", monkeypatch)


@needs_triton
@pytest.mark.cuda
@pytest.mark.parametrize("case", CUDA_CASES[:2], ids=[c[0] for c in CUDA_CASES[:2]])
def test_triton_cuda_fp32_and_auto(case):
    out = check_case(case, torch.float32, "cuda", "auto")
    assert out.is_cuda
