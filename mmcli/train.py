"""Task training: ``fit(TrainConfig) -> FitResult``, one loop shared by caption, VQA, retrieval and
pretraining (ITC, ITM and LM objectives, weighted); ``init`` starts a run from another run's weights.

Reading order: :class:`TrainConfig` (every knob), :func:`fit` (the loop on one
screen), then the helpers it calls: building the data and model, the per-task
losses, validation, and the run directory (lock, ``config.json``,
``metrics.jsonl``, ``last/`` and ``best/`` checkpoints).

A run directory::

    RUN/
      config.json     the TrainConfig, the ModelConfig and the status (running, interrupted,
                      finished, failed), rewritten atomically
      metrics.jsonl   one JSON object per log step and per validation, appended and flushed
      last/           the latest checkpoint with train_state.pt (resume from here)
      best/           the checkpoint with the best validation metric (no train state)
      lock            the pid of the process training in RUN (removed at exit)

Steps are optimizer steps; with ``grad_accum`` each one consumes ``grad_accum``
batches. The data order of epoch ``e`` is a permutation drawn from a
``torch.Generator`` seeded with ``seed + e``, so a resumed run skips the batches
the interrupted one already used and sees exactly the same data after them.

Data: training images go through the backbone's eval transform, or with
``augment="light"`` a random-resized crop and a flip (drawn from the torch RNG of
the process that loads the batch: without workers the global one, which ``last/``
saves); validation and test always see the eval transform.
``image_cache`` decodes every image once into a memory-mapped
:class:`~mmcli.data.images.ImageCache` under ``$MMCLI_CACHE``, reused by later runs.
VQA trains on images each with all their questions (the image encoded once);
captioning on image-caption pairs, or with ``group_captions`` on images each with
all their captions, the same way (``batch_size`` then counts images).

Under ``torchrun`` the same loop runs data-parallel (DDP), one process per device:
rank ``r`` takes the ``r``-th of ``world`` equal slices of every batch (``--batch-size``
is the global batch, so the data order and resuming are those of one process), the losses are
weighted so that DDP's mean of the gradients is the global batch's, rank 0 alone
validates, writes and prints, and every rank stops at the same step; see
:mod:`mmcli.device`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import preset
from .device import (Distributed, all_ranks, barrier, broadcast_object, gather, gather_objects, is_main,
                     max_over_ranks, rank, resolve_precision, share, sum_over_ranks, world)
from .device import resolve_device  # noqa: F401 (it lived here: train.resolve_device still works)
from .errors import UserError

TASK_METRIC = {"caption": "cider_d", "vqa": "vqa_accuracy", "retrieval": "mean_recall",
               "pretrain": "mean_recall"}  # pretrain: with the default objectives; see selection_metric
# the pretraining objectives (--objectives), computed by pretrain_loss on image-caption pairs
OBJECTIVES = {
    "itc": "image-text contrastive: each image against the batch's captions, and each caption against its images",
    "itm": "image-text matching: match / no-match of a pair, on hard negatives drawn from the ITC similarities",
    "lm": "language modelling: the caption's next-token cross-entropy given the image (captioning)",
}
DEFAULT_OBJECTIVES = "itc,itm,lm"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report
# fields that define a run: resuming with other values would silently train something else
_IDENTITY = ("task", "data", "preset", "fusion", "model", "seed", "batch_size", "grad_accum",
             "vocab_size", "answer_top_k", "max_text_len", "objectives", "init", "augment", "label_smoothing",
             "group_captions", "image_cache", "freeze_backbone", "feature_cache")
AUGMENTS = ("none", "light")
FUSED_ADAMW = ("cpu", "cuda")  # devices whose AdamW step takes torch's fused kernel (benchmarks/bench_optim.py)
GROUPED_TASKS = ("caption", "retrieval", "pretrain")  # tasks that can take images each with all their captions
LM_BUCKET_ROWS = 32  # the LM loss cuts a batch's captions into length buckets of at least this many rows  # mmcli.data.images.make_transform


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fit`` needs; saved as ``train`` in every checkpoint's config."""

    task: str = "caption"  # caption | vqa | retrieval | pretrain
    data: str = "shapes"  # a dataset spec (mmcli.data.spec)
    objectives: str | None = None  # pretrain only: "itc,itm,lm" or weighted "itc=1,lm=0.5"; None = DEFAULT_OBJECTIVES
    init: str | None = None  # start from this run's (or checkpoint's) weights, tokenizer and ModelConfig
    out: str = "runs/run"  # the run directory
    preset: str = "small"  # tiny | small | base
    fusion: str | None = None  # None: the preset's
    model: dict = field(default_factory=dict)  # other ModelConfig overrides, e.g. {"dim": 128}; not with init
    epochs: int = 10
    max_steps: int | None = None  # optimizer steps; when set, it replaces epochs
    batch_size: int = 32
    grad_accum: int = 1  # batches per optimizer step
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16 (CUDA)
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms, no worker processes
    eval_every: int = 0  # validate every N steps; 0 = at the end of each epoch
    patience: int = 0  # stop after this many validations without improvement; 0 = never
    workers: int = 0  # DataLoader worker processes
    vocab_size: int = 8000  # tokenizer upper bound (SentencePiece may give fewer)
    answer_top_k: int = 3129  # VQA answer vocabulary size
    max_text_len: int = 32
    augment: str = "none"  # training images: none (the eval transform) | light (random-resized crop + flip)
    label_smoothing: float = 0.0  # of the LM loss (caption, pretrain's lm objective)
    group_captions: bool = False  # caption, retrieval, pretrain: one item per image with all its captions (batch_size counts images)
    image_cache: bool = False  # decode every image once into a memory-mapped ImageCache under $MMCLI_CACHE
    freeze_backbone: bool = False  # the backbone's weights stay as initialised (or as the init run left them)
    feature_cache: bool = False  # frozen backbone: its features of every image computed once, under $MMCLI_CACHE
    compile: bool = False  # torch.compile the image tower and the Transformer blocks for the training steps
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # a run directory to continue (then out is that directory)
    strict: bool = False  # a bad training image is an error instead of a warning
    beam: int = 1  # caption validation: 1 = greedy, else beam search with this width
    log_every: int = 10  # steps between log lines / metrics.jsonl entries
    test: bool = True  # after training, evaluate best/ once on the test split (if the dataset has one)
    allow_outside_root: bool = False  # accept annotation image paths that leave their image folder

    def __post_init__(self):
        if self.task not in TASK_METRIC:
            raise UserError(f"unknown task {self.task!r}; choose from {', '.join(TASK_METRIC)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "beam"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "patience", "workers", "grad_clip", "weight_decay"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"max_steps must be at least 1, got {self.max_steps}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1):
            raise UserError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")
        if self.objectives is not None:
            if self.task != "pretrain":
                raise UserError(f"--objectives is for pretrain; task {self.task} has its own loss")
            parse_objectives(self.objectives)
        if self.augment not in AUGMENTS:
            raise UserError(f"unknown augment {self.augment!r}; choose from {', '.join(AUGMENTS)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.task not in ("caption", "pretrain"):
            raise UserError(f"--label-smoothing is for the LM loss (task caption, pretrain's lm); "
                            f"task {self.task} has none")
        if self.group_captions and self.task not in GROUPED_TASKS:
            raise UserError(f"--group-captions is for tasks {', '.join(GROUPED_TASKS)}; task {self.task} "
                            "has no captions to group")
        if self.feature_cache and self.augment != "none":
            raise UserError(f"--feature-cache stores each image's features under the eval transform once; "
                            f"--augment {self.augment} would need new ones every epoch: leave one of them out")
        fixed = {k: v for k, v in self.model.items() if k not in INIT_CHANGES}
        if self.init is not None and fixed and self.resume is None:
            # (a run resumed with init may carry overrides saved before this check: model_config ignores them)
            raise UserError(f"--model {_overrides(fixed)} cannot be combined with --init: the init run fixes "
                            f"the model (its ModelConfig and weights); leave --model out, or give only "
                            f"{', '.join(INIT_ADDS)} (new layers on top of the init run's) or image_size "
                            "(its position embeddings resampled)")

    def objective_weights(self) -> dict[str, float]:
        """Pretraining objective -> weight (see :func:`parse_objectives`)."""
        return parse_objectives(self.objectives or DEFAULT_OBJECTIVES)

    def model_config(self, **sizes):
        """The ModelConfig of this run (``sizes``: vocab_size, n_answers known after the data).

        With ``init`` it is the init run's (``preset`` and ``model`` are ignored; see
        :func:`_init_model_config`).
        """
        if self.init is not None:
            mc = _init_model_config(self, sizes)
        else:
            changes = dict(self.model, max_text_len=self.max_text_len, **sizes)
            if self.fusion is not None:
                changes["fusion"] = self.fusion
            try:
                mc = preset(self.preset, **changes)
            except TypeError as e:  # an unknown field name in `model`
                raise UserError(f"model overrides {sorted(self.model)}: {e}") from None
        if self.freeze_backbone:
            mc = replace(mc, freeze_backbone=True)
        if self.task == "pretrain" and mc.fusion == "late" and "lm" in self.objective_weights():
            raise UserError("--fusion late cannot do the lm objective: late fusion combines pooled vectors and has "
                            "no token-level attention to generate text; pretrain it with --objectives itc,itm, "
                            "or use --fusion concat or cross")
        return mc

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _overrides(model: dict) -> str:
    """``{"dropout": 0.2, "text_layers": 1}`` -> ``dropout=0.2,text_layers=1`` (as --model takes them)."""
    return ",".join(f"{k}={'none' if v is None else v}" for k, v in model.items())


def parse_objectives(spec: str) -> dict[str, float]:
    """``"itc,itm,lm"`` or ``"itc=1,itm=1,lm=0.5"`` -> ``{objective: weight}``; a bare name weighs 1."""
    choices = ", ".join(OBJECTIVES)
    if not spec.strip():
        raise UserError(f"--objectives is empty; give some of {choices}, e.g. itc,itm,lm or itc=1,lm=0.5")
    weights = {}
    for part in spec.split(","):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise UserError(f"--objectives {spec!r}: an empty entry; give a comma-separated list of {choices}")
        if name not in OBJECTIVES:
            raise UserError(f"--objectives: unknown objective {name!r}; choose from {choices}")
        if name in weights:
            raise UserError(f"--objectives: {name} is given twice")
        try:
            weight = float(value) if eq else 1.0
        except ValueError:
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            raise UserError(f"--objectives: bad weight {value.strip()!r} for {name}; expected a positive number, "
                            f"e.g. {name}=0.5 (leave an objective out to turn it off)")
        weights[name] = weight
    return weights


# ModelConfig fields --model may give with --init: they add new layers (starting as the identity) to the
# init run's model, whose other fields and weights stay as they are; each with its layers' parameter names,
# which the init checkpoint may lack
INIT_ADDS = {"image_adapter": "vision.adapter."}
# and those it may give besides: the image size, at which the init run's position embeddings are resampled
# (mmcli.model.vision.resample_position_grids; a backbone's other weights are the same at any size)
INIT_CHANGES = (*INIT_ADDS, "image_size")


def init_checkpoint(init: str | os.PathLike) -> Path:
    """The checkpoint ``--init`` names: RUN/best, else RUN/last, or a checkpoint directory itself."""
    p = Path(init)
    if not p.is_dir():
        raise UserError(f"--init {init}: {'not a directory' if p.exists() else 'directory not found'}")
    if (p / "model.safetensors").is_file():  # a checkpoint directory itself
        return p
    for name in ("best", "last"):  # (.NAME.old: a save was interrupted; load_checkpoint reads it)
        if (p / name).is_dir() or (p / f".{name}.old").is_dir():
            return p / name
    raise UserError(f"--init {init}: no checkpoint in it (expected a training run with best/ or last/, "
                    "or a checkpoint directory with model.safetensors)")


def _init_model_config(cfg: TrainConfig, sizes: dict):
    """``init``: the init run's ModelConfig with this run's ``sizes`` (a new VQA head); a resumed
    run reads its own config.json instead, so the init run may be gone by then."""
    from .checkpoint import read_config
    from .config import ModelConfig

    if cfg.resume is not None:
        where = Path(cfg.resume) / "config.json"
        saved = _read_json(where).get("model")
    else:
        where = init_checkpoint(cfg.init)
        saved = read_config(where).get("model")
    if not isinstance(saved, dict):
        raise UserError(f"{where}: has no model config; cannot initialise from it")
    mc = ModelConfig.from_dict(saved)
    if cfg.fusion is not None and cfg.fusion != mc.fusion:
        raise UserError(f"--fusion {cfg.fusion} does not match the --init run ({where}: fusion {mc.fusion}); "
                        f"the model comes from the init run: leave --fusion out or give {mc.fusion}")
    if cfg.max_text_len > mc.max_text_len:
        raise UserError(f"max_text_len {cfg.max_text_len} is longer than the --init model's "
                        f"{mc.max_text_len} ({where}); use at most {mc.max_text_len}")
    if cfg.resume is None:  # new layers over the init run's model (a resumed run's config has them already)
        mc = replace(mc, **{k: v for k, v in cfg.model.items() if k in INIT_CHANGES})
    # the backbone weights come with the checkpoint: no hub download, no local file needed
    return replace(mc, pretrained=False, backbone_weights=None, **sizes)


@dataclass
class FitResult:
    """What a run did; ``exit_code`` is 0, or 130 / 143 after SIGINT / SIGTERM."""

    run_dir: Path
    metric: str  # the selection metric's name
    best: float | None  # its best value (None: never validated)
    best_step: int | None
    steps: int  # optimizer steps done, in total over all resumes
    epochs: float
    seconds: float  # wall time of this invocation
    samples_per_s: float
    skipped_images: int = 0
    stopped_early: bool = False
    exit_code: int = 0
    history: list = field(default_factory=list)  # the validation results of this invocation
    test: dict | None = None  # the test-split scores of best/ (``cfg.test``), else None
    test_seconds: float = 0.0


# ============================================================================ the loop


def fit(cfg: TrainConfig, on_step: Callable[[int, float], None] | None = None) -> FitResult:
    """Train ``cfg.task`` and select on the validation split; see the module docstring.

    ``on_step(step, loss)`` is called after every optimizer step (tests use it to
    stop a run with :func:`request_stop`).
    """
    run_dir = Path(cfg.resume or cfg.out)
    cfg = replace(cfg, out=str(run_dir))
    cfg.model_config().check_task(cfg.task)  # late + caption is refused before any work
    # under torchrun: one process per device, gloo on CPU, NCCL on CUDA (mmcli.device); only rank 0
    # takes the lock and writes the run directory (config.json, metrics.jsonl, checkpoints)
    with Distributed(cfg.device) as device, (RunLock(run_dir) if is_main() else nullcontext()), \
            _StopSignals(), _Determinism(cfg.deterministic):
        dtype = resolve_precision(cfg.precision, device)
        run = _open_run(cfg, run_dir)
        barrier()  # every rank has looked at the run directory before rank 0 writes into it
        s = _build(cfg, run, device, dtype)
        _write_status(run_dir, cfg, s.model.cfg, "running")
        try:
            result = _train(cfg, s, run_dir, on_step)
        except BaseException as e:
            _write_status(run_dir, cfg, s.model.cfg, "failed" if isinstance(e, UserError) else "interrupted")
            raise
        if not result.exit_code and cfg.test and is_main():  # (the other ranks wait at the end)
            _final_test(cfg, s, run_dir, result)
        status = "interrupted" if result.exit_code else "finished"
        _write_status(run_dir, cfg, s.model.cfg, status, result.steps)
        if is_main():
            _plot(run_dir, result.metric)
        return result


def _train(cfg: TrainConfig, s: "Session", run_dir: Path, on_step) -> FitResult:
    """The loop: epochs of batches, one optimizer step per ``grad_accum`` batches."""
    st = s.state
    start, window = time.perf_counter(), _Window()
    progress = _Progress(s.total_steps, st.step)
    try:
        history, exit_code = _epochs(cfg, s, run_dir, on_step, (progress, window))
    finally:
        progress.close()
    seen = sum_over_ranks([window.seen])[0]  # samples of every rank
    return _result(cfg, s, run_dir, history, exit_code, (time.perf_counter() - start, seen))


def _epochs(cfg: TrainConfig, s: "Session", run_dir: Path, on_step, show) -> tuple[list, int]:
    """Epochs of batches until the step budget, early stopping or a stop signal."""
    st, model, log = s.state, s.model, s.log
    progress, window = show
    history, exit_code = [], 0
    while st.step < s.total_steps and not st.early_stopped:
        batches = _epoch_batches(len(s.train_set), cfg, st.epoch, s.steps_per_epoch)
        model.train()
        for micro, batch in enumerate(_loader(s, batches[st.pos:], cfg, st.epoch), start=st.pos):
            for item in batch.skipped:  # warned once per file, counted; --strict: an error
                s.skipper.record(item.path, item.reason)
            # (empty when every image of the batch was unreadable; under torchrun, on any rank: all skip it)
            if all_ranks(len(batch) > 0):
                loss = _batch_loss(s, batch.to(s.device))
                _check_finite(loss, st, run_dir)
                s.scaler.scale(loss / cfg.grad_accum).backward()
                window.add(loss.item(), batch.n_samples)
            if (micro + 1) % cfg.grad_accum:
                continue
            _optimizer_step(cfg, s)
            st.step, st.pos = st.step + 1, micro + 1
            if on_step is not None:
                on_step(st.step, window.last)
            row = None
            if st.step % cfg.log_every == 0 or st.step == s.total_steps:
                release_free_memory()
                row = window.flush(st.step, s.scheduler.get_last_lr()[0])
                log.write(row)
            progress.update(st.step, row)
            if _eval_due(cfg, st.step, st.pos, len(batches)) or st.step == s.total_steps:
                history.append(_validate_on_rank0(cfg, s, run_dir))
            if _stop_agreed():
                exit_code = _stop(cfg, s, run_dir)
                break
            if st.step >= s.total_steps or st.early_stopped:
                break
        if exit_code:
            break
        if st.pos >= len(batches):  # the epoch is complete: the next starts at its first batch
            st.epoch, st.pos = st.epoch + 1, 0
    return history, exit_code


def _check_finite(loss: torch.Tensor, st: "TrainState", run_dir: Path) -> None:
    """A NaN/inf loss (on any rank) ends the run before its gradients touch the weights; nothing is saved."""
    if not all_ranks(bool(torch.isfinite(loss))):
        raise UserError(f"the loss became {loss.item()} at step {st.step + 1} (epoch {st.epoch + 1}); "
                        f"stopped without saving this state. The last good checkpoint is {run_dir / 'last'} "
                        "(if a validation saved one): resume it with a lower --lr, or use --precision fp32")


def _optimizer_step(cfg: TrainConfig, s: "Session") -> None:
    """Unscale, clip, step, schedule, zero the gradients."""
    s.scaler.unscale_(s.optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(s.params, cfg.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)


def _eval_due(cfg: TrainConfig, step: int, pos: int, n_batches: int) -> bool:
    if cfg.eval_every:
        return step % cfg.eval_every == 0
    return pos + cfg.grad_accum > n_batches  # the last full step of the epoch


def _stop(cfg: TrainConfig, s: "Session", run_dir: Path) -> int:
    """After SIGINT/SIGTERM: save ``last/``, say how to resume; the exit code."""
    save_last(s, run_dir, cfg)
    code = EXIT_CODES.get(_STOP.signum, 130)
    print(f"mmcli: stopped at step {s.state.step} ({signal.Signals(_STOP.signum).name}); "
          f"continue with: mmcli {'pretrain' if cfg.task == 'pretrain' else 'finetune'} --resume {run_dir}",
          file=sys.stderr, flush=True)
    return code


def _plot(run_dir: Path, metric: str) -> None:
    """``curves.png`` of the loss and the validation metric, or a note on how to get it."""
    from .plots import write_curves

    if write_curves(run_dir, metric) is None:
        print(f"mmcli: no curves.png (matplotlib is not installed: pip install 'mmcli[plot]'; then "
              f"python -m mmcli.plots {run_dir})", file=sys.stderr)


def _stop_agreed() -> bool:
    """Whether a stop was asked (SIGINT/SIGTERM, :func:`request_stop`) on any rank; under
    torchrun every rank then stops after the same step."""
    signum = max_over_ranks(_STOP.signum or 0)
    if signum:
        _STOP.signum = signum
    return bool(signum)


def _batch_loss(s: "Session", batch) -> torch.Tensor:
    """The task loss of one batch; under torchrun through DDP (``s.ddp``), whose backward
    averages the gradients over the ranks."""
    return s.loss_fn(s.model, batch, s) if s.ddp is None else s.ddp(batch, s)


# ============================================================================ building a session


@dataclass
class TrainState:
    """The loop's position and selection state: saved in ``last/train_state.pt``."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # batches of the current epoch already used
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validations since the last improvement
    early_stopped: bool = False


@dataclass
class Session:
    """Everything built for a run; the loop and its helpers share it."""

    model: torch.nn.Module
    tokenizer: object
    answers: object  # AnswerVocab or None
    train_set: torch.utils.data.Dataset
    val: object  # mmcli.data.records.Split
    image_source: object  # eval-transform ImageSource (validation, test); the train set has its own
    loss_fn: Callable
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: object
    device: torch.device
    autocast: Callable
    state: TrainState
    steps_per_epoch: int
    total_steps: int
    log: "MetricsLog"
    skipper: "ImageSkipper"
    test: object = None  # the dataset's test split (a Split) or None; only the final test reads it
    ddp: torch.nn.Module | None = None  # under torchrun: the loss in DDP (see _data_parallel), else None


@dataclass
class _Opened:
    """What :func:`_open_run` found: the checkpoint to resume from, or the ``--init`` one (or None)."""

    checkpoint: object = None
    init: object = None


def _build(cfg: TrainConfig, run: _Opened, device: torch.device, dtype: torch.dtype | None) -> Session:
    """Data, tokenizer, model, optimizer and schedule; restored from ``last/`` when resuming."""
    from .data.images import ImageSkipper, cache_size, make_transform
    from .data.loaders import ImageSource
    from .model.packed import pack_linears
    from .model.vlm import VLM

    _seed_everything(cfg.seed)
    train, val, test = _splits(cfg)
    if not (val.questions if cfg.task == "vqa" else val.captions):
        raise UserError(f"{cfg.data}: the validation split has no {'questions' if cfg.task == 'vqa' else 'captions'}")
    tokenizer, answers = _text_vocab(cfg, train, run.checkpoint, run.init)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_answers": len(answers) if answers else 0}
    model = VLM(cfg.model_config(**sizes))
    if run.init is not None and run.checkpoint is None:  # --init (a resume restores last/ instead)
        _load_init(model, run.init)
    model.to(device)
    if device.type == "cpu":  # oneDNN's linear products (mmcli/model/packed.py); the state dict is unchanged
        pack_linears(model)
    dc = model.vision.data_config
    cache = _image_cache(cfg, (train, val, test), cache_size(dc)) if cfg.image_cache else None
    source = ImageSource(make_transform(dc), cache)  # validation and test: the eval transform
    train_source = ImageSource(make_transform(dc, train=True, augment=cfg.augment), cache)
    if cfg.feature_cache:  # every split reads the frozen backbone's stored tokens instead of images
        source = train_source = _feature_source(cfg, (train, val, test), model, source, dtype)
    train_set = _train_dataset(cfg, train, train_source, tokenizer, answers)
    steps_per_epoch = (_n_batches(len(train_set), cfg.batch_size)) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise UserError(f"{cfg.data}: {len(train_set)} training items make no full step of "
                        f"{cfg.batch_size} x {cfg.grad_accum}; lower --batch-size")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.compile:
        _compile(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total, cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    s = Session(model, tokenizer, answers, train_set, val, source, _loss_fn(cfg), params, optimizer,
                scheduler, scaler, device, autocast, TrainState(), steps_per_epoch, total,
                MetricsLog(Path(cfg.out) / "metrics.jsonl"), ImageSkipper(cfg.strict), test)
    if run.checkpoint is not None:
        _restore(s, run.checkpoint)
        s.log.rewind(s.state.step)
    s.ddp = _data_parallel(cfg, s)
    return s


class _LossModule(torch.nn.Module):
    """The task loss as a module's ``forward``: DDP averages the gradients of what runs inside
    its forward, and the losses call several methods of the model, never its ``forward``."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch, s: Session) -> torch.Tensor:
        return self.loss_fn(self.model, batch, s)


def _data_parallel(cfg: TrainConfig, s: Session) -> torch.nn.Module | None:
    """Under torchrun: the task loss wrapped in DistributedDataParallel; None in one process.

    Rank r takes the r-th of ``world`` equal slices of each batch (:func:`_loader`), so the
    batch must split evenly. On CUDA, BatchNorm becomes SyncBatchNorm (statistics over the
    global batch, as in one process); PyTorch has no SyncBatchNorm on CPU, so with gloo each
    rank normalises over its own items. ``find_unused_parameters``: each task leaves some heads unused. The
    gradients are averaged at every backward, also between the batches of a ``grad_accum``
    step (``no_sync`` would save that traffic but break on a step whose last batch is skipped).
    """
    n = world()
    if n == 1:
        return None
    size = min(cfg.batch_size, len(s.train_set))
    if size % n:
        raise UserError(f"batch size {size} does not split evenly over {n} processes: under torchrun "
                        f"--batch-size is the global batch; use a multiple of {n}")
    if s.device.type == "cuda":
        from .model.vision import sync_batchnorm

        sync_batchnorm(s.model)
    return torch.nn.parallel.DistributedDataParallel(_LossModule(s.model, s.loss_fn), find_unused_parameters=True)


def _splits(cfg: TrainConfig):
    """(train, val, test) splits; val is carved from train when the dataset has none. test (None
    when the dataset has none) is only read by the final evaluation, never for selection."""
    from .data.spec import load_dataset

    ds = load_dataset(cfg.data, allow_outside_root=cfg.allow_outside_root)
    test = ds.splits.get("test")
    # single-file sources (jsonl, folder) have one split, "all": train on it, carve val
    train = ds.split("train") if "train" in ds.splits or "all" not in ds.splits else ds.splits["all"]
    if "val" in ds.splits:
        return train, ds.splits["val"], test
    train, val = carve_val(train, cfg.seed)
    print(f"mmcli: {cfg.data} has no val split: validating on a seeded 10% of the train images "
          f"({len(val.images())} images)", file=sys.stderr)
    return train, val, test


def _final_test(cfg: TrainConfig, s: Session, run_dir: Path, result: "FitResult") -> None:
    """Load ``best/`` and evaluate it once on the test split: metrics.jsonl, results.json, result.test."""
    from .checkpoint import load_checkpoint
    from .fileio import atomic_write_text

    has = s.test is not None and bool(s.test.questions if cfg.task == "vqa" else s.test.captions)
    if not has or not (run_dir / "best").exists():
        return
    t0 = time.perf_counter()
    load_checkpoint(run_dir / "best").load_into(s.model)
    scores = validate(cfg, replace(s, val=s.test))
    result.test, result.test_seconds = scores, time.perf_counter() - t0
    s.log.write({"split": "test", "step": result.best_step, "test": scores})
    name = selection_metric(cfg)
    print(f"mmcli: test of best/ (step {result.best_step}): {name} {scores[name]:.4f}", flush=True)
    summary = {"task": cfg.task, "data": cfg.data, "metric": name, "best_val": result.best,
               "best_step": result.best_step, "steps": result.steps, "train_seconds": result.seconds,
               "test": scores}
    atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=2) + "\n")


