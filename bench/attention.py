"""Benchmark coea_kernels.attention against SDPA with a padding mask and flash without padding.

    python bench/attention.py [--dtype bf16|fp16] [--padding right [left]] [--json PATH]
    python bench/attention.py --summary OUTDIR  # gpu_check.sh's closing table from its JSON
    python bench/attention.py --cpu-smoke       # tiny shapes on CPU (Triton only if
                                                # TRITON_INTERPRET=1)
    python bench/attention.py --compile-check   # compile every kernel config for sm_90, no GPU

Row b gets a random valid length in [L/4, L]. TFLOP/s count only the valid work: per row, the
sum over valid queries of the keys they attend, times 4*D flops (forward); backward counts 2.5x
the forward. "flash-nopad" runs the full unpadded causal problem and is credited its full work.
Ratios for the Triton kernel, both of times: speedup = best masked SDPA time / Triton time
(goal >= 3 at every shape); "of flash" = best flash-nopad time / Triton time (goal >= 0.8 at
dsie-long and llm-prompt). Both paddings in one run share the autotuning. SDPA variants that do
not run on these inputs are skipped (reported on stderr).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coea_kernels import attention
from coea_kernels.reference import position_masks, valid_range

SHAPES = {  # name: (B, Hq, Hkv, L, D), from DESIGN.md section 3
    "dsie-small": (256, 2, 2, 200, 32),
    "dsie-long": (128, 4, 4, 512, 64),
    "llm-prompt": (16, 14, 2, 1024, 64),
}
SMOKE_SHAPES = {"smoke-gqa": (2, 4, 2, 24, 48)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def random_lengths(batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    low = max(1, seq_len // 4)
    return torch.randint(low, seq_len + 1, (batch,), generator=gen)


def forward_flops(lengths: torch.Tensor, heads: int, dim: int, causal: bool = True) -> float:
    n = lengths.double()
    pairs = n * (n + 1) / 2 if causal else n * n
    return float(4 * dim * heads * pairs.sum())


def _sdpa_variants(q, k, v, mask):
    """Masked SDPA callables: each kernel backend, with enable_gqa or a kv repeat."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    backends = {"math": SDPBackend.MATH}
    if q.is_cuda:
        backends.update(efficient=SDPBackend.EFFICIENT_ATTENTION, cudnn=SDPBackend.CUDNN_ATTENTION)
    variants = {}
    for name, backend in backends.items():

        def gqa(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        def repeat(backend=backend):
            kk = k.repeat_interleave(group, dim=1)
            vv = v.repeat_interleave(group, dim=1)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)

        variants[f"sdpa-{name}"] = gqa
        if group > 1:
            variants[f"sdpa-{name}+repeat"] = repeat
    return variants


