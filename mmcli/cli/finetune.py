"""``mmcli finetune``: options in, a TrainConfig, one ``fit`` call, the closing table out."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Task

SHORT = "Train a model for captioning, VQA or retrieval, keeping the best checkpoint on the val split."

HELP = """Train a vision-language model for one task and select it on the validation split.

[b]Tasks[/b]: caption (LM loss; selected by CIDEr-D of greedy captions), vqa (soft-target
BCE; selected by VQA accuracy), retrieval (ITC + ITM on hard negatives; selected by the mean
of R@1/5/10 in both directions). The test split is never used for selection (with --test, the default, best/ is evaluated
on it once at the end); a dataset
without a val split validates on a seeded 10% of its train images.

[b]The run directory[/b] (--out) holds config.json, metrics.jsonl (one JSON line per log
step and validation), last/ (resumable) and best/ (the selected model, for inference).
Ctrl-C or SIGTERM finishes the current step, saves last/ and exits with 130 / 143;
continue with --resume RUN_DIR (the run's own settings are reused; --epochs, --max-steps,
--eval-every, --patience, --workers and --device may be changed).
"""

EPILOG = """[b]Examples[/b]

  mmcli finetune --task vqa --preset tiny --epochs 2

  mmcli finetune --task caption --data shapes:2000:64 --fusion concat --out runs/cap

  mmcli finetune --task retrieval --data flickr8k:../shared/data/flickr8k --batch-size 64 --precision bf16

  mmcli finetune --resume runs/cap --max-steps 5000
"""


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    base = "base"


class Fusion(str, Enum):
    late = "late"
    concat = "concat"
    cross = "cross"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


DEFAULT_DATA = {"vqa": "easyvqa", "caption": "shapes", "retrieval": "shapes"}
# model overrides for built-in datasets: easy-VQA images are 64x64, so the model sees them at
# their native size (the small preset's 128 px costs 4x the backbone compute for no detail)
DATA_MODEL = {"easyvqa": {"image_size": 64}}


def finetune(
    task: Annotated[Task, typer.Option("--task", "-t", help="What to train for.")] = Task.vqa,
    data: Annotated[Optional[str], typer.Option(
        help="Dataset spec (see `mmcli data --help`).  \\[default: easyvqa for vqa, shapes otherwise]",
        show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory.  \\[default: runs/TASK-TIMESTAMP]", show_default=False)] = None,
    preset: Annotated[Preset, typer.Option(help="Model size.")] = Preset.small,
    fusion: Annotated[Optional[Fusion], typer.Option(
        help="late | concat | cross.  \\[default: the preset's, cross]", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        min=1, help="Passes over the train split.  \\[default: 10]", show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        min=1, help="Optimizer steps; replaces --epochs.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per batch; for vqa, images per batch, each with all its questions (the image is encoded once).")] = 32,
    grad_accum: Annotated[int, typer.Option(min=1, help="Batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (linear warmup, cosine decay).")] = 3e-4,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warmup steps.")] = 100,
    precision: Annotated[Precision, typer.Option(
        help="auto: bf16 on a CUDA GPU that supports it, else fp32; fp16 is CUDA only.")] = Precision.auto,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the data order.")] = 0,
    deterministic: Annotated[bool, typer.Option(
        help="Deterministic kernels, no worker processes: bit-identical resumes.")] = False,
    eval_every: Annotated[Optional[int], typer.Option(
        min=0, help="Validate every N steps; 0 = each epoch.  \\[default: 0]", show_default=False)] = None,
    patience: Annotated[Optional[int], typer.Option(
        min=0, help="Stop after N validations without improvement; 0 = never.  \\[default: 0]",
        show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(
        min=0, help="DataLoader worker processes.  \\[default: 0]", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option(
        help="auto | cpu | cuda | cuda:N.  \\[default: auto]", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run in this directory from its last/ checkpoint.", show_default=False,
        file_okay=False)] = None,
    strict: Annotated[bool, typer.Option(
        help="Stop at the first unreadable training image instead of skipping it.")] = False,
    test: Annotated[Optional[bool], typer.Option(
        "--test/--no-test", help="After training, evaluate best/ once on the test split (when the dataset "
        "has one): shown in the table, written to metrics.jsonl and RUN/results.json.  \\[default: --test]",
        show_default=False)] = None,
) -> None:
    from rich.console import Console

    from ..train import TrainConfig, fit, resume_config, summary_table

    changes = {k: v for k, v in dict(epochs=epochs, max_steps=max_steps, eval_every=eval_every,
                                     patience=patience, workers=workers, device=device, test=test).items() if v is not None}
    if resume is not None:
        cfg = resume_config(resume, **changes)
    else:
        cfg = TrainConfig(
            task=task.value, data=data or DEFAULT_DATA[task.value],
            model=dict(DATA_MODEL.get(data or DEFAULT_DATA[task.value], {})),
            out=str(out or Path("runs") / f"{task.value}-{datetime.now():%Y%m%d-%H%M%S}"),
            preset=preset.value, fusion=fusion.value if fusion else None, batch_size=batch_size,
            grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, precision=precision.value, seed=seed,
            deterministic=deterministic, strict=strict, **changes,
        )
    result = fit(cfg)
    Console().print(summary_table(result))
    if result.exit_code:
        raise typer.Exit(result.exit_code)
