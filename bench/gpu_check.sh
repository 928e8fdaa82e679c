#!/usr/bin/env bash
# Every GPU check in one run, for an offline CUDA machine (H100/H200) whose python3 has torch,
# triton and transformers:
#   - the CUDA tests of the attention kernels (bf16 against float64, Qwen2 with coea_triton),
#   - bench/attention.py on the three shapes, bf16, right and left padding,
#   - with a workspace (prepare, build-sids and profile-groups done): DSIE epochs, Triton
#     against SDPA (bench/dsie.py --gpu).
#
#   bash bench/gpu_check.sh OUTDIR [WORKSPACE]
#
# The checkout needs no install: kernels/ is put on PYTHONPATH as coea_kernels through a link.
# Logs and JSON go to OUTDIR; the exit status is non-zero when any step failed.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUTDIR [WORKSPACE]}
work=${2:-}
py=${PYTHON:-python3}
mkdir -p "$out"
link=$(mktemp -d)
ln -s "$PWD/kernels" "$link/coea_kernels"
export PYTHONPATH="$link:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()

step() {
    local name=$1
    shift
    echo "== $name ($(date +%T))"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

step machine sh -c "nvidia-smi -L; $py -c 'import torch, triton, coea_kernels; print(torch.__version__, \
torch.version.cuda, triton.__version__, coea_kernels.__file__, torch.cuda.get_device_name())'"
step cuda-tests "$py" -m pytest -q -p no:cacheprovider -m cuda \
    tests/test_attention.py tests/test_attention_hf.py
step attention-right "$py" bench/attention.py --padding right --json "$out/attention-right.json"
step attention-left "$py" bench/attention.py --padding left --json "$out/attention-left.json"
if [ -n "$work" ]; then
    step dsie-epochs "$py" bench/dsie.py --work "$work" --gpu --json "$out/dsie.json"
fi

rm -rf "$link"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed; results in $out"
