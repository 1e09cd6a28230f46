#!/usr/bin/env bash
# Rebuilds the shipped checkpoint solar/weights/solar-clipart: SOLAR stage 1 then stage 2 on the
# train split of the offline clip-art set (frozen offline towers, cached features), on CPU.
# Takes about 6 minutes of training after a one-time tower-feature cache (~20 minutes, ~1 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/clipart-model}
solar-index train --recipe stage1 --out "$OUT/stage1" --steps 150 --batch-size 64 --lr 1e-3 \
  --set warmup_steps=10 --no-progress
solar-index train --recipe stage2 --model "$OUT/stage1" --out "$OUT/stage2" --steps 60 \
  --batch-size 32 --lr 1e-4 --set warmup_steps=5 --no-progress
mkdir -p solar/weights/solar-clipart
cp "$OUT/stage2/config.json" "$OUT/stage2/model.safetensors" solar/weights/solar-clipart/
echo "solar/weights/solar-clipart rebuilt from $OUT/stage2"
