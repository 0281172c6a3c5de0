#!/usr/bin/env bash
# The one GPU session of this project's benchmarks: everything that needs a GPU, in one call of
# about 8-9 minutes on one H100/H200. Writes JSON into benchmarks/results/*_cuda.json and logs
# into $OUT (or /tmp/gpu-out).
#
#   DATA_DIR=/path/to/npz-files bash benchmarks/gpu_session.sh
#
# NADE's training (the longest job, light on the GPU) runs in the background from the start;
# the throughput benchmarks run meanwhile, so their absolute figures were measured with a NADE
# training sharing the GPU (their ratios compare two paths under the same conditions).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CHAINRULE_DATA=${DATA_DIR:-$PWD/.gpudata}
OUT=${OUT:-/tmp/gpu-out}
RUNS=${RUNS:-/tmp/gpu-runs}
S=${SCALE:-1}  # SCALE=0.05 for a smoke run on CPU
DEV=${DEVICE:-cuda}
mkdir -p "$OUT" "$RUNS" benchmarks/results
m() { python -c "print(max(0.05, $1 * $S))"; }
t0=$SECONDS
stamp() { echo "[$((SECONDS - t0)) s] $*" | tee -a "$OUT/timeline.log"; }
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee "$OUT/device.txt"

# A (background): NADE H=500 on fixed binarized MNIST, then anomaly detection and features with it
(
  stamp "nade start"
  timeout 370 python benchmarks/nade.py --device "$DEV" --skip-throughput --time-budget-min "$(m 5)" \
      --run-dir "$RUNS/nade" --data-dir "$CHAINRULE_DATA" --out benchmarks/results/nade.json > "$OUT/nade.log" 2>&1
  stamp "nade done ($?)"
  timeout 90 python benchmarks/anomaly.py --device "$DEV" --checkpoint "$RUNS/nade" --n 0 \
      --data-dir "$CHAINRULE_DATA" --out benchmarks/results/anomaly_cuda.json > "$OUT/anomaly.log" 2>&1
  stamp "anomaly done ($?)"
  timeout 60 python benchmarks/features.py --device "$DEV" --checkpoint "$RUNS/nade" --no-untrained --digits-train "" \
      --data-dir "$CHAINRULE_DATA" --out benchmarks/results/features_cuda.json > "$OUT/features.log" 2>&1
  stamp "features done ($?)"
) &
A=$!

# B (foreground): PixelRNN training throughput (fast vs eager oracle), cached vs naive sampling
stamp "pixelrnn throughput start"
timeout 170 python benchmarks/pixelrnn.py --device "$DEV" --batch-size 256 --sizes paper --cuda-graph \
    --repeats 3 --out benchmarks/results/pixelrnn_cuda.json > "$OUT/pixelrnn.log" 2>&1
stamp "pixelrnn throughput done ($?)"
timeout 120 python benchmarks/sampling.py --device "$DEV" --configs mnist --repeats 1 \
    --out benchmarks/results/sampling_cuda.json > "$OUT/sampling.log" 2>&1
stamp "sampling done ($?)"
# C: the Diagonal BiLSTM (paper size) for a few minutes, beside the issue-7 device checks
timeout 230 python benchmarks/pixelrnn.py --device "$DEV" --batch-size 256 --skip-throughput --cuda-graph \
    --train diagonal-bilstm --time-budget-min "$(m 3)" --out benchmarks/results/pixelrnn_cuda_train.json \
    > "$OUT/pixelrnn_train.log" 2>&1 &
C=$!
DATA_DIR="$CHAINRULE_DATA" DEVICE="$DEV" RUNS="$RUNS/scale" LOG="$OUT/scale.log" \
    timeout 200 bash benchmarks/gpu_scale_check.sh > /dev/null 2>&1
stamp "scale check done ($?)"
wait $C; stamp "diagonal-bilstm training done ($?)"
wait $A
cp benchmarks/results/*.json "$OUT/" 2>/dev/null
tar czf "$OUT/results.tgz" benchmarks/results "$OUT"/*.log "$OUT/device.txt" 2>/dev/null
stamp "all done"
