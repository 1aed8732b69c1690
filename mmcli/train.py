"""Task training: ``fit(TrainConfig) -> FitResult``, one loop shared by caption, VQA and retrieval.

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

Distributed training is not implemented yet; the places that must change for
it are marked ``TODO(ddp)``.
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
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import preset
from .errors import UserError

TASK_METRIC = {"caption": "cider_d", "vqa": "vqa_accuracy", "retrieval": "mean_recall"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report
# fields that define a run: resuming with other values would silently train something else
_IDENTITY = ("task", "data", "preset", "fusion", "model", "seed", "batch_size", "grad_accum",
             "vocab_size", "answer_top_k", "max_text_len")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fit`` needs; saved as ``train`` in every checkpoint's config."""

    task: str = "caption"  # caption | vqa | retrieval
    data: str = "shapes"  # a dataset spec (mmcli.data.spec)
    out: str = "runs/run"  # the run directory
    preset: str = "small"  # tiny | small | base
    fusion: str | None = None  # None: the preset's
    model: dict = field(default_factory=dict)  # other ModelConfig overrides, e.g. {"dim": 128}
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
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # a run directory to continue (then out is that directory)
    strict: bool = False  # a bad training image is an error instead of a warning
    beam: int = 1  # caption validation: 1 = greedy, else beam search with this width
    log_every: int = 10  # steps between log lines / metrics.jsonl entries
    test: bool = True  # after training, evaluate best/ once on the test split (if the dataset has one)

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

    def model_config(self, **sizes):
        """The ModelConfig of this run (``sizes``: vocab_size, n_answers known after the data)."""
        changes = dict(self.model, max_text_len=self.max_text_len, **sizes)
        if self.fusion is not None:
            changes["fusion"] = self.fusion
        try:
            return preset(self.preset, **changes)
        except TypeError as e:  # an unknown field name in `model`
            raise UserError(f"model overrides {sorted(self.model)}: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    # TODO(ddp): only rank 0 takes the lock and writes the run directory
    with RunLock(run_dir), _StopSignals(), _Determinism(cfg.deterministic):
        run = _open_run(cfg, run_dir)
        s = _build(cfg, run, device, dtype)
        _write_status(run_dir, cfg, s.model.cfg, "running")
        try:
            result = _train(cfg, s, run_dir, on_step)
        except BaseException as e:
            _write_status(run_dir, cfg, s.model.cfg, "failed" if isinstance(e, UserError) else "interrupted")
            raise
        if not result.exit_code and cfg.test:
            _final_test(cfg, s, run_dir, result)
        status = "interrupted" if result.exit_code else "finished"
        _write_status(run_dir, cfg, s.model.cfg, status, result.steps)
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
    return _result(cfg, s, run_dir, history, exit_code, (time.perf_counter() - start, window.seen))


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
            if len(batch):  # (empty when every image of the batch was unreadable)
                loss = s.loss_fn(model, batch.to(s.device), s)
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
                row = window.flush(st.step, s.scheduler.get_last_lr()[0])
                log.write(row)
            progress.update(st.step, row)
            if _eval_due(cfg, st.step, st.pos, len(batches)) or st.step == s.total_steps:
                history.append(_validate_and_save(cfg, s, run_dir))
            if _STOP.signum is not None:
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
    """A NaN/inf loss ends the run before its gradients touch the weights; nothing is saved."""
    if not torch.isfinite(loss):
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
          f"continue with: mmcli finetune --resume {run_dir}", file=sys.stderr, flush=True)
    return code


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
    image_source: object  # eval-transform ImageSource
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


@dataclass
class _Opened:
    """What :func:`_open_run` found: the checkpoint to resume from (or None)."""

    checkpoint: object = None