def carve_val(train, seed: int, fraction: float = 0.1):
    """Split ``train`` by image (no image in both) into (train, val) with a seeded shuffle."""
    from .data.records import Split

    ids = sorted(train.images())
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, math.ceil(fraction * len(ids)))])
    pick = lambda recs, keep: [r for r in recs if (r.image_id in held) != keep]  # noqa: E731
    return (Split(pick(train.captions, True), pick(train.questions, True)),
            Split(pick(train.captions, False), pick(train.questions, False)))


def _text_vocab(cfg: TrainConfig, train, checkpoint, init=None):
    """The tokenizer (trained on the train captions or questions, or the ``--init`` run's, whose
    token embeddings it keeps meaningful) and, for VQA, the answers (always this data's)."""
    from .tokenizer import AnswerVocab, Tokenizer

    if checkpoint is not None:  # resuming: exactly the vocabularies the run started with
        return checkpoint.tokenizer, checkpoint.answer_vocab
    if cfg.task == "vqa":
        if not train.questions:
            raise UserError(f"{cfg.data}: the train split has no questions; --task vqa needs a VQA dataset")
        texts = [q.question for q in train.questions]
        answers = AnswerVocab.build((q.answers for q in train.questions), top_k=cfg.answer_top_k)
    else:
        if not train.captions:
            raise UserError(f"{cfg.data}: the train split has no captions; --task {cfg.task} needs captions")
        texts, answers = [c for r in train.captions for c in r.captions], None
    if init is not None:
        if init.tokenizer is None:
            raise UserError(f"{init.path}: has no tokenizer.model; cannot --init from it")
        return init.tokenizer, answers
    return Tokenizer.train(texts, vocab_size=cfg.vocab_size), answers


