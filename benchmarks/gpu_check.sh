#!/usr/bin/env bash
# Device checks of issue 13, section 3, on a machine with a CUDA GPU:
#   1. mmrelearn's k-means on CUDA at 1M x 512 x 31 (n_init 10) against mmrelearn and FAISS
#      on all CPU threads (same data, same n_init);
#   2. the diagnosis's share of a D&R run from 10k to 1M samples, measured on the GPU
#      (benchmarks/diagnose_speed.py --device cuda: k-means at 1M measured, not extrapolated);
#   3. configs/kinetics_sounds_dnr.yaml (ResNet-18 width 64, 224-pixel frames) on nine tiny
#      clips with train.precision bf16 and 16-mixed (D&R every epoch: k-means under autocast);
#   4. the trainer's samples/s against a bare PyTorch loop on the same model, optimizer and
#      batches held on the GPU, at precision 32 and bf16 (target: ratio >= 0.97).
# Usage: bash benchmarks/gpu_check.sh [--cpu-only]
#   --cpu-only: small sizes on the CPU (N 20k, width 8, 32-pixel frames), to check the script.
# Output: benchmarks/results/gpu_check/ (log.txt, one JSON per check, summary.txt).
# Needs the project installed (torch, mmrelearn's dependencies), PyAV for the tiny media
# (checks 3 and 4), faiss-cpu for FAISS (else left out). A failing check is reported in
# summary.txt and the others still run. Intended to take under ~8 minutes on one GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=benchmarks/results/gpu_check
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-only" ]]; then
  DEV=cpu; OUT=$OUT/cpu_only
  KMEANS=(--n 20000 --n-init 3 --cpu-n-init 3)
  SHARE=(--share-sizes 1250 10000 --encoder-batch 2)
  SMALL=(--width 8 --image-size 32 --epochs 3)
  TPUT=(--width 8 --image-size 32 --batch 16 --samples 64 --epochs 2)
  PRECISIONS="32 bf16 16-mixed"  # 32 checks the run itself where train.precision is missing
else
  DEV=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "no CUDA device: run with --cpu-only to check the script" >&2; exit 1; }
  KMEANS=(--n 1000000 --n-init 10 --cpu-n-init 10)
  SHARE=(--share-sizes 1250 10000 125000 1000000 --encoder-batch 64)
  SMALL=(--width 64 --image-size 224 --epochs 3)
  TPUT=(--width 64 --image-size 224 --batch 64 --samples 512 --epochs 3)
  PRECISIONS="bf16 16-mixed"
fi
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
: > "$OUT/summary.txt"

check() {  # check NAME SECONDS COMMAND...: run, log, record the exit status
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "$name: rc=$rc ($((SECONDS - t0)) s)" | tee -a "$LOG" >> "$OUT/summary.txt"
}

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cpus", os.cpu_count())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF

check kmeans 420 "$PY" benchmarks/gpu_check.py kmeans --device "$DEV" --out "$OUT" "${KMEANS[@]}"
check share 300 "$PY" benchmarks/diagnose_speed.py --device "$DEV" --skip compare demo \
  --out "$OUT/share.json" "${SHARE[@]}"
check media 120 "$PY" benchmarks/gpu_check.py media --root "$OUT/media"
for p in $PRECISIONS; do
  check "train_$p" 240 "$PY" benchmarks/gpu_check.py train --root "$OUT/media" --device "$DEV" \
    --precision "$p" --out "$OUT" "${SMALL[@]}"
done
for p in 32 bf16; do
  check "throughput_$p" 240 "$PY" benchmarks/gpu_check.py throughput --root "$OUT/media" \
    --device "$DEV" --precision "$p" --out "$OUT" "${TPUT[@]}"
done
rm -rf "$OUT/media" "$OUT"/run_*/checkpoints  # inputs and weights: not results
[[ $DEV == cpu ]] && rm -rf "$OUT"/run_*  # a smoke run's run directories
echo "--- summary ($OUT/summary.txt)"; cat "$OUT/summary.txt"
