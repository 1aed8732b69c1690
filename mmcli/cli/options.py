"""Choices and options shared by several commands (plain Enums, so `--help` lists them).

The training commands (``finetune``, ``pretrain``) declare the same options with
the ``Annotated`` types below, build their config with :func:`train_config` and
run it with :func:`run_training`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

# upper bounds of the numeric flags: far beyond any real use, they turn a mistyped or absurd value
# (10**30 steps, a million worker processes, a beam no memory holds) into one clear error line
# instead of an endless run, an overflow deep inside torch or a machine brought down
MAX_STEPS = 1_000_000_000  # steps, epochs, warmup, evaluation interval, patience, gradient accumulation
MAX_BATCH = 65_536  # items per batch
MAX_BEAM = 64  # beam width
MAX_WORKERS = 64  # DataLoader worker processes
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_TOP = 1_000_000  # --top-k, -k: clamped to what there is below this


def finite(value: Optional[float]) -> Optional[float]:
    """Option callback: refuse nan and inf, which pass click's range checks."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def allow_outside_root_option():
    """``--allow-outside-root``: the one switch that lets image paths in an annotation file leave their folder."""
    return typer.Option(
        "--allow-outside-root",
        help="Accept image paths in annotation files that lead outside their image folder ('..' or absolute paths "
        "elsewhere); by default such a path is an error naming the file and the path.")


class Task(str, Enum):
    caption = "caption"
    vqa = "vqa"
    retrieval = "retrieval"


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


class Augment(str, Enum):
    none = "none"
    light = "light"


# ---------------------------------------------------------------- the training commands' options
Out = Annotated[Optional[Path], typer.Option(
    help="Run directory.  \\[default: runs/TASK-TIMESTAMP]", show_default=False)]
PresetOpt = Annotated[Preset, typer.Option(
    "--preset", help="Model size; ignored with --init (the init run's model is used).")]
FusionOpt = Annotated[Optional[Fusion], typer.Option(
    "--fusion", help="late | concat | cross; with --init it must be the init run's.  \\[default: the preset's, cross; "
    "late for easy-VQA with the small preset]",
    show_default=False)]
Init = Annotated[Optional[Path], typer.Option(
    help="Start from this run's weights and tokenizer (RUN/best, else RUN/last, or a checkpoint directory); "
    "the model architecture is the init run's.", show_default=False, file_okay=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", metavar="KEY=VALUE[,...]",
    help="Model settings over the preset's: comma-separated ModelConfig fields, e.g. drop_stages=1,dropout=0.2 "
    "or text_layers=1,fusion_layers=3 (also backbone, image_size, dim, heads, mlp_ratio, embed_dim, "
    "freeze_backbone, image_pool...; true/false for switches, none for an optional path); backbone.NAME=VALUE "
    "passes NAME to the timm model's constructor, e.g. backbone.depth=4,backbone.embed_dim=256 for a smaller ViT. "
    "image_adapter=N adds a trainable residual MLP of width N on the backbone's tokens (for a frozen, cached "
    "backbone; it starts at zero). With --init only image_adapter and image_size are taken (image_size: the "
    "init run's model at another resolution, its position embeddings resampled): the init run fixes the rest of "
    "the model.  \\[default: the preset's]", show_default=False)]
AugmentOpt = Annotated[Augment, typer.Option(
    "--augment", help="Training images: none (the eval resize and center crop) or light (a random-resized crop of "
    "50-100% of the area and a horizontal flip; the flip makes 'left' and 'right' in captions and questions "
    "wrong). Validation and test always see the eval transform.")]
VocabSize = Annotated[Optional[int], typer.Option(
    min=16, max=1_000_000, help="Upper bound of the SentencePiece vocabulary trained on the training text "
    "(fewer pieces when the text has fewer: then BPE, whole words, when it takes fewer tokens than unigram). Ignored with --init (the init run's tokenizer).  \\[default: 8000]",
    show_default=False)]
LabelSmoothing = Annotated[float, typer.Option(
    min=0.0, max=1.0, callback=finite, help="Label smoothing F of the captioning (LM) loss, below 1: the target "
    "is 1-F on the true token plus F spread over the vocabulary; 0 = plain cross-entropy.")]
ImageCacheOpt = Annotated[bool, typer.Option(
    "--image-cache/--no-image-cache",
    help="Decode every train/val/test image once into one memory-mapped cache (square, at the eval transform's "
    "resize side, e.g. 134 px for 128 px images) under $MMCLI_CACHE (else ~/.cache/mmcli); later runs on the "
    "same data and image size reuse it, changed files rebuild it; `mmcli data cache` lists and removes caches.")]
FreezeBackbone = Annotated[bool, typer.Option(
    "--freeze-backbone/--no-freeze-backbone",
    help="Keep the backbone's weights as they start (from --init, --model backbone_weights=FILE, or random); "
    "the projection after it and everything else train. The backbone then runs forward only.")]
FeatureCacheOpt = Annotated[bool, typer.Option(
    "--feature-cache/--no-feature-cache",
    help="With --freeze-backbone: run the backbone once over every train/val/test image (eval transform) and "
    "store its features under $MMCLI_CACHE; training reads them instead of images, and later runs with the "
    "same backbone weights reuse them (each backbone state adds a cache: `mmcli data cache` lists and removes "
    "them). Not with --augment light.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile/--no-compile",
    help="torch.compile the image tower and the Transformer blocks for the training steps (validation runs "
    "eagerly): fused element-wise work, a minute or more of compiling first; pays on long runs (BENCHMARKS.md).")]
