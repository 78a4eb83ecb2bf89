#!/usr/bin/env bash
# GPU check for a machine with one CUDA GPU, in under 8 minutes, everything into one log:
#   1. the test suite (CUDA-only tests run here; a time cap keeps the check short),
#   2. a short AMP run of a CIFAR recipe (float16 autocast + GradScaler) on the GPU,
#   3. the training-speed benchmark, BiPer W1A1 next to float ResNet-20, on the GPU,
#   4. a 1-process NCCL run (torchrun, DDP over one GPU), resumed once from its checkpoint.
# Usage (from anywhere):  benchmarks/gpu_check.sh [LOG]      (default: gpu_check.log)
# CIFAR-10 is read from $BIPER_DATA_DIR when set (a folder with cifar10-jpeg.tar), else the
# runs use the synthetic 32x32 dataset. Without a CUDA GPU the script stops at once (exit 2).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-gpu_check.log}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v nvidia-smi > /dev/null 2>&1 && ! ls /dev/nvidia0 > /dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (no nvidia-smi, no /dev/nvidia0); this check needs a machine with one CUDA GPU" >&2
    exit 2
fi
if ! "$PY" -c "
import sys, torch
if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
    print(f'gpu_check: no CUDA GPU visible to PyTorch (torch {torch.__version__}, CUDA {torch.version.cuda}); '
          'this check needs a machine with one CUDA GPU', file=sys.stderr)
    sys.exit(1)
"; then
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/biper-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
: > "$LOG"
status=0
say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS CMD...: run with a time cap, log everything, record the result
    local name=$1 cap=$2; shift 2
    say ""
    say "=== $name (cap ${cap}s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$cap" "$@" >> "$LOG" 2>&1
    local rc=$?
    say "=== $name: exit $rc after $((SECONDS - t0))s"
    [ $rc -eq 0 ] || status=1
}

if [ -n "${BIPER_DATA_DIR:-}" ]; then
    DATA=(--data-dir "$BIPER_DATA_DIR" --subset 10000)
    BENCH_DATA=(--data-dir "$BIPER_DATA_DIR")
else
    DATA=(data.dataset=synthetic "data.options={length: 4096, num_classes: 10}")
    BENCH_DATA=()
fi

say "# biper GPU check, $(date -u +%FT%TZ), $(uname -n)"
"$PY" - >> "$LOG" 2>&1 <<'PYEOF'
import torch, platform
p = torch.cuda.get_device_properties(0)
print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"NCCL {'.'.join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else 'absent'}")
print(f"# GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible; "
      f"python {platform.python_version()}, {platform.processor() or platform.machine()}")
PYEOF
tail -2 "$LOG"

step "test suite" 200 "$PY" -m pytest -q -x -p no:cacheprovider
step "AMP run" 90 "$PY" -m biper train cifar10-resnet20-biper device=cuda precision=amp \
    "stages.*.epochs=1" data.batch_size=256 --max-steps 40 --quiet --out "$WORK/amp" "${DATA[@]}"
step "speed benchmark (BiPer vs float, GPU)" 120 "$PY" benchmarks/bench_train.py --device cuda \
    --steps 10 --rounds 5 --warmup 5 "${BENCH_DATA[@]}"
step "1-process NCCL run" 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m biper train cifar10-resnet20-bc device=cuda "stages.*.epochs=1" --max-steps 30 --quiet \
    --out "$WORK/nccl" "${DATA[@]}"
step "1-process NCCL resume (nothing left to do)" 45 "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node=1 -m biper train cifar10-resnet20-bc device=cuda "stages.*.epochs=1" --max-steps 30 \
    --quiet --resume --out "$WORK/nccl" "${DATA[@]}"

say ""
say "# gpu_check: $([ $status -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED (see above)'); log $LOG"
exit $status