def _flash_nopad(q, k, v):
    """Unpadded causal SDPA (the flash kernel on CUDA), with enable_gqa or a kv repeat."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]

    def run(repeat=False):
        kk = k.repeat_interleave(group, dim=1) if repeat else k
        vv = v.repeat_interleave(group, dim=1) if repeat else v
        if not q.is_cuda:  # the CPU picks its own kernel
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=not repeat)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=not repeat)

    variants = {"flash-nopad": run}
    if group > 1:
        variants["flash-nopad+repeat"] = lambda: run(repeat=True)
    return variants


def _time(fn, backward: bool, tensors, do, cuda: bool, reps: int) -> float:
    def step():
        out = fn()
        if backward:
            out.backward(do)

    if cuda:
        import triton.testing

        return triton.testing.do_bench(step, grad_to_none=tensors, return_mode="median")
    times = []
    for _ in range(reps + 1):
        for t in tensors:
            t.grad = None
        begin = time.perf_counter()
        step()
        times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times[1:])


def bench_shape(name, shape, dtype, padding, device, methods, reps, seed):
    batch, hq, hkv, seq_len, dim = shape
    gen = torch.Generator().manual_seed(seed)
    lengths = random_lengths(batch, seq_len, gen)

    def make(heads):
        x = torch.randn(batch, heads, seq_len, dim, generator=gen, dtype=torch.float32)
        return x.to(device=device, dtype=dtype).requires_grad_()

    q, k, v = make(hq), make(hkv), make(hkv)
    do = torch.randn(q.shape, generator=gen).to(device=device, dtype=dtype)
    lengths_dev = lengths.to(device)
    starts, ends = valid_range(lengths_dev, batch, seq_len, padding, device)
    valid, allowed = position_masks(starts, ends, seq_len, causal=True)
    mask = (allowed | ~valid[:, :, None])[:, None]  # padded queries attend all: no NaN rows

    calls = {}
    for method in methods:
        if method in ("triton", "torch"):
            calls[method] = lambda b=method: attention(
                q, k, v, lengths=lengths_dev, padding=padding, backend=b
            )
        elif method == "sdpa-masked":
            calls.update(_sdpa_variants(q, k, v, mask))
        elif method == "flash-nopad":
            calls.update(_flash_nopad(q, k, v))

    flops = forward_flops(lengths, hq, dim)
    full_flops = forward_flops(torch.full((batch,), seq_len), hq, dim)
    cuda = device.type == "cuda"
    with torch.no_grad():
        reference = attention(
            q, k, v, lengths=lengths_dev, padding=padding, backend="torch"
        ).float()
    rows = []
    for method, fn in calls.items():
        try:
            out = fn()
            fwd = _time(fn, False, [q, k, v], do, cuda, reps)
            both = _time(fn, True, [q, k, v], do, cuda, reps)
        except RuntimeError as err:  # an SDPA backend that does not take these inputs
            print(
                f"  {name} {method}: unavailable ({str(err).splitlines()[0][:80]})", file=sys.stderr
            )
            continue
        work = full_flops if method.startswith("flash-nopad") else flops
        row = {
            "shape": name, "padding": padding, "method": method, "fwd_ms": fwd, "fwd_bwd_ms": both,
            "fwd_tflops": work / fwd / 1e9, "fwd_bwd_tflops": 3.5 * work / both / 1e9,
        }  # fmt: skip
        if method == "triton":
            row["max_err"] = float((out.detach().float() - reference).abs().max())
        rows.append(row)
    return rows, lengths


def add_ratios(rows):
    """Time ratios of the Triton kernel: best masked SDPA / Triton, best flash-nopad / Triton."""
    for shape, padding in {(r["shape"], r.get("padding")) for r in rows}:
        mine = [r for r in rows if r["shape"] == shape and r.get("padding") == padding]
        triton_row = next((r for r in mine if r["method"] == "triton"), None)
        sdpa = [r for r in mine if r["method"].startswith("sdpa-")]
        flash = [r for r in mine if r["method"].startswith("flash-nopad")]
        if triton_row is None:
            continue
        for key in ("fwd", "fwd_bwd"):
            if sdpa:
                best = min(sdpa, key=lambda r, key=key: r[f"{key}_ms"])
                triton_row[f"best_sdpa_{key}"] = best["method"]
                triton_row[f"speedup_{key}"] = best[f"{key}_ms"] / triton_row[f"{key}_ms"]
            if flash:
                best = min(r[f"{key}_ms"] for r in flash)
                triton_row[f"of_flash_{key}"] = best / triton_row[f"{key}_ms"]
    return rows


def print_table(rows):
    head = (
        f"{'shape':<11} {'pad':<5} {'method':<22} {'fwd ms':>9} {'TFLOP/s':>8} {'fwd+bwd ms':>11} "
        f"{'TFLOP/s':>8} {'max err':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['shape']:<11} {r.get('padding', ''):<5} {r['method']:<22} {r['fwd_ms']:>9.3f} {r['fwd_tflops']:>8.2f} "
            f"{r['fwd_bwd_ms']:>11.3f} {r['fwd_bwd_tflops']:>8.2f} "
            + (f"{r['max_err']:>9.2e}" if "max_err" in r else "")
        )
    print()
    for r in rows:
        if r["method"] != "triton":
            continue
        parts = [r["shape"], r.get("padding", "")]
        for key, label in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
            if f"speedup_{key}" in r:
                parts.append(f"{label}: {r[f'speedup_{key}']:.2f}x vs {r[f'best_sdpa_{key}']}")
            if f"of_flash_{key}" in r:
                parts.append(f"{label}: flash-nopad time / ours {r[f'of_flash_{key}']:.2f}")
        print("  ".join(parts))


def compile_check(
    dtypes, dims, causals=(True, False), limit=None, arch: int = 90,
    paddings=("right", "left", None),
):  # fmt: skip
    """Compile every autotune config of every kernel for a CUDA target (no GPU needed).

    Yields one dict per compiled kernel: shared memory, async copies (software pipelining of
    the loads) and whether Hopper warp-group MMA (wgmma) is used. `limit`: first configs only;
    `paddings`: "right", "left" (lengths read by the kernels) and/or None (no lengths)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("--compile-check needs TRITON_INTERPRET unset")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from coea_kernels import triton_attention as ta

    names = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    target = GPUTarget("cuda", arch, 32)
    kernels = [
        (ta._fwd_kernel, ta._FWD, ("Q", "K", "V", "OUT"), ("LSE",)),
        (ta._bwd_dq_kernel, ta._DQ, ("Q", "K", "V", "OUT", "DO", "DQ"), ("LSE", "DELTA")),
        (ta._bwd_dkdv_kernel, ta._DKDV, ("Q", "K", "V", "DO", "DK", "DV"), ("LSE", "DELTA")),
    ]
    for dtype in dtypes:
        name = names[str(dtype).split(".")[1]]
        for dim in dims:
            q, k = torch.empty(1, 2, 1, dim, dtype=dtype), torch.empty(1, 1, 1, dim)
            for padding in paddings:
                lengths = None if padding is None else torch.empty(1)
                common = ta._common(q, k, lengths, padding or "right")
                for causal in causals:
                    for tuner, table, tensors, floats in kernels:
                        for m, n, warps, stages in ta.table_rows(table, dtype, common["BLOCK_D"])[
                            :limit
                        ]:
                            config = triton.Config(
                                {"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages
                            )
                            consts = {**common, "CAUSAL": causal, **config.kwargs}
                            if padding is None:
                                consts["LENS"] = None
                            row = _compile_one(tuner.fn, name, tensors, floats, consts, config,
                                               target, ASTSource, triton)  # fmt: skip
                            yield {**row, "padding": padding or "none"}


def _compile_one(fn, dtype_name, tensors, fp32_tensors, consts, config, target, ast_source, triton):
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        elif arg in tensors:
            signature[arg] = f"*{dtype_name}"
        elif arg in fp32_tensors:
            signature[arg] = "*fp32"
        elif arg == "LENS":
            signature[arg] = "*i32"
        elif arg in ("qk_scale", "scale"):
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
        # What the launcher infers for aligned pointers and strides that are multiples of 16.
        if signature[arg].startswith("*") or arg.startswith("s"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    begin = time.perf_counter()
    src = ast_source(fn, signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    compiled = triton.compile(src, target=target, options=options)
    ttgir = compiled.asm["ttgir"]
    return {
        "kernel": fn.__name__, "dtype": dtype_name, "head_dim": consts["HEAD_DIM"],
        "causal": consts.get("CAUSAL"), "block_m": consts.get("BLOCK_M"),
        "block_n": consts.get("BLOCK_N"), "warps": config.num_warps, "stages": config.num_stages,
        "shared_bytes": compiled.metadata.shared, "async_copies": ttgir.count("async_copy"),
        "wgmma": ttgir.count("warp_group_dot") > 0, "seconds": time.perf_counter() - begin,
    }  # fmt: skip


SDPA_GOAL, FLASH_GOAL = 3.0, 0.8
FLASH_SHAPES = ("dsie-long", "llm-prompt")  # where the flash goal applies


def _best_ms(rows, prefix: str, key: str) -> float:
    times = [r[f"{key}_ms"] for r in rows if r["method"].startswith(prefix)]
    return min(times) if times else float("nan")


def _ratio(row, name: str, goal: float, applies: bool = True) -> str:
    fwd, both = row.get(f"{name}_fwd"), row.get(f"{name}_fwd_bwd")
    if fwd is None or both is None:
        return "n/a"
    if not applies:
        return f"{fwd:.2f} / {both:.2f}    -"
    return f"{fwd:.2f} / {both:.2f} {'ok' if min(fwd, both) >= goal else 'MISS':>4}"


def summary(outdir: Path) -> int:
    """gpu_check.sh's closing table: per shape and padding, Triton, the best masked SDPA and
    flash without padding in ms (fwd / fwd+bwd), and the two time ratios against their goals;
    then the QLoRA step and the wall times of the steps when present. Status 1 if nothing."""
    found = False
    path = outdir / "attention.json"
    if path.is_file():
        found = True
        data = json.loads(path.read_text())
        rows, meta = add_ratios(data["rows"]), data["meta"]
        if meta.get("partial"):
            print("attention: the run stopped early; the shapes it measured:")
        print(
            f"attention, {meta.get('dtype')}, causal, {meta.get('device')}, torch "
            f"{meta.get('torch')}, triton {meta.get('triton')}: ms as fwd / fwd+bwd; ratios "
            "are times (other / ours), goals SDPA >= 3 everywhere, flash >= 0.8 at "
            + " and ".join(FLASH_SHAPES)
        )
        head = (
            f"{'shape':<11} {'pad':<5} {'triton ms':>15} {'best SDPA ms':>15} {'flash ms':>15} "
            f"{'SDPA/triton':>17} {'flash/triton':>17}"
        )
        print(head)
        print("-" * len(head))
        order = list(SHAPES)
        mine = sorted(
            (r for r in rows if r["method"] == "triton"),
            key=lambda r: (r.get("padding") != "right", order.index(r["shape"]) if r["shape"] in order
                           else len(order)),
        )  # fmt: skip
        for r in mine:
            same = [
                x for x in rows if (x["shape"], x.get("padding")) == (r["shape"], r.get("padding"))
            ]
            times = [
                (r["fwd_ms"], r["fwd_bwd_ms"]),
                (_best_ms(same, "sdpa-", "fwd"), _best_ms(same, "sdpa-", "fwd_bwd")),
                (_best_ms(same, "flash-nopad", "fwd"), _best_ms(same, "flash-nopad", "fwd_bwd")),
            ]
            print(
                f"{r['shape']:<11} {r.get('padding', ''):<5} "
                + " ".join(f"{f'{a:.3f} / {b:.3f}':>15}" for a, b in times)
                + f" {_ratio(r, 'speedup', SDPA_GOAL):>17}"
                + f" {_ratio(r, 'of_flash', FLASH_GOAL, r['shape'] in FLASH_SHAPES):>17}"
            )
    qlora = outdir / "qlora.json"
    if qlora.is_file():
        found = True
        q = json.loads(qlora.read_text())
        print(
            f"\nQLoRA step ({q['model']}, attn {q['attn']}, batch {q['batch']} x {q['seq_len']}, "
            f"{q['valid_tokens']} valid tokens): {q['step_ms']} ms/step, {q['tokens_per_s']} "
            f"tokens/s, peak {q['peak_memory_gib']} GiB"
        )
    walls = outdir / "walltimes.tsv"
    if walls.is_file():
        found = True
        print("\nwall time of each step (s) and its status:")
        for line in walls.read_text().splitlines():
            name, seconds, status = line.split("\t")
            print(f"  {name:<16} {float(seconds):>7.1f}  {status}")
    if not found:
        print(f"nothing to summarise in {outdir}")
    return 0 if found else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--padding", nargs="+", choices=["right", "left"], default=["right"])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU")
    parser.add_argument("--compile-check", action="store_true", help="compile for sm_90 only")
    parser.add_argument("--compile-dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--summary", type=Path, help="print gpu_check.sh's table from OUTDIR")
    args = parser.parse_args(argv)
    if args.summary:
        return summary(args.summary)

    meta = {"torch": torch.__version__, "padding": args.padding}
    if args.compile_check:
        dtypes = [DTYPES["fp16"], DTYPES["bf16"], DTYPES["fp32"]]
        rows = []
        for r in compile_check(dtypes, args.compile_dims):
            rows.append(r)
            print(
                f"{r['kernel']:<17} {r['dtype']} D={r['head_dim']:<3} causal={r['causal']!s:<5} "
                f"{r['padding']:<5} "
                f"M={r['block_m']} N={r['block_n']} w={r['warps']} s={r['stages']} "
                f"smem={r['shared_bytes']} async={r['async_copies']} wgmma={r['wgmma']} "
                f"{r['seconds']:.1f}s",
                flush=True,
            )
        result = {"meta": {**meta, "mode": "compile-check"}, "rows": rows}
    elif args.cpu_smoke:
        methods = ["torch", "sdpa-masked", "flash-nopad"]
        if os.environ.get("TRITON_INTERPRET") == "1":
            methods.insert(0, "triton")
        rows = []
        for name, shape in SMOKE_SHAPES.items():
            for padding in args.padding:
                shape_rows, _ = bench_shape(
                    name, shape, torch.float32, padding, torch.device("cpu"), methods, 1, args.seed
                )
                rows += shape_rows
        rows = add_ratios(rows)
        print_table(rows)
        result = {"meta": {**meta, "mode": "cpu-smoke", "dtype": "fp32"}, "rows": rows}
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: skipped (try --cpu-smoke or --compile-check)")
            return 0
        import triton

        dtype = DTYPES[args.dtype]
        meta.update(
            mode="cuda",
            dtype=args.dtype,
            device=torch.cuda.get_device_name(),
            triton=triton.__version__,
        )
        rows = []
        methods = ["triton", "sdpa-masked", "flash-nopad"]
        for padding in args.padding:
            for name in args.shapes:
                shape_rows, lengths = bench_shape(
                    name, SHAPES[name], dtype, padding, torch.device("cuda"), methods, 0, args.seed
                )
                print(
                    f"{name} ({padding}): B,Hq,Hkv,L,D={SHAPES[name]} mean length "
                    f"{lengths.float().mean():.1f}",
                    flush=True,
                )
                rows += shape_rows
                if args.json:  # after every shape: a run killed later keeps what it measured
                    _write_json(args.json, {"meta": {**meta, "partial": True}, "rows": rows})
        rows = add_ratios(rows)
        print_table(rows)
        result = {"meta": meta, "rows": rows}
    if args.json:
        _write_json(args.json, result)
    return 0


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())