GroupCaptions = Annotated[bool, typer.Option(
    "--group-captions/--no-group-captions",
    help="caption, retrieval, pretrain: one batch item per image with all its captions, the image encoded once "
    "for all of them (--batch-size then counts images). The LM loss is the mean over all caption tokens, as for "
    "pairs; ITC scores every caption, an image's own captions all counting as its matches; ITM takes one "
    "caption per image, each in turn.")]
Beam = Annotated[int, typer.Option(
    min=1, max=MAX_BEAM, help="Captions for validation and the final test: 1 = greedy decoding, N > 1 = beam search "
    "of width N.")]
Epochs = Annotated[Optional[int], typer.Option(
    min=1, max=MAX_STEPS, help="Passes over the train split.  \\[default: 10]", show_default=False)]
MaxSteps = Annotated[Optional[int], typer.Option(min=1, max=MAX_STEPS, help="Optimizer steps; replaces --epochs.",
                                                 show_default=False)]
GradAccum = Annotated[int, typer.Option(min=1, max=MAX_STEPS, help="Batches per optimizer step.")]
Lr = Annotated[float, typer.Option(min=0.0, callback=finite, help="Peak learning rate (linear warmup, cosine decay).")]
WarmupSteps = Annotated[int, typer.Option(min=0, max=MAX_STEPS, help="Linear warmup steps.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="Autocast dtype of training: auto = bf16 where the device computes it natively (a CUDA GPU "
    "with bf16, a CPU with AVX-512 BF16 or AMX; about 2x faster there), else fp32; fp16 is CUDA only.")]
InferPrecision = Annotated[Precision, typer.Option(
    "--precision", help="The model's weights for inference: auto = bf16 on a CUDA GPU that has it, else fp32 "
    "(each image then gets the caption it gets alone); bf16 on a CPU with AVX-512 BF16 or AMX is about 1.4x "
    "faster and may change a caption where two words are near a tie; fp16 is CUDA only.")]
Seed = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the initialisation and the data order.")]
Deterministic = Annotated[bool, typer.Option(
    help="Deterministic kernels, no worker processes: bit-identical resumes.")]
EvalEvery = Annotated[Optional[int], typer.Option(
    min=0, max=MAX_STEPS, help="Validate every N steps; 0 = each epoch.  \\[default: 0]",
    show_default=False)]
Patience = Annotated[Optional[int], typer.Option(
    min=0, max=MAX_STEPS, help="Stop after N validations without improvement; 0 = never.  \\[default: 0]",
    show_default=False)]
Workers = Annotated[Optional[int], typer.Option(
    min=0, max=MAX_WORKERS, help="DataLoader worker processes.  \\[default: 0]", show_default=False)]
Device = Annotated[Optional[str], typer.Option(
    help="auto | cpu | cuda | cuda:N.  \\[default: auto]", show_default=False)]
Resume = Annotated[Optional[Path], typer.Option(
    help="Continue the run in this directory from its last/ checkpoint (with its own settings).",
    show_default=False, file_okay=False)]
Strict = Annotated[bool, typer.Option(help="Stop at the first unreadable training image instead of skipping it.")]
AllowOutsideRoot = Annotated[bool, allow_outside_root_option()]
Test = Annotated[Optional[bool], typer.Option(
    "--test/--no-test", help="After training, evaluate best/ once on the test split (when the dataset has one): "
    "shown in the table, written to metrics.jsonl and RUN/results.json.  \\[default: --test]", show_default=False)]

# the options a resumed run may change; every other one is the run's own
RESUMABLE = ("epochs", "max_steps", "eval_every", "patience", "workers", "device", "test")


def train_config(resume: Path | None, **options):
    """The TrainConfig of a training command: with ``resume`` the run's own, changed by the
    RESUMABLE options given; else a new one. An option left out (None) keeps its default."""
    from ..errors import UserError
    from ..train import TrainConfig, resume_config

    given = {k: v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v
             for k, v in options.items() if v is not None}
    if resume is None:
        return TrainConfig(**given)
    if "init" in given:
        raise UserError("--init starts a new run and --resume continues one; give only one of them")
    return resume_config(resume, **{k: v for k, v in given.items() if k in RESUMABLE})


def model_overrides(spec: str | None, defaults: dict | None = None) -> dict | None:
    """``--model`` (:func:`mmcli.config.parse_model_overrides`) over ``defaults`` (the command's own
    for a dataset), the user's values winning; None when both are empty."""
    from ..config import parse_model_overrides

    merged = {**(defaults or {}), **(parse_model_overrides(spec) if spec else {})}
    return merged or None


def run_training(cfg, command: str) -> None:
    """``fit(cfg)``, then the closing table; an interrupted run exits with 130 / 143."""
    from rich.console import Console

    from ..train import fit, summary_table

    result = fit(cfg)
    Console().print(summary_table(result, command))
    if result.exit_code:
        raise typer.Exit(result.exit_code)
