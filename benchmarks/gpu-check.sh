#!/usr/bin/env bash
# The GPU checks in one run (issue 29): at the paper profile on one GPU in under 10 minutes, every table
# into one folder. CI runs it at the ci profile on CPU (tests/e2e/test_gpu_check.py) so it cannot rot.
#
#   benchmarks/gpu-check.sh [OUT_DIR]          # PROFILE=paper STEP_MS=115 WORKERS=0,2,4,8 by default
#
# STEP_MS is the accelerator's training step that `bench data` models (115 ms: PEMMA-LoRA, paper profile,
# batch 2, bf16, H200, measured in an earlier round); the `bench overhead` table printed first gives
# this machine's own (its "bare steady ms/step"): rerun `bench data` with it when they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
profile=${PROFILE:-paper}
step_ms=${STEP_MS:-115}
workers=${WORKERS:-0,2,4,8}
steps=${STEPS:-20}
mkdir -p "$out"
results="$out/results"
bench() {  # bench NAME ARGS...: one table, its output kept as NAME.txt
    local name=$1
    shift
    echo "== $name"
    COLUMNS=200 pemma-bench bench "$@" --profile "$profile" --results "$results" 2>&1 | tee "$out/$name.txt"
}
{
    echo "profile $profile, step $step_ms ms, workers $workers"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    nproc
} | tee "$out/machine.txt"
bench overhead overhead --steps "$steps" --rounds 2
bench throughput throughput --reference public --steps "$steps"
bench memory memory --steps 5
bench data data --step-ms "$step_ms" --workers "$workers"
echo "== training unit with loader workers"
# A short unit end to end on a small cohort, crops prepared by two loader workers.
COLUMNS=200 pemma-bench run --suite smoke --profile "$profile" --methods pemma-lora --seeds 0 \
    --set data.synth_scale=0.05 --set train.steps="$steps" --set pretrain.steps="$steps" \
    --set train.loader_workers=2 --results "$results" 2>&1 | tee "$out/unit.txt"
echo "tables in $out"
