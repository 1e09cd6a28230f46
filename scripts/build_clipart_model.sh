#!/usr/bin/env bash
# Rebuilds the shipped checkpoint solar/weights/solar-clipart with the project's recipe
# (docs/method.md, docs/experiments.md): SOLAR stage 1 then stage 2 on every training pair of the
# offline clip-art + emoji sets (frozen offline towers at 224 px, cached features), on CPU.
# On the 2-core machine: a one-time tower-feature cache of the 8,680 pairs (about 15 minutes,
# 1.6 GB under ~/.cache/solar/features), then stage 1 (400 steps, 6-12 minutes) and stage 2
# (100 steps, 3-6 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/clipart-model}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SOLAR_BACKEND=${SOLAR_BACKEND:-torch}
# Stage 1: per-element GLA, element-level local alignment, composite supervision with its
# thresholds (4,096 composites of the training pairs, cached once: about 3 minutes more), masks
# read from local scores (token masks from the text encoded piece by piece between punctuation),
# embedding = CLS output + pooled locals of each modality.
solar-index train --recipe stage1 --data clipart+emoji --out "$OUT/stage1" --steps 400 \
  --batch-size 64 --lr 1e-3 --set gla_form=local --set w_local=1 --set local_form=owner \
  --set w_compose=3 --set compose_qda=true \
  --model-set mask_scores=local --model-set readout=cls+pooled --model-set mask_context=segments \
  --no-progress
# Stage 2: views that also differ in crop and wording, distillation of the documents.
solar-index train --recipe stage2 --model "$OUT/stage1" --data clipart+emoji --out "$OUT/stage2" \
  --steps 100 --batch-size 32 --lr 1e-4 --set crop_views=0.3 --set token_drop=0.2 \
  --set anchor_view=true --set s2_distill=1.0 --no-progress
mkdir -p solar/weights/solar-clipart
cp "$OUT/stage2/config.json" "$OUT/stage2/model.safetensors" "$OUT/stage2/train_config.json" \
  solar/weights/solar-clipart/
echo "solar/weights/solar-clipart rebuilt from $OUT/stage2"
