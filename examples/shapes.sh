#!/usr/bin/env bash
# The built-in shapes set (2,000 synthetic images: 1,600 train / 200 val / 200 test), all three
# tasks with the tiny preset from scratch; needs no files. Each run selects best/ on val and
# evaluates it once on test (RUN/results.json).
#
# Measured on the 2-core development machine (AMD EPYC, AVX2), fp32, seed 0, 2026-11-29:
#   caption    test CIDEr-D 1.259, BLEU-4 0.290 (greedy)          70 s of training
#   vqa        test VQA accuracy 49.4% (1,238 questions)          81 s
#   retrieval  test R@1 text-to-image 32.5%, image-to-text 40.0%  91 s
# (RESULTS.md has the table; the question-only baseline on these questions is 34.8%.)
set -euo pipefail
SEED=${SEED:-0}
for TASK in caption vqa retrieval; do
  mmcli finetune --task "$TASK" --preset tiny --data shapes:2000 --max-steps 600 --lr 3e-3 \
    --warmup-steps 50 --eval-every 200 --seed "$SEED" --out "runs/shapes-$TASK-s$SEED"
done