def _load_init(model: torch.nn.Module, ckpt) -> None:
    """``--init``: every weight of the init checkpoint but its VQA head (whose answers were another
    run's: this run's head starts fresh); anything else missing or extra is an error."""
    from .model.vision import resample_position_grids

    keep = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("vqa_head.")}
    resampled = resample_position_grids(model, keep)  # (--model image_size=N: another grid of image tokens)
    missing, unexpected = replace(ckpt, state_dict=keep).load_into(model, strict=False)
    missing = [k for k in missing if not k.startswith(("vqa_head.", *INIT_ADDS.values()))]
    if missing or unexpected:
        from .errors import examples

        parts = [f"{len(lst)} {what} ({examples(lst)})"
                 for lst, what in ((missing, "missing"), (unexpected, "unexpected")) if lst]
        raise UserError(f"--init {ckpt.path}: does not match the model: {'; '.join(parts)}")
    new = " (a new VQA head)" if model.vqa_head is not None else ""
    size = f" at image size {model.cfg.image_size} ({', '.join(resampled)})" if resampled else ""
    print(f"mmcli: initialised from {ckpt.path}{new}{size}", file=sys.stderr)


def _train_dataset(cfg: TrainConfig, train, source, tokenizer, answers):
    from .data.loaders import CaptionImageDataset, PairDataset, VQAImageDataset

    if cfg.task == "vqa":  # one item per image with all its questions: the image is encoded once
        return VQAImageDataset(train.questions, source, tokenizer, answers, max_len=cfg.max_text_len)
    if cfg.group_captions:  # one item per image with all its captions: the image is encoded once
        return CaptionImageDataset(train.captions, source, tokenizer, max_len=cfg.max_text_len)
    return PairDataset(train.pairs(), source, tokenizer, max_len=cfg.max_text_len)


