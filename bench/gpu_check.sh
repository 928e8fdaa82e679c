#!/usr/bin/env bash
# The GPU check: one unattended run on a CUDA machine (H100/H200), under 8 minutes with an
# empty Triton cache, using only what `make install` puts in .venv (python3 without a .venv;
# PYTHON overrides both). In order:
#   attention   bench/attention.py, every shape, bf16, right and left padding in one process
#               (the autotuning is shared) -> attention.json
#   model       a Qwen2-0.5B-shaped model with random weights, in a scratch folder
#   qlora       bench/qlora_step.py: a 4-bit QLoRA step on it with coea_triton -> qlora.json
#   workspace   a tiny synthetic workspace (tests/pco_fixtures): tokenize-items, profile-groups,
#               train-dsie (torch attention)
#   pco-round   rounds 0 and 1 with that model in 4-bit and --attn coea_triton
#   recommend   the lists of that track (coea_triton again), --weights top-m
#   cuda-tests  the CUDA tests, bf16 kernel cases and the Qwen2 check, one pinned config per
#               kernel (COEA_ATTN_PIN=1)
# and ends with one summary table (bench/attention.py --summary OUTDIR): per shape and padding,
# Triton, best masked SDPA and flash without padding, the two time ratios against their goals,
# the QLoRA figures and the wall time of every step.
#
#   bash bench/gpu_check.sh OUTDIR
#
# Each step runs under `timeout`, capped by what is left of GPU_CHECK_BUDGET (seconds, default
# 450); a step that would get under 20 s is skipped. Logs, JSON and walltimes.tsv go to OUTDIR.
# The exit status is 1 when a step failed, timed out or was skipped, and 2 at once (nothing
# run) when python sees no CUDA device.
set -uo pipefail
dest=${1:?usage: bash bench/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.." || exit 2
root=$PWD
if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
    py=$root/.venv/bin/python
else
    py=python3
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is not true for $py):" \
        "nothing run. This check needs an NVIDIA GPU (H100/H200)." >&2
    exit 2
fi

budget=${GPU_CHECK_BUDGET:-450}
begin=$SECONDS
mkdir -p "$dest" && out=$(cd "$dest" && pwd) || exit 2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ln -s "$root/kernels" "$scratch/coea_kernels"
export PYTHONPATH="$scratch:$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
model=$scratch/qwen2-0.5b-random
work=$scratch/ws/work
walls=$out/walltimes.tsv
: >"$walls"
failed=()

step() { # step NAME CAP_SECONDS COMMAND...: run under timeout, log, record the wall time
    local name=$1 cap=$2
    shift 2
    local left=$((budget - (SECONDS - begin) - 15)) # 15 s kept for the summary
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, the budget of ${budget}s is spent"
        printf '%s\t0\tskipped (budget)\n' "$name" >>"$walls"
        failed+=("$name (skipped)")
        return 1
    fi
    local limit=$((cap < left ? cap : left))
    echo "== $name ($(date +%T), at most ${limit}s)"
    local t0 t1 rc status
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    status="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="timed out after ${limit}s"
    [ "$rc" -ne 0 ] && [ "$status" = "ok" ] && status="failed (exit $rc)"
    printf '%s\t%s\t%s\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
        "$status" >>"$walls"
    [ "$rc" -eq 0 ] || failed+=("$name: $status")
    return "$rc"
}

coea=("$py" -m coea_cli)

step machine 30 sh -c "nvidia-smi -L; '$py' -c 'import torch, triton, transformers, coea_kernels; \
print(torch.__version__, torch.version.cuda, triton.__version__, transformers.__version__, \
coea_kernels.__file__, torch.cuda.get_device_name())'"
step attention 200 "$py" bench/attention.py --padding right left --json "$out/attention.json"
if step model 60 "$py" bench/qlora_step.py --make-model "$model"; then
    step qlora 90 "$py" bench/qlora_step.py --model "$model" --json "$out/qlora.json"
fi
if step workspace 90 "$py" bench/qlora_step.py --make-workspace "$scratch/ws" \
    && [ -f "$model/config.json" ]; then
    if step pco-round 150 "${coea[@]}" pco-round --work "$work" --base-model "$model" --quant 4bit \
        --attn coea_triton --rounds 2 --round0-epochs 1 --epochs 1 --lora-r 4 --n 4 \
        --batch-size 32; then
        step recommend 60 "${coea[@]}" recommend --work "$work" --k 10 --n 4 --weights top-m
    fi
fi
step cuda-tests 150 env COEA_ATTN_PIN=1 "$py" -m pytest -q -p no:cacheprovider -m cuda \
    -k "bf16 or qwen2" tests/test_attention.py tests/test_attention_hf.py

echo "== summary ($((SECONDS - begin)) s so far)"
timeout 30 "$py" bench/attention.py --summary "$out" | tee "$out/summary.txt"
echo "total: $((SECONDS - begin)) s"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'not passed: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed; results in $out"
