#!/usr/bin/env bash
# Flickr8k captioning on the pretrained backbone frozen, its features cached: the second stage of
# examples/flickr8k_caption_pretrained.sh with --freeze-backbone --feature-cache (the backbone runs once
# over the 7,000 images; training reads its stored features) and no augmentation (cached features are
# the eval transform's). Everything else as that recipe: 900 steps of 32 images with their 5 captions.
#
# Measured on the 2-core machine (AVX-512 with avx512_bf16, no AMX), seed 0, alone, 2026-12-06, after
# the pretraining run of examples/flickr8k_pretrain.sh (35.3 min, not counted here):
#   - 593 s of training (243 captions/s; the feature cache of the 7,000 images built in 26 s, once),
#     against 966 s for the same fine-tuning with the backbone trained: 1.63x faster.
#   - dev, beam 3: CIDEr-D 0.2177 (validation at step 450: 0.2054), 8.7% below the full
#     fine-tuning's 0.2385.
# Again on 2026-12-07 evening (the LM loss packed, cross-attention by image, 15-bit dropout masks;
# the pretraining run made again, 27.6 min), against the full fine-tuning from the same run:
#   - 128 px: 384.7 s against 721.8 s (1.88x), CIDEr-D 0.2353 against 0.2250.
#   - SIZE=224: 469.2 s against 1,396.2 s (2.98x), CIDEr-D 0.2348 against 0.2435 (-3.6%); with
#     STEPS=450 (into another --out) 236.0 s (5.92x), CIDEr-D 0.2361 (-3.0%). RESULTS.md has the commands.
set -euo pipefail
DATA=${DATA:-../shared/data/flickr8k}
SEED=${SEED:-0}
STEPS=${STEPS:-900}
# SIZE: the image side of the fine-tuning; the pretraining's 128, or another (--model image_size: the
# image positions resampled to the new grid of tokens), e.g. SIZE=224 into runs/...-224px-s$SEED
SIZE=${SIZE:-128}
AT_SIZE=()
SUFFIX=""
if [ "$SIZE" != 128 ]; then
  AT_SIZE=(--model "image_size=$SIZE")
  SUFFIX="-${SIZE}px"
fi
PRETRAIN_RUN="runs/flickr8k-pretrain-s$SEED"
if [ ! -d "$PRETRAIN_RUN/best" ]; then
  DATA="$DATA" SEED="$SEED" bash "$(dirname "$0")/flickr8k_pretrain.sh"
fi
mmcli finetune --task caption --data "flickr8k:$DATA" --init "$PRETRAIN_RUN" --freeze-backbone --feature-cache \
  --group-captions --label-smoothing 0.1 --image-cache --precision bf16 \
  --batch-size 32 --lr 5e-4 --warmup-steps 50 --max-steps "$STEPS" --eval-every $((STEPS / 2)) --beam 3 \
  "${AT_SIZE[@]}" --seed "$SEED" --out "runs/flickr8k-caption-frozen$SUFFIX-s$SEED"