def _image_cache(cfg: TrainConfig, splits, size: int):
    """``image_cache``: every image of the splits decoded once, ``size`` px square, into the dataset's
    memory-mapped ImageCache under $MMCLI_CACHE (reused while it matches the files, rebuilt when
    they change). Unreadable images are recorded in it as bad and skipped (or, --strict, fatal) when
    used, as without the cache. Under torchrun rank 0 builds it while the others wait, then they open it."""
    from .data.images import ImageCache, dataset_cache_dir

    paths = _split_paths(splits)
    out = dataset_cache_dir(cfg.data, paths, size)
    return _built_on_rank0(lambda: _open_or_build_cache(paths, size, out), lambda: ImageCache.open(out))


def _split_paths(splits) -> list[str]:
    return sorted({r.image for sp in splits if sp is not None for r in (*sp.captions, *sp.questions)})


def _built_on_rank0(build: Callable, open_built: Callable):
    """``build()`` on rank 0 while the other ranks wait, then ``open_built()`` on them (a cache in a
    shared folder); a UserError on rank 0 is raised on every rank."""
    cache, error = None, None
    if is_main():
        try:
            cache = build()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)  # (a barrier too: the other ranks open the cache once it is there)
    if error is not None:
        raise UserError(error)
    return cache if cache is not None else open_built()


def _feature_source(cfg: TrainConfig, splits, model, images, dtype):
    """``feature_cache``: the frozen backbone's tokens of every image of the splits (eval transform),
    computed once into a FeatureCache under $MMCLI_CACHE and reused by every epoch and every run with
    the same backbone weights, preprocessing and precision; a FeatureSource over it."""
    from .data.features import FeatureCache, FeatureSource, backbone_fingerprint, feature_cache_dir

    tower = model.vision
    if not tower.frozen:
        raise UserError("--feature-cache needs a frozen backbone (its features must not change while training): "
                        "add --freeze-backbone")
    paths = _split_paths(splits)
    extra = {"data_config": tower.data_config, "dtype": str(dtype), "tower": [tower.name, tower.image_size]}
    fingerprint = backbone_fingerprint(tower.backbone, extra)
    out = feature_cache_dir(cfg.data, paths, fingerprint)

    build = partial(_open_or_build_features, tower, paths, images, out, (fingerprint, dtype))
    return FeatureSource(_built_on_rank0(build, lambda: FeatureCache.open(out)))


def _open_or_build_features(tower, paths: list[str], images, out: Path, key: tuple):
    """The FeatureCache in ``out`` when it matches ``paths`` and the fingerprint, else a new one: ``tower``'s
    backbone over every image from ``images`` (an ImageSource), in ``dtype``."""
    from .data.features import FeatureCache
    from .data.images import ImageSkipper

    fingerprint, dtype = key
    device = next(tower.parameters()).device

    def encode(x):
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            return tower.features(x.to(device))

    def reuse():
        cache = FeatureCache.open(out)
        return cache if cache.is_valid_for(paths, fingerprint) else None

    # (the build warns about a bad image when it meets one: none here)
    build = partial(FeatureCache.build, paths, encode, images, out, fingerprint, skipper=ImageSkipper(quiet=True))
    return _reuse_or_build("feature cache", out, reuse, build)


def _open_or_build_cache(paths: list[str], size: int, out: Path):
    """:meth:`ImageCache.open_or_build`, saying on stderr which of the two it did."""
    from .data.images import ImageCache, ImageSkipper

    def reuse():
        cache = ImageCache.open(out)
        return cache if cache.is_valid_for(paths, size) else None

    build = partial(ImageCache.build, paths, size, out, skipper=ImageSkipper(quiet=True))
    return _reuse_or_build("image cache", out, reuse, build, f" of {size} px")