def _build(cfg: TrainConfig, run: _Opened, device: torch.device, dtype: torch.dtype | None) -> Session:
    """Data, tokenizer, model, optimizer and schedule; restored from ``last/`` when resuming."""
    from .data.images import ImageSkipper, make_transform
    from .data.loaders import ImageSource
    from .model.vlm import VLM

    _seed_everything(cfg.seed)
    train, val, test = _splits(cfg)
    if not (val.questions if cfg.task == "vqa" else val.captions):
        raise UserError(f"{cfg.data}: the validation split has no {'questions' if cfg.task == 'vqa' else 'captions'}")
    tokenizer, answers = _text_vocab(cfg, train, run.checkpoint)
    sizes = {"vocab_size": tokenizer.vocab_size, "n_answers": len(answers) if answers else 0}
    model = VLM(cfg.model_config(**sizes))
    source = ImageSource(make_transform(model.vision.data_config))
    train_set = _train_dataset(cfg, train, source, tokenizer, answers)
    steps_per_epoch = (_n_batches(len(train_set), cfg.batch_size)) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise UserError(f"{cfg.data}: {len(train_set)} training items make no full step of "
                        f"{cfg.batch_size} x {cfg.grad_accum}; lower --batch-size")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total, cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    s = Session(model, tokenizer, answers, train_set, val, source, LOSSES[cfg.task], params, optimizer,
                scheduler, scaler, device, autocast, TrainState(), steps_per_epoch, total,
                MetricsLog(Path(cfg.out) / "metrics.jsonl"), ImageSkipper(cfg.strict), test)
    if run.checkpoint is not None:
        _restore(s, run.checkpoint)
    return s


def _splits(cfg: TrainConfig):
    """(train, val, test) splits; val is carved from train when the dataset has none. test (None
    when the dataset has none) is only read by the final evaluation, never for selection."""
    from .data.spec import load_dataset

    ds = load_dataset(cfg.data)
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
    name = TASK_METRIC[cfg.task]
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


def _text_vocab(cfg: TrainConfig, train, checkpoint):
    """The tokenizer (trained on the train captions or questions) and, for VQA, the answers."""
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
    return Tokenizer.train(texts, vocab_size=cfg.vocab_size), answers


def _train_dataset(cfg: TrainConfig, train, source, tokenizer, answers):
    from .data.loaders import PairDataset, VQAImageDataset

    if cfg.task == "vqa":  # one item per image with all its questions: the image is encoded once
        return VQAImageDataset(train.questions, source, tokenizer, answers, max_len=cfg.max_text_len)
    return PairDataset(train.pairs(), source, tokenizer, max_len=cfg.max_text_len)


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

    # TODO(ddp): give each rank batches[rank::world] here
    workers = 0 if cfg.deterministic else cfg.workers
    # an own generator: without one, creating the iterator draws its worker base seed from the
    # global torch RNG, and a resumed run (which creates one more iterator) would drift from it
    seeds = torch.Generator().manual_seed(cfg.seed + epoch)
    return DataLoader(s.train_set, batch_sampler=batches, num_workers=workers, generator=seeds,
                      collate_fn=_Collate(s.tokenizer.pad_id), pin_memory=s.device.type == "cuda")


# ============================================================================ losses


def caption_loss(model, batch, s: Session) -> torch.Tensor:
    """Next-token cross-entropy of the caption given the image."""
    from .losses import lm_loss

    with s.autocast():
        logits = model.lm_logits(batch.images, batch.text)
    return lm_loss(logits.float(), batch.text, batch.text_len)


def vqa_train_loss(model, batch, s: Session) -> torch.Tensor:
    """Binary cross-entropy against the soft answer scores."""
    from .losses import vqa_loss

    with s.autocast():
        logits = vqa_batch_logits(model, batch)
    return vqa_loss(logits.float(), batch.targets)


def vqa_batch_logits(model, batch) -> torch.Tensor:
    """(B_q, n_answers) answer logits of a VQA batch; a grouped batch (``question_image`` set)
    encodes each image once and gives its tokens to each of its questions."""
    if batch.question_image is None:
        return model.vqa_logits(batch.images, batch.text, batch.text_len)
    if model.vqa_head is None:
        raise ValueError("this model has no VQA head (n_answers = 0)")
    img = model.encode_image(batch.images).index_select(0, batch.question_image)  # (B_q, N, D)
    return model.vqa_head(model.understand(img, batch.text, batch.text_len))


def retrieval_loss(model, batch, s: Session) -> torch.Tensor:
    """ITC (in-batch contrastive) + ITM on hard negatives drawn from the ITC similarities.

    As ALBEF: each image gets one negative caption and each caption one negative
    image, sampled with probability softmax(similarity) among the batch items of
    other images (captions of the same image are never negatives).
    """
    from .losses import itc_loss, itm_loss

    with s.autocast():
        img = model.encode_image(batch.images)  # (B, N, D)
        ie, te = model.embed(img, batch.text, batch.text_len)
        loss = itc_loss(ie.float(), te.float(), model.logit_scale)
        neg = _hard_negatives(ie.detach().float() @ te.detach().float().t(), batch.image_ids)
        if neg is None:  # every item shows the same image: no negative exists
            return loss
        neg_text, neg_image = neg
        B = len(batch)
        imgs = torch.cat([img, img, img[neg_image]])  # (3B, N, D): pos, image + wrong text, wrong image + text
        ids = torch.cat([batch.text, batch.text[neg_text], batch.text])
        lens = torch.cat([batch.text_len, batch.text_len[neg_text], batch.text_len])
        logits = model.itm_logits(imgs, ids, lens)
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
    return loss + itm_loss(logits.float(), labels)


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


