#!/usr/bin/env bash
# easy-VQA (built-in: 64x64 images, ~10 questions per image, 13 answers) on a CPU.
#
# VQA training and validation are grouped by image: each batch item is one image with all
# its questions, the image is encoded once and its tokens are shared by its questions
# (--batch-size counts images). With --test (the default) best/ is evaluated once on the
# test split at the end: the closing table, metrics.jsonl ({"split": "test"}) and
# RUN/results.json. Selection uses val only.
#
# Measured on a 2-core AMD EPYC (AVX2, no native bf16), torch 2.14, fp32
# (bf16 autocast is 7x slower there for the tiny preset and ~25x for resnet18,
# so --precision auto stays fp32 on CPU):
#
#   recipe below (tiny preset, 0.55M params, 64 px, cross fusion, 2000 steps = 8.9 epochs):
#     seed 0: val 78.2 / 80.0 / 85.7 / 86.5% at steps 500 / 1000 / 1500 / 2000,
#     TEST 86.8% (9,673 questions); 225 s of training
#   the same with 675 steps (3 epochs): val 79.4%, test 79.6%, 83 s of training
#   the same with --fusion late --batch-size 8 --max-steps 1800 (4 epochs): val 79.3%, 108 s
#   image_size 128 (tiny): val 66.7% after 300 steps, ~4x slower per step
#
# NOT YET MET: the target (>= 99% test in <= 5 min). Up to ~1000 steps the model
# learns colours (val colour questions ~100%) but not shapes (shape questions ~33%, chance):
# accuracy sits near 80% (the question-only baseline is 67%); shapes start being learned after
# about 1000 steps at high learning rate, so longer schedules at peak lr are the next lever. The small preset (resnet18, dim 256) runs at ~130 questions/s at 64 px
# (~265 s per epoch), too slow for the budget on this CPU; its transformer (dim 256, 4 layers)
# and not the CNN dominates once the image is encoded once per image.
set -euo pipefail
SEED=${SEED:-0}
mmcli finetune --task vqa --preset tiny --batch-size 16 --lr 2e-3 --warmup-steps 50 \
  --max-steps 2000 --eval-every 500 --seed "$SEED" --out "runs/easyvqa-tiny-s$SEED"
