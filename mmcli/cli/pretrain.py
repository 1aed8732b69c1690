"""``mmcli pretrain``: options in, a TrainConfig (task pretrain), one ``fit`` call, the closing table out."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from . import options as o

SHORT = "Pretrain a model on image-caption pairs with ITC, ITM and LM objectives, for finetune --init."

HELP = """Pretrain a vision-language model on image-caption pairs, to start fine-tuning from it (mmcli finetune --init RUN_DIR).

[b]Objectives[/b] (--objectives, a comma-separated list, each optionally weighted as NAME=WEIGHT; the loss is the weighted sum):

[b]itc[/b] (image-text contrastive): each image is scored against every caption of the batch and each caption against every image (in-batch negatives); trains the embeddings that retrieval uses.

[b]itm[/b] (image-text matching): a match / no-match head on the fused image and text, shown each pair and, as hard negatives, a wrong caption and a wrong image drawn by their ITC similarity.

[b]lm[/b] (language modelling): the caption's next-token cross-entropy given the image (captioning).

--fusion late has no token-level fusion, so it cannot do lm: pretrain it with --objectives itc,itm.

[b]Data[/b]: any dataset spec with captions (shapes, shapes:N, flickr8k:DIR, coco:..., karpathy:..., jsonl:FILE); each caption is one pair with its image, or with --group-captions each image comes once with all its captions (the image encoded once for all of them).

[b]Selection[/b]: the validation reports each objective's own check (itc: retrieval R@1/5/10 both ways, itm: match accuracy on a true and a wrong image per caption, lm: BLEU and CIDEr-D of greedy captions); best/ is selected on the first objective present in the order itc (mean_recall), lm (cider_d), itm (itm_accuracy).

[b]The run directory[/b] (--out) holds config.json, metrics.jsonl, last/ (resumable) and best/, as for finetune; continue an interrupted run with --resume RUN_DIR.
"""

EPILOG = """[b]Examples[/b]

  mmcli pretrain --preset tiny --data shapes:2000 --max-steps 500 --out runs/pt

  mmcli pretrain --data flickr8k:../shared/data/flickr8k --objectives itc=1,itm=1,lm=0.5 --out runs/pt

  mmcli pretrain --data flickr8k:../shared/data/flickr8k --group-captions --batch-size 32 --out runs/pt

  mmcli pretrain --fusion late --objectives itc,itm --out runs/pt-late

  mmcli finetune --task caption --init runs/pt --out runs/cap
"""


def pretrain(
    data: Annotated[str, typer.Option(help="Dataset spec with captions (see `mmcli data --help`).")] = "shapes",
    objectives: Annotated[str, typer.Option(
        help="Comma-separated itc, itm, lm, each optionally NAME=WEIGHT (e.g. lm=0.5); see above.")] = "itc,itm,lm",
    out: o.Out = None,
    init: o.Init = None,
    preset: o.PresetOpt = o.Preset.small,
    fusion: o.FusionOpt = None,
    model: o.ModelOpt = None,
    epochs: o.Epochs = None,
    max_steps: o.MaxSteps = None,
    batch_size: Annotated[int, typer.Option(
        min=2, max=o.MAX_BATCH, help="Image-caption pairs per batch (images with --group-captions): the in-batch "
        "negatives of itc and itm.")] = 32,
    grad_accum: o.GradAccum = 1,
    lr: o.Lr = 3e-4,
    warmup_steps: o.WarmupSteps = 100,
    label_smoothing: o.LabelSmoothing = 0.0,
    vocab_size: o.VocabSize = None,
    group_captions: o.GroupCaptions = False,
    augment: o.AugmentOpt = o.Augment.none,
    image_cache: o.ImageCacheOpt = False,
    freeze_backbone: o.FreezeBackbone = False,
    feature_cache: o.FeatureCacheOpt = False,
    compile: o.CompileOpt = False,
    beam: o.Beam = 1,
    precision: o.PrecisionOpt = o.Precision.auto,
    seed: o.Seed = 0,
    deterministic: o.Deterministic = False,
    eval_every: o.EvalEvery = None,
    patience: o.Patience = None,
    workers: o.Workers = None,
    device: o.Device = None,
    resume: o.Resume = None,
    strict: o.Strict = False,
    test: o.Test = None,
    allow_outside_root: o.AllowOutsideRoot = False,
) -> None:
    cfg = o.train_config(
        resume, task="pretrain", data=data, objectives=objectives, init=init, model=o.model_overrides(model),
        out=out or Path("runs") / f"pretrain-{datetime.now():%Y%m%d-%H%M%S}", preset=preset, fusion=fusion,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup_steps, label_smoothing=label_smoothing, vocab_size=vocab_size,
        group_captions=group_captions, augment=augment, image_cache=image_cache, freeze_backbone=freeze_backbone,
        feature_cache=feature_cache, compile=compile,
        beam=beam, precision=precision, seed=seed, deterministic=deterministic,
        eval_every=eval_every, patience=patience, workers=workers, device=device, strict=strict, test=test,
        allow_outside_root=allow_outside_root,
    )
    o.run_training(cfg, "pretrain")
