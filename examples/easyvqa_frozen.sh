#!/usr/bin/env bash
# easy-VQA on a frozen backbone with its features cached, the backbone taken from a VQA run on
# another dataset: the built-in synthetic shapes set (1 to 4 shapes per image, 5 kinds, 6 colours,
# 2 sizes; questions that count, name colours and kinds, and ask positions). Its images, colours
# and kinds are not easy-VQA's (no rectangle; no teal, brown, gray or black).
#
# 1. The pretraining run: VQA on shapes (8,000 images at 64 px, 6,400 for training) with the
#    easy-VQA model's shape (small preset, late fusion, resnet18 cut after its second stage, one
#    text layer), 3,000 steps of 16 images.
# 2. easy-VQA from it, the backbone frozen and its features cached (`--freeze-backbone
#    --feature-cache`: the backbone runs once over the 5,000 images), the easy-VQA defaults
#    (850 steps of 16 images); its model and tokenizer are the init run's.
# 3. The same fine-tuning with the backbone trained: the full model it is compared with.
# 4. and 5. The same two at batch 32 for half the steps (the same images seen), the frozen one at twice
#    the learning rate: a frozen, cached step costs little more with twice the images (the question's
#    text layer, most of it, sees about as many distinct questions).
# 6. The frozen batch-32 run with a trainable MLP adapter on the cached tokens (--model image_adapter=256:
#    a residual MLP beside the linear projection, starting at zero).
# 7. and 8. The init run's model at 192 px (--model image_size=192: the 64-px images upscaled, so that the cut
#    backbone gives 24 x 24 tokens instead of 8 x 8; its image-position grid resampled to match), frozen and
#    cached for 850 steps (the most validation accuracy of 425, 640 and 850 steps), then trained in full
#    for 425: the finer frozen tokens keep a small shape's outline, and the backbone is now most of a full step.
#
# The numbers, with the date and the machine, are in RESULTS.md ("easy-VQA").
set -euo pipefail
SEED=${SEED:-0}
PRETRAIN_RUN="runs/shapes-vqa-s$SEED"
if [ ! -d "$PRETRAIN_RUN/best" ]; then
  mmcli finetune --task vqa --data shapes:8000:64 --preset small --fusion late \
    --model drop_stages=2,text_layers=1,image_size=64 --batch-size 16 --max-steps 3000 --eval-every 1000 \
    --seed "$SEED" --out "$PRETRAIN_RUN"
fi
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --freeze-backbone --feature-cache --seed "$SEED" \
  --out "runs/easyvqa-frozen-pt-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --seed "$SEED" --out "runs/easyvqa-full-pt-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --freeze-backbone --feature-cache --seed "$SEED" \
  --batch-size 32 --max-steps 425 --eval-every 425 --lr 6e-4 --out "runs/easyvqa-frozen-b32-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --seed "$SEED" --batch-size 32 --max-steps 425 --eval-every 425 \
  --out "runs/easyvqa-full-b32-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --freeze-backbone --feature-cache --seed "$SEED" \
  --batch-size 32 --max-steps 425 --eval-every 425 --lr 6e-4 --model image_adapter=256 \
  --out "runs/easyvqa-frozen-b32-a256-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --model image_size=192 --freeze-backbone --feature-cache --seed "$SEED" \
  --batch-size 32 --max-steps 850 --eval-every 425 --lr 6e-4 --out "runs/easyvqa-frozen-192-s$SEED"
mmcli finetune --task vqa --init "$PRETRAIN_RUN" --model image_size=192 --seed "$SEED" --batch-size 32 --max-steps 425 \
  --eval-every 425 --out "runs/easyvqa-full-192-s$SEED"
