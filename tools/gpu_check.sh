#!/usr/bin/env bash
# Everything GPU-specific in one command, sized for one call on a lent H100/H200 within a time
# budget (GPU_CHECK_BUDGET seconds, default 480), in this order, each stage cut to what is left:
#   1. tests/test_cuda.py: bf16 vs fp32, no host sync in a step, channels_last and fused
#      optimizers on, NCCL under torchrun, GPU checkpoint -> CPU masks, SAM bf16, compile;
#   2. tools/memory_plan.py --check: one real step per recipe, peak memory against the plan;
#   3. bench.py --device cuda at full size (ours vs the seed-style baseline, peak memory, %peak,
#      host syncs per step), with torch.profiler's top kernels of ours per workload;
#   4. bench.py --ablate (BYOL and DeepLabV3, each tuning switch off in turn);
#   5. bench.py --compile (fine-tuning and DeepLabV3 under torch.compile), if time is left.
# Usage: bash tools/gpu_prepare.sh here (wheels into .gpu/), then on the machine:
#   bash tools/gpu_check.sh [--output-dir DIR]     (default: $OUT, else results/gpu)
# Results: DIR/{env.txt, gpu_check.log, memory_plan.json, bench_cuda.json, profile_cuda.txt,
# bench_ablate.json, bench_compile.json}; bench.py saves its JSON after every workload, so a stage cut at its
# limit (SIGINT, reported as "cut", not as a failure) keeps what it measured. Exit status: 0
# when no stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-results/gpu}
case "${1:-}" in
  --output-dir) out=${2:?--output-dir needs a folder} ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  "") ;;
  -*) echo "gpu_check: unknown option $1 (usage: bash tools/gpu_check.sh [--output-dir DIR])" >&2
      exit 2 ;;
  *) out=$1 ;;  # the folder alone: the old form, accepted for one more release
esac
mkdir -p "$out"
log=$out/gpu_check.log
budget=${GPU_CHECK_BUDGET:-480}
start=$SECONDS
failed=0
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if compgen -G ".gpu/whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi

# stage NAME SECONDS COMMAND...: run COMMAND with a limit cut to what is left of the budget
stage() {
    local name=$1 limit=$2 left t0 rc
    shift 2
    left=$((budget - (SECONDS - start)))
    ((limit > left)) && limit=$left
    if ((limit < 30)); then
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$log"
        return
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    if ((rc == 124 || rc == 137)); then  # SIGINT at the limit, SIGKILL 20 s later
        echo "== $name: cut at ${limit}s" | tee -a "$log"
    else
        echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$log"
        ((rc == 0)) || failed=1
    fi
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__, \
torchvision.__version__, torch.version.cuda, torch.backends.cudnn.version(), \
torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
    python3 -c "import byol_pytorch, segment_anything, cv2, sklearn; print('imports ok')"
    nproc
    git rev-parse HEAD 2>/dev/null || true
} >"$out/env.txt" 2>&1
cat "$out/env.txt" | tee -a "$log"

# pytest with SIGINT restored (a background job starts with it ignored), so a cut still prints
# the summary of the tests that ran
stage tests 200 python3 -c "import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_cuda.py']))"
stage memory 60 python3 tools/memory_plan.py --check --json "$out/memory_plan.json"
stage bench 210 python3 bench.py --device cuda --json "$out/bench_cuda.json" \
    --profile "$out/profile_cuda.txt"
stage ablate 120 python3 bench.py --device cuda --only byol deeplabv3 --ablate --steps 10 \
    --json "$out/bench_ablate.json"
stage compile 150 python3 bench.py --device cuda --only finetune deeplabv3 --compile \
    --steps 10 --json "$out/bench_compile.json"
echo "gpu_check: $((SECONDS - start))s in all, $([[ $failed == 0 ]] && echo ok || echo FAILED)" \
    | tee -a "$log"
exit $failed
