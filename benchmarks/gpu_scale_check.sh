#!/usr/bin/env bash
# Device checks for issue 7 (scale and reliability), meant for one CUDA GPU; about 3-5 minutes
# on one H100. Writes benchmarks/results/train_scale_cuda.json and benchmarks/results/gpu_scale_check.log.
#
#   bash benchmarks/gpu_scale_check.sh                       # data in ../shared/data
#   DATA_DIR=/path/to/data bash benchmarks/gpu_scale_check.sh
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_scale_check.sh    # a dry run of the script on CPU
#
# 1. a short training on the GPU with bf16 autocast (the README's GPU row);
# 2. the same run's checkpoint used on the CPU (`chainrule sample`);
# 3. torchrun with one process on the GPU (nccl, DDP), then `--resume --device cpu` of that run;
# 4. benchmarks/train_scale.py on the GPU: bf16 and step-checkpoint cost vs plain fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works without `pip install -e .` too
DEVICE=${DEVICE:-cuda}
DATA_DIR=${DATA_DIR:-../shared/data}
RUNS=${RUNS:-$(mktemp -d /tmp/chainrule-gpu-XXXX)}
LOG=${LOG:-benchmarks/results/gpu_scale_check.log}
BENCH_OUT=${BENCH_OUT:-benchmarks/results/train_scale_${DEVICE}.json}
mkdir -p benchmarks/results
if [ -f "$DATA_DIR/binarized_mnist.npz" ] && [ -z "${SMALL:-}" ]; then
  DATA=binarized-mnist; SIZE=(--hidden 64 --layers 6); MAXTRAIN=0; BENCH_TRAIN=20000; BATCH=128
else
  DATA=digits; SIZE=(--hidden 16 --layers 3); MAXTRAIN=0; BENCH_TRAIN=1200; BATCH=32
fi
run() {
  echo "+ $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | { grep -v "Warning\|warn(" || true; } | tee -a "$LOG"
  echo "  ($((SECONDS - t0)) s)" | tee -a "$LOG"
}
: > "$LOG"
python -c "import torch, platform; print('torch', torch.__version__, '|', platform.platform(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')" | tee -a "$LOG"

# 1. short bf16 training on the GPU (1 epoch of the full training set)
BF16=(--bf16); [ "$DEVICE" = cpu ] && BF16=()
run python -m chainrule train --model pixelcnn --data "$DATA" --data-dir "$DATA_DIR" "${SIZE[@]}" \
    --epochs 1 --batch-size 64 --max-train "$MAXTRAIN" --device "$DEVICE" "${BF16[@]}" \
    --checkpoint-every 200 --out "$RUNS/pixelcnn-bf16" --quiet
# 2. the GPU checkpoint on the CPU: sample from it there
run python -m chainrule sample --checkpoint "$RUNS/pixelcnn-bf16" --n 16 --out "$RUNS/cpu-samples.png"
# 3. torchrun, one process on the GPU: nccl + DDP (digits, 2 epochs) ...
run python -m torch.distributed.run --standalone --nproc_per_node=1 -m chainrule train --model pixelcnn --data digits \
    --hidden 16 --layers 3 --epochs 2 --device "$DEVICE" --checkpoint-every 5 --out "$RUNS/torchrun-1proc" --quiet
# ... and its training state resumed on the CPU for a third epoch
run python -m chainrule train --resume "$RUNS/torchrun-1proc" --epochs 3 --device cpu --quiet
# 4. what bf16 and step checkpoints cost, against plain fp32 in the same process
run python benchmarks/train_scale.py --device "$DEVICE" --model pixelcnn --data "$DATA" --data-dir "$DATA_DIR" \
    "${SIZE[@]}" --max-train "$BENCH_TRAIN" --batch-size "$BATCH" --checkpoint-every 10 --repeats 3 --out "$BENCH_OUT"
echo "runs in $RUNS; log in $LOG" | tee -a "$LOG"