def _reuse_or_build(what: str, out: Path, reuse: Callable, build: Callable, detail: str = ""):
    """The cache ``reuse()`` opens in ``out`` (None, or a UserError, when there is none yet, a half-built
    or a stale one), else the one ``build()`` makes; one stderr line says which, with its size and time."""
    from .data.cachedir import touch

    try:
        cache = reuse()
        if cache is not None:
            print(f"mmcli: {what} {out}: reusing it ({len(cache)} images)", file=sys.stderr)
            touch(out)  # last used now: `mmcli data cache --unused-days` keeps it
            return cache
    except UserError:
        pass
    t0 = time.perf_counter()
    try:
        cache = build()
    except OSError as e:
        raise UserError(f"{out}: cannot write the {what} ({e.strerror or e}); "
                        "set $MMCLI_CACHE to a writable folder") from None
    bad = f", {len(cache.bad)} unreadable" if cache.bad else ""
    print(f"mmcli: {what} {out}: built ({len(cache)} images{detail}{bad}) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return cache


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices only; never on norms, biases, embeddings,
    position tables, the pooling query, modality vectors or the logit scale."""
    no_decay_names = ("tok_emb", "_pos", "pool_query", "modality", "logit_scale")
    decay, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.dim() < 2 or any(k in name for k in no_decay_names)
        (other if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _compile(model) -> None:
    """``compile``: the model's layers compiled for training (validation runs them eagerly: see
    :func:`validate`); needs torch.compiler.set_stance (torch 2.6)."""
    if not hasattr(torch.compiler, "set_stance"):
        raise UserError(f"--compile needs torch 2.6 or newer (this is {torch.__version__})")
    model.compile_layers()


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, betas (0.9, 0.98); torch's fused kernel (one pass over all the
    parameters instead of a loop of small ops) on a CPU or a CUDA device, where torch has one."""
    groups = param_groups(model, weight_decay)
    if device.type in FUSED_ADAMW:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), fused=True)
        except (RuntimeError, TypeError):  # an older torch without it for this device
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


class WarmupCosine:
    """LR factor: linear warmup from ~0 to 1 over ``warmup`` steps, then cosine down to ``floor``.

    A class, not a lambda: LambdaLR then saves it in its state dict as plain values.
    """

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


# ============================================================================ data order


