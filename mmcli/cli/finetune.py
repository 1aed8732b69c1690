"""``mmcli finetune``: options in, a TrainConfig, one ``fit`` call, the closing table out."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as o
from .options import Task

SHORT = "Train a model for captioning, VQA or retrieval, keeping the best checkpoint on the val split."

HELP = """Train a vision-language model for one task and select it on the validation split.

[b]Tasks[/b]: caption (LM loss; selected by CIDEr-D of greedy captions), vqa (soft-target BCE; selected by VQA accuracy), retrieval (ITC + ITM on hard negatives; selected by the mean of R@1/5/10 in both directions). The test split is never used for selection (with --test, the default, best/ is evaluated on it once at the end); a dataset without a val split validates on a seeded 10% of its train images.

[b]From a pretrained model[/b]: --init RUN_DIR (a `mmcli pretrain` run, or any run with best/ or last/; best/ is preferred) starts from that run's weights and tokenizer. The model architecture is the init run's: --preset is ignored, and --fusion, if given, must match it; --model image_size=N runs it at another resolution (its position embeddings resampled), and --model image_adapter=N adds an adapter. A head the init run lacks starts fresh: for vqa a new answer head over the answers of this data, with the questions read by the init run's tokenizer.

[b]easy-VQA[/b] (the default data of --task vqa) with the small preset takes its own defaults, tuned on its val split: --fusion late --batch-size 16 --max-steps 850 --eval-every 425 --model drop_stages=2,text_layers=1 at the images' 64 px (under 5 minutes on a 2-core CPU, under 2 in bf16; 99.5-99.9% test accuracy for 3 seeds; RESULTS.md). Any of these options given on the command line replaces its default; the run says which defaults it took.

[b]The run directory[/b] (--out) holds config.json, metrics.jsonl (one JSON line per log step and validation), last/ (resumable) and best/ (the selected model, for inference). Ctrl-C or SIGTERM finishes the current step, saves last/ and exits with 130 / 143; continue with --resume RUN_DIR (the run's own settings are reused; --epochs, --max-steps, --eval-every, --patience, --workers and --device may be changed).
"""

EPILOG = """[b]Examples[/b]

  mmcli finetune --task vqa --preset tiny --epochs 2

  mmcli finetune --task caption --data shapes:2000:64 --fusion concat --out runs/cap

  mmcli finetune --task retrieval --data flickr8k:../shared/data/flickr8k --batch-size 64 --precision bf16

  mmcli finetune --task caption --init runs/pt --data shapes:2000 --out runs/cap-pt

  mmcli finetune --task caption --data shapes:2000 --group-captions --augment light --label-smoothing 0.1 --beam 3

  mmcli finetune --resume runs/cap --max-steps 5000
"""

DEFAULT_DATA = {"vqa": "easyvqa", "caption": "shapes", "retrieval": "shapes"}
# model overrides for built-in datasets: easy-VQA images are 64x64, so the model sees them at
# their native size (the small preset's 128 px costs 4x the backbone compute for no detail)
DATA_MODEL = {"easyvqa": {"image_size": 64}}
# the easy-VQA recipe of the small preset, the defaults of `mmcli finetune --task vqa` (RESULTS.md
# has its 3 seeds and the fusion table): a resnet18 cut after its second stage (8x8 image tokens at
# 64 px), one text layer, late fusion (the pooled image and question vectors and their product: a
# yes/no question compares a colour or shape named in the question with the image's, which the
# product gives at once and cross-attention learns slowly) and 850 steps of 16 images, about
# 4.5 minutes on a 2-core CPU. Each value is a default: an option given on the command line wins.
EASYVQA_SMALL = {"model": {"drop_stages": 2, "text_layers": 1}, "fusion": "late", "batch_size": 16,
                 "max_steps": 850, "eval_every": 425}


def finetune(
    task: Annotated[Task, typer.Option("--task", "-t", help="What to train for.")] = Task.vqa,
    data: Annotated[Optional[str], typer.Option(
        help="Dataset spec (see `mmcli data --help`).  \\[default: easyvqa for vqa, shapes otherwise]",
        show_default=False)] = None,
    out: o.Out = None,
    init: o.Init = None,
    preset: o.PresetOpt = o.Preset.small,
    fusion: o.FusionOpt = None,
    model: o.ModelOpt = None,
    epochs: o.Epochs = None,
    max_steps: o.MaxSteps = None,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, max=o.MAX_BATCH, help="Items per batch; for vqa (and caption or retrieval with --group-captions), images "
        "per batch, each with all its questions (captions): the image is encoded once.  \\[default: 32; 16 for easy-VQA]",
        show_default=False)] = None,
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
    data = data or DEFAULT_DATA[task.value]
    model_defaults = None if init else DATA_MODEL.get(data)
    if resume is None and task is Task.vqa and data == "easyvqa" and preset is o.Preset.small:
        # the easy-VQA recipe fills what the user left out (with --init the model, fusion
        # included, is the init run's; --epochs replaces the recipe's steps)
        r, used = EASYVQA_SMALL, {}
        if fusion is None and init is None:
            fusion = used["fusion"] = o.Fusion(r["fusion"])
        if batch_size is None:
            batch_size = used["batch_size"] = r["batch_size"]
        if max_steps is None and epochs is None:
            max_steps = used["max_steps"] = r["max_steps"]
            if eval_every is None:
                eval_every = used["eval_every"] = r["eval_every"]
        if init is None:
            model_defaults = {**model_defaults, **r["model"]}
            used["model"] = ",".join(f"{k}={v}" for k, v in r["model"].items())
        _note_recipe("easy-VQA", used)
    model = o.model_overrides(model, model_defaults)
    cfg = o.train_config(
        resume, task=task, data=data, model=model, init=init,
        out=out or Path("runs") / f"{task.value}-{datetime.now():%Y%m%d-%H%M%S}", preset=preset, fusion=fusion,
        epochs=epochs, max_steps=max_steps, batch_size=batch_size or 32, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup_steps, label_smoothing=label_smoothing, vocab_size=vocab_size, group_captions=group_captions,
        augment=augment, image_cache=image_cache, freeze_backbone=freeze_backbone, feature_cache=feature_cache,
        compile=compile, beam=beam, precision=precision, seed=seed,
        deterministic=deterministic, eval_every=eval_every, patience=patience, workers=workers, device=device,
        strict=strict, test=test, allow_outside_root=allow_outside_root,
    )
    o.run_training(cfg, "finetune")


def _note_recipe(name: str, used: dict) -> None:
    """One stderr line (rank 0) naming the recipe defaults a run took, as options."""
    import sys

    from ..device import rank

    if used and rank() == 0:
        flags = " ".join(f"--{k.replace('_', '-')} {getattr(v, 'value', v)}" for k, v in used.items())
        print(f"mmcli: {name} defaults of the small preset: {flags} (an option given replaces its default)",
              file=sys.stderr)