LOSSES = {"caption": caption_loss, "vqa": vqa_train_loss, "retrieval": retrieval_loss}


# ============================================================================ validation


@torch.no_grad()
def validate(cfg: TrainConfig, s: Session) -> dict[str, float]:
    """The task's validation metrics (streamed: one batch of images in memory at a time)."""
    s.model.eval()
    try:
        with s.autocast():
            return {"caption": _val_caption, "vqa": _val_vqa, "retrieval": _val_retrieval}[cfg.task](cfg, s)
    finally:
        s.model.train()


def _eval_batches(cfg: TrainConfig, s: Session, dataset):
    """Batches of an evaluation dataset in order; unreadable images are left out."""
    from .data.loaders import LoaderConfig, make_loader

    loader = make_loader(dataset, LoaderConfig(batch_size=cfg.batch_size, workers=0), pad_id=s.tokenizer.pad_id)
    for batch in loader:
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
    st, name = s.state, TASK_METRIC[cfg.task]
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


# ============================================================================ checkpoints and the run directory


def _checkpoint_config(cfg: TrainConfig, s: Session) -> dict:
    return {"model": s.model.cfg.to_dict(), "task": cfg.task, "train": cfg.to_dict()}


def _save(s: Session, where: Path, cfg: TrainConfig, train_state: dict | None) -> None:
    from .checkpoint import save_checkpoint

    # TODO(ddp): rank 0 only, the model unwrapped (save_checkpoint unwraps DDP)
    save_checkpoint(where, config=_checkpoint_config(cfg, s), model=s.model, tokenizer=s.tokenizer,
                    answer_vocab=s.answers, train_state=train_state)


def save_last(s: Session, run_dir: Path, cfg: TrainConfig) -> None:
    """``last/`` with everything a resume needs."""
    from .checkpoint import rng_state

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
    top = run_dir / "config.json"
    saved = _read_json(top) if top.is_file() else None
    if cfg.resume is None:
        if saved is not None or (run_dir / "last").exists():
            what = f"a {saved.get('status', 'earlier')} run" if saved else "a run"
            raise UserError(f"{run_dir} already holds {what}; continue it with --resume {run_dir} "
                            f"or choose another --out")
        return _Opened()
    from .checkpoint import load_checkpoint

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

    data = {"status": status, "task": cfg.task, "train": cfg.to_dict(), "model": model_cfg.to_dict()}
    if steps is not None:
        data["steps"] = steps
    atomic_write_text(run_dir / "config.json", json.dumps(data, indent=2) + "\n")


class RunLock:
    """``RUN/lock`` holding our pid, created with O_EXCL; a dead pid's lock is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"

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
        # TODO(ddp): rank 0 only
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


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
        row = {"step": step, "loss": self.loss / max(1, self.micro), "lr": lr,
               "samples_per_s": self.samples / max(now - self.t0, 1e-9)}
        self.loss, self.micro, self.samples, self.t0 = 0.0, 0, 0, now
        return row


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
    return FitResult(run_dir=run_dir, metric=TASK_METRIC[cfg.task], best=st.best, best_step=st.best_step,
                     steps=st.step, epochs=st.step / s.steps_per_epoch, seconds=seconds,
                     samples_per_s=seen / max(seconds, 1e-9), skipped_images=s.skipper.count,
                     stopped_early=st.early_stopped, exit_code=code, history=history)


def summary_table(result: FitResult):
    """The closing rich table of a run."""
    from rich.table import Table

    table = Table(title=f"mmcli finetune: {result.run_dir}")
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


# ============================================================================ device, precision, signals


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device that exists."""
    # TODO: move to mmcli/device.py (DESIGN.md) when another command needs it
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain fp32). auto: bf16 on a CUDA GPU that supports it, else fp32."""
    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (it uses a gradient scaler); use bf16 on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