def _n_batches(n: int, batch_size: int) -> int:
    """Full batches only (in-batch contrastive negatives want a constant batch size),
    except a dataset smaller than one batch, which makes one batch."""
    return max(1, n // batch_size) if n else 0


def _epoch_batches(n: int, cfg: TrainConfig, epoch: int, steps_per_epoch: int) -> list[list[int]]:
    """The batches of ``epoch``: a permutation seeded by ``seed + epoch``, cut to whole steps."""
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    order = torch.randperm(n, generator=g).tolist()
    size = min(cfg.batch_size, n)
    return [order[i * size : (i + 1) * size] for i in range(steps_per_epoch * cfg.grad_accum)]


def _loader(s: Session, batches: list[list[int]], cfg: TrainConfig, epoch: int):
    """A DataLoader over fixed batches (the order comes from :func:`_epoch_batches`)."""
    from torch.utils.data import DataLoader

    from .data.loaders import _Collate

    # under torchrun rank r loads the r-th of `world` equal slices of each batch: the ranks' rows,
    # gathered in rank order (gather), are one process's batch in its order
    r, n = rank(), world()
    batches = [b[r * len(b) // n : (r + 1) * len(b) // n] for b in batches] if n > 1 else batches
    workers = 0 if cfg.deterministic else cfg.workers
    # an own generator: without one, creating the iterator draws its worker base seed from the
    # global torch RNG, and a resumed run (which creates one more iterator) would drift from it
    seeds = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(s.train_set, batch_sampler=batches, num_workers=workers, generator=seeds,
                      collate_fn=_Collate(s.tokenizer.pad_id), pin_memory=s.device.type == "cuda")


# ============================================================================ losses


def caption_loss(model, batch, s: Session, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy of the caption given the image; a grouped batch (``text_image`` set,
    ``group_captions``) encodes each image once and gives its tokens to each of its captions."""
    with s.autocast():
        img = model.encode_image(batch.images)  # (B_img, N, D)
    # grouped: caption row i shows image row text_image[i] (its keys and values are projected once)
    return _lm_part(model, img, batch, s, label_smoothing, img_index=batch.text_image)


def _lm_part(model, img: torch.Tensor, batch, s: Session, label_smoothing: float = 0.0,
             img_index: torch.Tensor | None = None) -> torch.Tensor:
    """The LM loss of the batch's captions given image tokens already encoded: (B, N, D), or one
    row per image with ``img_index`` mapping caption rows to image rows.

    On a CPU with cross-attention fusion the whole batch goes through the layers at once on its real
    tokens alone (:meth:`VLM.lm_real_logits`, where :meth:`VLM.packs_lm`). Elsewhere the captions are
    cut into length buckets (:data:`LM_BUCKET_ROWS` rows or more each), each trimmed to its longest
    caption, and the LM head sees real predictions only; the buckets share each cross-attention
    layer's keys and values of the images (:meth:`VLM.image_kv`). Causal,
    right-padded text never lets a real token see a pad, so this is the padded batch's loss
    (tests/test_train.py) at about half the decoder's compute on Flickr8k (captions of 16
    tokens on average in batches padded to 32)."""
    from .losses import length_buckets, next_token_targets, token_cross_entropy

    if model.packs_lm(batch.text_len, img_index is not None):
        # (a CPU: the whole batch in one call, on its real tokens alone, each image's keys and values once)
        ids = batch.text[:, : int(batch.text_len.max())]
        real, targets = next_token_targets(ids, batch.text_len)
        with s.autocast():
            logits = model.lm_real_logits(ids[:, :-1], real[:, :-1], img, img_index)  # (n, V)
        n_real = len(targets)
        return token_cross_entropy(logits, targets, label_smoothing, scale=share(n_real) / max(n_real, 1))
    n_rows = batch.text.shape[0]
    buckets = length_buckets(batch.text_len, max(1, n_rows // LM_BUCKET_ROWS))
    if img_index is None and len(buckets) == 1:  # pairs in one bucket: every row in its order, no gather
        buckets = [torch.arange(n_rows, device=batch.text.device)]
        same_order = True
    else:
        same_order = False
        if img_index is None:  # one image row per caption
            img_index = torch.arange(n_rows, device=batch.text.device)
    # each token's loss scaled by 1 / the batch's count of predictions (times this rank's share under torchrun)
    # as it is summed, so that the backward pass scales no gradient again; a tensor, not a count read back to
    # the host (a GPU's wait)
    n_real = (batch.text_len - 1).clamp(min=0).sum()
    scale = share(n_real) / n_real.clamp(min=1)
    img_kv = None
    if len(buckets) > 1:  # each layer's keys and values of the images projected once for every bucket
        with s.autocast():
            img_kv = model.image_kv(img, n_rows, int(batch.text_len.max()))
    total = 0.0
    for rows in buckets:
        lens = batch.text_len[rows]
        ids = batch.text[rows, : int(lens.max())]  # (b, T_bucket): this bucket's pads are cut off
        real, targets = next_token_targets(ids, lens)
        # the last position never predicts (its token is the longest caption's eos): it is not fed at all;
        # causal attention makes the other positions' outputs the same without it
        ids, real = ids[:, :-1], real[:, :-1]
        if not len(targets):  # (captions of one token: nothing to predict)
            continue
        if len(targets) == real.numel():  # every position predicts: all of them, in order, no gather
            real = None
        with s.autocast():
            logits = model.lm_logits(None, ids, img=img, img_index=None if same_order else img_index[rows],
                                     positions=real, img_kv=img_kv)  # (n, V), or (b, T, V) for every position
        logits = logits.reshape(-1, logits.shape[-1])  # (n, V): x[real]'s row order is row-major too
        total = total + token_cross_entropy(logits, targets, label_smoothing, scale)
    # a mean over this rank's predicted tokens (grouped or not: every caption's tokens count alike);
    # under torchrun, times its share of the global batch's
    return total


def vqa_train_loss(model, batch, s: Session) -> torch.Tensor:
    """Binary cross-entropy against the soft answer scores."""
    from .losses import vqa_loss

    with s.autocast():
        logits = vqa_batch_logits(model, batch)
    # a mean over this rank's questions; under torchrun, times its share of the global batch's
    return vqa_loss(logits.float(), batch.targets) * share(batch.targets.shape[0])


def vqa_batch_logits(model, batch) -> torch.Tensor:
    """(B_q, n_answers) answer logits of a VQA batch; a grouped batch (``text_image`` set)
    encodes each image once and gives its tokens to each of its questions."""
    if batch.text_image is None:
        return model.vqa_logits(batch.images, batch.text, batch.text_len)
    if model.vqa_head is None:
        raise ValueError("this model has no VQA head (n_answers = 0)")
    img = model.encode_image(batch.images)  # (B_img, N, D): question row i asks about row text_image[i]
    return model.vqa_head(model.understand(img, batch.text, batch.text_len, img_index=batch.text_image))


def retrieval_loss(model, batch, s: Session) -> torch.Tensor:
    """ITC (in-batch contrastive) + ITM on hard negatives drawn from the ITC similarities."""
    with s.autocast():
        img = model.encode_image(batch.images)  # (B, N, D)
    return sum(_contrastive_parts(model, img, batch, s, ("itc", "itm")).values())


def pretrain_loss(model, batch, s: Session, weights: dict[str, float] | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """The weighted sum of the chosen objectives (``weights``: objective -> weight, see
    :data:`OBJECTIVES`) on a batch of image-caption pairs; the image is encoded once for all.
    ``label_smoothing``: of the lm objective."""
    weights = weights or parse_objectives(DEFAULT_OBJECTIVES)
    with s.autocast():
        img = model.encode_image(batch.images)  # (B, N, D)
    parts = _contrastive_parts(model, img, batch, s, tuple(k for k in ("itc", "itm") if k in weights))
    if "lm" in weights:
        parts["lm"] = _lm_part(model, img, batch, s, label_smoothing, img_index=batch.text_image)
    if not parts:  # itm alone on a batch of one image: no negative, nothing to learn from it
        return img.sum() * 0.0
    return sum(weights[k] * loss for k, loss in parts.items())


def _contrastive_parts(model, img: torch.Tensor, batch, s: Session, which: tuple[str, ...]) -> dict:
    """The ``which`` of {"itc": loss, "itm": loss} from image tokens (B, N, D) and the batch's texts.

    As ALBEF: for ITM each image gets one negative caption and each caption one
    negative image, sampled with probability softmax(ITC similarity) among the
    batch items of other images (captions of the same image are never
    negatives). No ITM loss when every item shows the same image.

    A grouped batch (``batch.text_image``: each image once with all its captions) has ITC
    score every caption (each image's own captions are its positives, :func:`itc_loss`) and
    ITM take one caption per image, caption ``step % n`` of an image with n captions (the
    images' batch positions change every epoch, so each caption takes its turn; the choice
    depends on nothing a rank owns alone, so torchrun makes the same one).
    """
    from .losses import itc_loss

    if not which:
        return {}
    # (itm alone: the similarities only pick the negatives, so no graph is kept for them)
    with s.autocast(), torch.set_grad_enabled(torch.is_grad_enabled() and "itc" in which):
        ie, te = model.embed(img, batch.text, batch.text_len)  # (B, E) images, (B_t, E) texts, normalised
    pairs = _itm_pairs(batch, s.state.step)  # (B,) the text row of each image's ITM pair
    # under torchrun the global batch (every rank's pairs are negatives), gradients flowing back to
    # each rank's own rows; every rank computes the same ITC loss and the same negatives
    ie_all, rows = gather(ie.float())  # (B_all, E); this rank's images are ie_all[rows]
    parts = {}
    if "itc" in which:
        te_all, _ = gather(te.float())  # (B_t_all, E)
        # text row -> its image's row in the global batch (this rank's images start at rows.start)
        owner = None if batch.text_image is None else gather(batch.text_image + rows.start)[0]
        parts["itc"] = itc_loss(ie_all, te_all, model.logit_scale, owner)
    if "itm" in which:
        te_pairs, _ = gather(te[pairs].detach().float())  # (B_all, E): the caption of each image's pair
        itm = _itm_part(model, img, batch, s, (ie_all, te_pairs, rows, pairs))
        if itm is not None:
            parts["itm"] = itm
    return parts


def _itm_pairs(batch, step: int) -> torch.Tensor:
    """The text row paired with each image row for ITM: the row itself for a batch of pairs; in a
    grouped batch caption ``step % n`` of an image with n captions (rows are grouped by image)."""
    if batch.text_image is None:
        return torch.arange(len(batch), device=batch.text.device)
    counts = torch.bincount(batch.text_image, minlength=len(batch))  # (B,) captions per image, >= 1
    first = torch.cumsum(counts, 0) - counts  # (B,) each image's first text row
    return first + step % counts.clamp(min=1)


def _itm_part(model, img: torch.Tensor, batch, s: Session, embedded) -> torch.Tensor | None:
    """ITM on this rank's pairs (image row i with text row ``pairs[i]``), each with a wrong caption and
    a wrong image drawn from the global batch by ITC similarity; None when no negative exists."""
    from .losses import itm_loss

    ie_all, te_all, rows, pairs = embedded
    neg = _hard_negatives(ie_all.detach() @ te_all.t(), gather_objects(batch.image_ids))
    if neg is None:  # every item shows the same image: no negative exists
        return None
    neg_text, neg_image = neg[0][rows], neg[1][rows]  # for this rank's pairs; indices into the global batch
    text, _ = gather(batch.text[pairs], pad_value=s.tokenizer.pad_id)  # (B_all, T_all)
    text_len, _ = gather(batch.text_len[pairs])
    img_all, _ = gather(img)  # (B_all, N, D)
    B = len(batch)
    with s.autocast():
        imgs = torch.cat([img, img, img_all[neg_image]])  # (3B, N, D): pos, image + wrong text, wrong image + text
        ids = torch.cat([text[rows], text[neg_text], text[rows]])
        lens = torch.cat([text_len[rows], text_len[neg_text], text_len[rows]])
        logits = model.itm_logits(imgs, ids, lens)
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return itm_loss(logits.float(), labels) * share(B)  # (torchrun: this rank's share of the pairs)


def _hard_negatives(sim: torch.Tensor, image_ids: list[str]):
    """(text index per image, image index per text) sampled from softmax(sim); None if impossible."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(image_ids))}
    code = torch.tensor([ids[k] for k in image_ids], device=sim.device)
    allowed = code[:, None] != code[None, :]  # (B, B) True where image i and text j differ
    if not allowed.any(dim=1).all():
        return None
    weights = torch.softmax(sim.masked_fill(~allowed, float("-inf")), dim=1)  # row i: texts for image i
    neg_text = torch.multinomial(weights, 1).squeeze(1)
    weights = torch.softmax(sim.t().masked_fill(~allowed, float("-inf")), dim=1)  # row j: images for text j
    neg_image = torch.multinomial(weights, 1).squeeze(1)
    return neg_text, neg_image


LOSSES = {"caption": caption_loss, "vqa": vqa_train_loss, "retrieval": retrieval_loss, "pretrain": pretrain_loss}


def _loss_fn(cfg: TrainConfig) -> Callable:
    """The training loss of ``cfg.task``: ``fn(model, batch, session)``; pretrain's with its weights,
    and the LM losses (caption, pretrain) with the label smoothing when there is one (so a loss put
    in :data:`LOSSES` need not take it)."""
    fn = LOSSES[cfg.task]
    smoothing = {"label_smoothing": cfg.label_smoothing} if cfg.label_smoothing else {}
    if cfg.task == "pretrain":
        return partial(fn, weights=cfg.objective_weights(), **smoothing)
    return partial(fn, **smoothing) if smoothing else fn


# ============================================================================ validation


@torch.no_grad()
def validate(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """The task's validation metrics (streamed: one batch of images in memory at a time)."""
    s.model.eval()
    # compiled layers (--compile) run eagerly here: generation's one-token steps and KV caches would each
    # compile anew, for a few passes over the val split
    eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
    try:
        with eager, s.autocast():
            return {"caption": _val_caption, "vqa": _val_vqa, "retrieval": _val_retrieval,
                    "pretrain": _val_pretrain}[cfg.task](cfg, s)
    finally:
        s.model.train()


def selection_metric(cfg: TrainConfig) -> str:
    """The validation metric that selects ``best/``: the task's (:data:`TASK_METRIC`). Pretraining
    selects on its first objective in the order itc, lm, itm: mean_recall (text-image retrieval
    by the ITC embeddings), else cider_d (greedy captions), else itm_accuracy."""
    if cfg.task != "pretrain":
        return TASK_METRIC[cfg.task]
    weights = cfg.objective_weights()
    return "mean_recall" if "itc" in weights else "cider_d" if "lm" in weights else "itm_accuracy"


def _val_pretrain(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """Each chosen objective's own check on the val split: retrieval recall (itc), ITM accuracy
    (itm), caption BLEU and CIDEr-D (lm); :func:`selection_metric` picks one of them."""
    weights, scores = cfg.objective_weights(), {}
    if "itc" in weights:
        scores.update(_val_retrieval(cfg, s))
    if "itm" in weights:
        scores.update(_val_itm(cfg, s))
    if "lm" in weights:
        scores.update(_val_caption(cfg, s))
    return scores


def _val_itm(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """ITM accuracy (0-100) over the val pairs: each caption with its own image (a match) and with
    the next image of the batch that is another one (no match), when the batch has one."""
    from .data.loaders import PairDataset

    ds = PairDataset(s.val.pairs(), s.image_source, s.tokenizer, max_len=cfg.max_text_len)
    right = total = 0
    for b in _eval_batches(cfg, s, ds):
        img = s.model.encode_image(b.images)  # (B, N, D)
        B = len(b)
        # for row i the first row after it (cyclically) showing another image, or i itself if none
        other = [next((j % B for j in range(i + 1, i + B) if b.image_ids[j % B] != b.image_ids[i]), i)
                 for i in range(B)]
        has = torch.tensor([o != i for i, o in enumerate(other)], device=img.device)
        pos = s.model.itm_logits(img, b.text, b.text_len).argmax(-1) == 1
        neg = s.model.itm_logits(img[torch.tensor(other, device=img.device)], b.text, b.text_len).argmax(-1) == 0
        right += int(pos.sum()) + int((neg & has).sum())
        total += B + int(has.sum())
    return {"itm_accuracy": 100 * right / max(total, 1), "n_pairs": len(ds)}


def _eval_batches(cfg: TrainConfig, s: Session, dataset):
    """Batches of an evaluation dataset in order; unreadable images are left out."""
    from .data.loaders import LoaderConfig, make_loader

    # shard=False: under torchrun rank 0 validates on the whole split alone
    config = LoaderConfig(batch_size=cfg.batch_size, workers=0, shard=False)
    for batch in make_loader(dataset, config, pad_id=s.tokenizer.pad_id):
        if len(batch):
            yield batch.to(s.device)


def _val_vqa(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """VQA accuracy (0-100) of the argmax answer against each question's reference answers."""
    return vqa_accuracy(cfg, s, s.val.questions)


def vqa_accuracy(cfg: TrainConfig, s: Session, questions) -> dict[str, float]:
    """VQA accuracy (0-100) of the model on ``questions`` (grouped by image: one encoding each)."""
    from .data.loaders import VQAImageDataset
    from .metrics.vqa import question_accuracy

    ds = VQAImageDataset(questions, s.image_source, s.tokenizer, s.answers, max_len=cfg.max_text_len)
    total, n = 0.0, 0
    for b in _eval_batches(cfg, s, ds):
        best = vqa_batch_logits(s.model, b).argmax(-1).tolist()
        for refs, k in zip(b.answers, best):
            total += question_accuracy(list(refs), s.answers.answers[k])
            n += 1
    return {"vqa_accuracy": 100 * total / max(n, 1), "n": n}


def _val_caption(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """Greedy (or beam) captions of the val images: BLEU-1..4 and CIDEr-D (the selection metric)."""
    from .data.loaders import ImageDataset
    from .metrics.captions import score_captions
    from .model.generate import beam_search, greedy

    tok, max_len = s.tokenizer, cfg.max_text_len - 1  # generated tokens after <s>
    preds, refs = {}, {}
    for b in _eval_batches(cfg, s, ImageDataset(s.val.captions, s.image_source)):
        if cfg.beam > 1:
            out = beam_search(s.model, b.images, tok.bos_id, tok.eos_id, max_len, beam=cfg.beam)
        else:
            out = greedy(s.model, b.images, tok.bos_id, tok.eos_id, max_len)
        for image_id, ids, r in zip(b.image_ids, out, b.references):
            preds[image_id], refs[image_id] = tok.decode(ids), list(r)
    scores = score_captions(preds, refs, metrics=("bleu", "cider_d")).scores
    return {**scores, "n": len(preds)}


def _val_retrieval(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """R@1/5/10 both ways over the val images and all their captions; mean_recall selects."""
    from .data.loaders import ImageDataset

    image_emb, image_ids = [], []
    for b in _eval_batches(cfg, s, ImageDataset(s.val.captions, s.image_source)):
        image_emb.append(s.model.embed(s.model.encode_image(b.images))[0].float())
        image_ids += b.image_ids
    index = {k: i for i, k in enumerate(image_ids)}
    pairs = [p for p in s.val.pairs() if p.image_id in index]  # captions of readable images
    text_emb = []
    for i in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[i : i + cfg.batch_size]
        ids, lens = s.tokenizer.encode_batch([p.text for p in chunk], cfg.max_text_len, bos=True, eos=True)
        ids, lens = torch.from_numpy(ids).to(s.device), torch.from_numpy(lens).to(s.device)
        text_emb.append(s.model.embed(None, ids, lens)[1].float())
    owner = torch.tensor([index[p.image_id] for p in pairs])
    scores = recall_at_k(torch.cat(text_emb).cpu() @ torch.cat(image_emb).cpu().t(), owner)
    return {**scores, "n": len(image_ids), "n_texts": len(pairs)}


def recall_at_k(sim: torch.Tensor, owner: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K (0-100) from text-by-image similarities (T, I) and each text's image index.

    Text to image: the rank of the text's image. Image to text: the best rank of
    any of the image's captions. ``mean_recall`` averages the six numbers.
    """
    T, I = sim.shape
    t2i_rank = (sim > sim[torch.arange(T), owner][:, None]).sum(1)  # images scored above the right one
    order = sim.t().argsort(dim=1, descending=True)  # (I, T) texts by score for each image
    hit = owner[order] == torch.arange(I)[:, None]  # (I, T) True where the text belongs to the image
    i2t_rank = hit.float().argmax(dim=1)  # the first correct text's position
    out = {}
    for k in ks:
        out[f"t2i_r{k}"] = 100 * (t2i_rank < k).float().mean().item()
        out[f"i2t_r{k}"] = 100 * (i2t_rank < k).float().mean().item()
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def _validate_and_save(cfg: TrainConfig, s: Session, run_dir: Path) -> dict:
    """Validate; save ``best/`` on improvement and ``last/`` always; track patience."""
    st, name = s.state, selection_metric(cfg)
    scores = validate(cfg, s)
    value = scores[name]
    improved = st.best is None or value > st.best
    if improved:
        st.best, st.best_step, st.bad_evals = value, st.step, 0
        _save(s, run_dir / "best", cfg, train_state=None)
    else:
        st.bad_evals += 1
        st.early_stopped = bool(cfg.patience) and st.bad_evals >= cfg.patience
    row = {"step": st.step, "epoch": st.epoch, "val": scores, "best": st.best}
    s.log.write(row)
    print(f"mmcli: validation at step {st.step}: {name} {value:.4f}"
          f"{' (best)' if improved else ''}{'; stopping early' if st.early_stopped else ''}", flush=True)
    save_last(s, run_dir, cfg)
    return row


def _validate_on_rank0(cfg: TrainConfig, s: Session, run_dir: Path) -> dict:
    """:func:`_validate_and_save`; under torchrun rank 0 does it on the whole val split while the
    others wait, then every rank takes its result and selection state (best, patience, early stop)."""
    row = _validate_and_save(cfg, s, run_dir) if is_main() else None
    row, state = broadcast_object((row, asdict(s.state)))
    for k, v in state.items():  # (in place: the loop holds s.state)
        setattr(s.state, k, v)
    return row


# ============================================================================ checkpoints and the run directory


def _checkpoint_config(cfg: TrainConfig, s: Session) -> dict:
    return {"model": s.model.cfg.to_dict(), "task": cfg.task, "train": cfg.to_dict()}


def _save(s: Session, where: Path, cfg: TrainConfig, train_state: dict | None) -> None:
    from .checkpoint import save_checkpoint

    if not is_main():  # under torchrun rank 0 alone writes (s.model is never the DDP wrapper)
        return
    save_checkpoint(where, config=_checkpoint_config(cfg, s), model=s.model, tokenizer=s.tokenizer,
                    answer_vocab=s.answers, train_state=train_state)


def save_last(s: Session, run_dir: Path, cfg: TrainConfig) -> None:
    """``last/`` with everything a resume needs (rank 0's: the ranks' states are the same)."""
    from .checkpoint import rng_state

    if not is_main():
        return
    state = {"optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
             "scaler": s.scaler.state_dict(), "rng": rng_state(), "loop": asdict(s.state)}
    _save(s, run_dir / "last", cfg, train_state=state)


def _restore(s: Session, ckpt) -> None:
    """Model, optimizer, scheduler, scaler, RNG and loop position from ``last/``."""
    from .checkpoint import set_rng_state

    ts = ckpt.train_state
    if ts is None:
        raise UserError(f"{ckpt.path}: has no training state; cannot resume from it")
    ckpt.load_into(s.model)
    s.optimizer.load_state_dict(ts["optimizer"])
    sched = dict(ts["scheduler"])
    # keep this invocation's schedule (a resume may give more --max-steps): None = do not overwrite
    sched["lr_lambdas"] = [None] * len(s.scheduler.lr_lambdas)
    s.scheduler.load_state_dict(sched)
    if ts.get("scaler"):
        s.scaler.load_state_dict(ts["scaler"])
    s.state = TrainState(**ts["loop"])
    s.state.early_stopped = False  # a resumed run with more steps goes on
    set_rng_state(ts["rng"])
    print(f"mmcli: resuming {ckpt.path.parent} at step {s.state.step} (epoch {s.state.epoch + 1}, "
          f"batch {s.state.pos})", file=sys.stderr)


def _open_run(cfg: TrainConfig, run_dir: Path) -> _Opened:
    """Check the run directory: a new run needs a fresh one, a resume a matching one."""
    from .checkpoint import load_checkpoint

    top = run_dir / "config.json"
    saved = _read_json(top) if top.is_file() else None
    if cfg.resume is None:
        if saved is not None or (run_dir / "last").exists():
            what = f"a {saved.get('status', 'earlier')} run" if saved else "a run"
            raise UserError(f"{run_dir} already holds {what}; continue it with --resume {run_dir} "
                            f"or choose another --out")
        return _Opened(init=load_checkpoint(init_checkpoint(cfg.init)) if cfg.init else None)
    if saved is None:
        raise UserError(f"{run_dir}: not a training run directory (no config.json); nothing to resume")
    old = saved.get("train", {})
    diff = [k for k in _IDENTITY if k in old and old[k] != cfg.to_dict()[k]]
    if diff:
        shown = ", ".join(f"{k} {old[k]!r} -> {cfg.to_dict()[k]!r}" for k in diff)
        raise UserError(f"--resume {run_dir}: the run was started with other settings ({shown}); "
                        "resume with the same settings or start a new run with another --out")
    if not (run_dir / "last").exists() and not (run_dir / ".last.old").exists():
        raise UserError(f"--resume {run_dir}: the run stopped before its first checkpoint (no last/); "
                        "start it again with another --out")
    return _Opened(load_checkpoint(run_dir / "last"))


def resume_config(run_dir: str | os.PathLike, **changes) -> TrainConfig:
    """The TrainConfig saved in ``run_dir``, to continue it; ``changes`` may extend it (max_steps...)."""
    top = Path(run_dir) / "config.json"
    if not top.is_file():
        raise UserError(f"{run_dir}: not a training run directory (no config.json); nothing to resume")
    saved = TrainConfig.from_dict(_read_json(top).get("train", {}))
    return replace(saved, **changes, resume=str(run_dir), out=str(run_dir))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _write_status(run_dir: Path, cfg: TrainConfig, model_cfg, status: str, steps: int | None = None) -> None:
    from .fileio import atomic_write_text

    if not is_main():  # (torchrun: rank 0 alone writes the run directory)
        return
    data = {"status": status, "task": cfg.task, "train": cfg.to_dict(), "model": model_cfg.to_dict()}
    if steps is not None:
        data["steps"] = steps
    atomic_write_text(run_dir / "config.json", json.dumps(data, indent=2) + "\n")


class RunLock:
    """``RUN/lock`` holding our pid, created with O_EXCL; a dead pid's lock is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"
        self.created = not Path(run_dir).exists()  # made here: removed again if the run leaves it empty

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.path.parent}: cannot create the run directory ({e.strerror or e})") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise UserError(f"{self.path.parent} is in use by a running training (pid {pid}); "
                                    "wait for it or choose another --out") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise UserError(f"{self.path}: could not take the lock")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
        if self.created:  # a run that failed before writing anything leaves no empty directory behind
            try:
                self.path.parent.rmdir()
            except OSError:
                pass  # not empty: the run wrote into it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class MetricsLog:
    """``metrics.jsonl``: one JSON object a line, appended and flushed as it happens."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, row: dict) -> None:
        if not is_main():  # (torchrun: rank 0 alone writes)
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def rewind(self, step: int) -> None:
        """Keep the rows of steps up to ``step`` (a resume continues from there); drop the later ones
        and a line torn by a kill. A run killed after its checkpoint logged steps that the resume
        trains again: without this they would appear twice."""
        from .fileio import atomic_write_text

        if not is_main() or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short when the process was killed
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))


class _Window:
    """Running loss and throughput between two log lines."""

    def __init__(self):
        self.loss, self.micro, self.samples, self.last = 0.0, 0, 0, float("nan")
        self.t0 = time.perf_counter()
        self.seen = 0  # samples over the whole invocation

    def add(self, loss: float, n: int) -> None:
        self.loss, self.micro, self.samples = self.loss + loss, self.micro + 1, self.samples + n
        self.last, self.seen = loss, self.seen + n

    def flush(self, step: int, lr: float) -> dict:
        now = time.perf_counter()
        loss, micro, samples = sum_over_ranks([self.loss, self.micro, self.samples])  # (torchrun: every rank's)
        row = {"step": step, "loss": loss / max(1, micro), "lr": lr,
               "samples_per_s": samples / max(now - self.t0, 1e-9), **memory_mb()}
        self.loss, self.micro, self.samples, self.t0 = 0.0, 0, 0, now
        return row


def _libc_trim():
    """glibc's ``malloc_trim`` (None elsewhere): it hands the heap's free pages back to the system."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _libc_trim() if sys.platform.startswith("linux") else None


def release_free_memory() -> None:
    """Return the allocator's free heap memory to the system (glibc; a no-op elsewhere). Training
    allocates tensors of changing sizes (length buckets): glibc keeps the freed blocks, and a run's
    resident memory creeps up over thousands of steps though nothing leaks (benchmarks/rss_curve.py).
    Called at every log step; it takes well under a millisecond (0.03-0.4 ms measured)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def memory_mb() -> dict[str, float]:
    """This process's resident memory now, in MiB: ``rss_mb`` in all and ``rss_anon_mb`` not backed by
    files (the heap: what a leak grows; the rest is mapped code and memory-mapped caches). Linux reads
    /proc/self/status; elsewhere the peak so far stands in for ``rss_mb``. Logged with every metrics row,
    so a long run shows whether memory grows."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
                "rss_anon_mb": round(int(fields["RssAnon"].split()[0]) / 1024, 1)}
    except (OSError, KeyError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


class _Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, done: int):
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=done, info="")
            self.bar.start()

    def update(self, step: int, row: dict | None) -> None:
        """Every step moves the bar; a log ``row`` (every log_every steps) also updates the text."""
        info = row and f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['samples_per_s']:.1f} samples/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"info": info} if info else {}))
        elif info:
            print(f"step {step} | {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _result(cfg: TrainConfig, s: Session, run_dir: Path, history: list, code: int, work) -> FitResult:
    seconds, seen = work
    st = s.state
    return FitResult(run_dir=run_dir, metric=selection_metric(cfg), best=st.best, best_step=st.best_step,
                     steps=st.step, epochs=st.step / s.steps_per_epoch, seconds=seconds,
                     samples_per_s=seen / max(seconds, 1e-9),
                     skipped_images=len(set(gather_objects([p for p, _ in s.skipper.skipped]))),  # every rank's
                     stopped_early=st.early_stopped, exit_code=code, history=history)


def summary_table(result: FitResult, command: str = "finetune"):
    """The closing rich table of a run (``command``: the one that ran it, for the title)."""
    from rich.table import Table

    table = Table(title=f"mmcli {command}: {result.run_dir}")
    table.add_column("")
    table.add_column("value", justify="right")
    best = "-" if result.best is None else f"{result.best:.4f} (step {result.best_step})"
    table.add_row(f"best {result.metric}", best)
    table.add_row("steps", f"{result.steps} ({result.epochs:.2f} epochs)")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    table.add_row("samples/s", f"{result.samples_per_s:.1f}")
    if result.test is not None:
        table.add_row(f"test {result.metric} (best/)", f"{result.test[result.metric]:.4f}")
    if result.skipped_images:
        table.add_row("skipped images", str(result.skipped_images))
    if result.stopped_early:
        table.add_row("stopped", "early (patience)")
    if result.exit_code:
        table.add_row("stopped", f"interrupted; resume with --resume {result.run_dir}")
    return table


# ============================================================================ seeding, determinism, signals


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class _Determinism:
    """``deterministic``: deterministic kernels for the run (and no worker processes, see
    :func:`_loader`), so a resumed run is bit-identical; the previous setting comes back after."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.before = torch.are_deterministic_algorithms_enabled()
        if self.on and not self.before:  # (the call imports torch._inductor: seconds, so only when needed)
            torch.use_deterministic_algorithms(True, warn_only=True)
            if torch.cuda.is_available():
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc) -> None:
        if self.on and not self.before:
            torch.use_deterministic_algorithms(False)


class _StopFlag:
    signum: int | None = None


_STOP = _StopFlag()


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running ``fit`` to stop after the current step (what SIGINT/SIGTERM do)."""
    _STOP.signum = signum


class _StopSignals:
    """SIGINT/SIGTERM set the stop flag; a second SIGINT interrupts at once."""

    def __enter__(self):
        _STOP.signum = None
        self.saved = {}
        if threading_main():
            for sig in EXIT_CODES:
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        _STOP.signum = signum
        signal.signal(signum, self.saved.get(signum, signal.SIG_DFL))  # a second one is not polite
        print(f"mmcli: {signal.Signals(signum).name}: stopping after this step and saving last/",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        _STOP.signum = None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
