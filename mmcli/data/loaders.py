"""PyTorch datasets over mmcli records, one typed batch, and the DataLoader setup.

Every dataset item is an image tensor plus token ids (and, for VQA, a soft
answer target); ``collate`` stacks them into one :class:`Batch`. A grouped
dataset (:class:`VQAImageDataset`, :class:`CaptionImageDataset`) gives one item per
image with all its questions or captions: the batch then holds each image once
and ``Batch.text_image`` maps each text row to its image row. A bad image is
not fatal: the item comes back as ``Skipped`` and ``collate`` leaves it out and
lists it in ``batch.skipped``, so the training loop (in the main process, even
with worker processes) can warn once per file and count them, or stop when the
user asked for ``--strict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from .images import BadImage, ImageCache, load_image
from .records import CaptionRecord, PairRecord, VQARecord


@dataclass
class Skipped:
    """An item whose image could not be loaded."""

    path: str
    reason: str  # the problem, without the path


@dataclass
class Batch:
    """One batch; fields a task does not use are None."""

    images: torch.Tensor  # (B, 3, H, W) float
    image_ids: list[str]
    text: torch.Tensor | None = None  # (B, L) int64 token ids, right-padded with pad_id
    text_len: torch.Tensor | None = None  # (B,) int64
    text_ids: list[str] | None = None  # caption / question ids
    targets: torch.Tensor | None = None  # (B, n_answers) VQA soft scores
    answers: list[tuple[str, ...]] | None = None  # reference answers (for the metric)
    references: list[tuple[str, ...]] | None = None  # reference captions (for the metric)
    skipped: list[Skipped] = field(default_factory=list)
    # grouped texts (VQAImageDataset, CaptionImageDataset): the text/targets rows are questions or
    # captions (B_t), ``images`` holds each image once (B_img) and text_image (B_t,) int64 maps a
    # text row to its image row
    text_image: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def n_samples(self) -> int:
        """Training samples in the batch: text rows (questions, captions) when grouped, else rows."""
        return self.text.shape[0] if self.text_image is not None else len(self)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The same batch with every tensor on ``device``."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return Batch(
            **{
                f.name: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                for f in fields(self)
                for v in [getattr(self, f.name)]
            }
        )


class ImageSource:
    """Path -> transformed image tensor, from the files or from an :class:`ImageCache`."""

    def __init__(self, transform: Callable, cache: ImageCache | None = None):
        self.transform = transform
        self.cache = cache
        self._index = {p: i for i, p in enumerate(cache.paths)} if cache is not None else {}

    def __call__(self, path: str) -> torch.Tensor:
        i = self._index.get(path)
        img = self.cache.get(i) if i is not None else load_image(path)
        return self.transform(img)


class _Base(torch.utils.data.Dataset):
    """Shared item building: load the image, or report it skipped."""

    def __init__(self, records: Sequence, images: ImageSource):
        self.records = list(records)
        self.images = images

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, path: str):
        try:
            return self.images(path)
        except BadImage as e:
            return Skipped(path, e.problem)


class PairDataset(_Base):
    """(image, caption) pairs: captioning and contrastive training. Text: bos caption eos."""

    def __init__(self, pairs: Sequence[PairRecord], images: ImageSource, tokenizer, max_len: int = 32):
        super().__init__(pairs, images)
        self.tokenizer, self.max_len = tokenizer, max_len

    def __getitem__(self, i: int):
        r = self.records[i]
        img = self._image(r.image)
        if isinstance(img, Skipped):
            return img
        ids = self.tokenizer.encode(r.text, bos=True, eos=True)[: self.max_len]
        return {"image": img, "image_id": r.image_id, "text": ids, "text_id": r.text_id}


class ImageDataset(_Base):
    """One item per image with its reference captions: caption evaluation, retrieval, inference."""

    def __init__(self, records: Sequence[CaptionRecord], images: ImageSource):
        super().__init__(records, images)

    def __getitem__(self, i: int):
        r = self.records[i]
        img = self._image(r.image)
        if isinstance(img, Skipped):
            return img
        return {"image": img, "image_id": r.image_id, "references": r.captions}


class VQADataset(_Base):
    """(image, question) with the soft answer target over ``answer_vocab``. Text: cls question."""

    def __init__(self, questions: Sequence[VQARecord], images: ImageSource, tokenizer, answer_vocab, max_len: int = 32):
        super().__init__(questions, images)
        self.tokenizer, self.answer_vocab, self.max_len = tokenizer, answer_vocab, max_len
        self.rows = QuestionRows(tokenizer, answer_vocab, max_len)

    def __getitem__(self, i: int):
        q = self.records[i]
        img = self._image(q.image)
        if isinstance(img, Skipped):
            return img
        return {"image": img, "image_id": q.image_id, "text": self.rows.ids(q.question), "text_id": q.question_id,
                "target": self.rows.target(q.answers), "answers": q.answers}


class QuestionRows:
    """A question's token ids (``cls question``, cut to ``max_len``) and its soft answer target, each
    made once per distinct question text and answer list and shared after that (read-only: ``collate``
    copies them into the batch). VQA data repeats both: easy-VQA's training questions are 107 texts,
    and tokenizing and filling targets again for every question took most of the time of building a
    batch from cached features (``python benchmarks/bench_loader.py --vqa``). At most ``MAX_BYTES`` of
    targets and ``MAX_TEXTS`` texts are kept; beyond that they are made each time, as before."""

    MAX_TEXTS = 1 << 18
    MAX_BYTES = 64 << 20

    def __init__(self, tokenizer, answer_vocab, max_len: int):
        self.tokenizer, self.answer_vocab, self.max_len = tokenizer, answer_vocab, max_len
        self.n = len(answer_vocab.answers)
        self._ids: dict[str, tuple[int, ...]] = {}
        self._targets: dict[tuple, torch.Tensor] = {}

    def ids(self, question: str) -> tuple[int, ...]:
        ids = self._ids.get(question)
        if ids is None:
            ids = (self.tokenizer.cls_id, *self.tokenizer.encode(question)[: self.max_len - 1])
            if len(self._ids) < self.MAX_TEXTS:
                self._ids[question] = ids
        return ids

    def target(self, answers) -> torch.Tensor:
        key = tuple(answers) if not isinstance(answers, str) else answers  # (a string: soft_targets refuses it)
        target = self._targets.get(key)
        if target is None:
            target = torch.zeros(self.n)
            for idx, score in self.answer_vocab.soft_targets(answers).items():
                target[idx] = score
            if (len(self._targets) + 1) * 4 * max(self.n, 1) <= self.MAX_BYTES:
                self._targets[key] = target
        return target


class VQAImageDataset(_Base):
    """One item per image with all its questions (grouped VQA): the image encoder then runs once
    per image and its tokens are shared by the image's questions (``Batch.text_image``).

    ``max_questions``: keep at most this many questions per image (the first ones), None = all.
    """

    def __init__(self, questions: Sequence[VQARecord], images: ImageSource, tokenizer, answer_vocab,
                 max_len: int = 32, max_questions: int | None = None):
        groups: dict[str, list[VQARecord]] = {}
        for q in questions:
            groups.setdefault(q.image_id, []).append(q)
        super().__init__([g[:max_questions] for g in groups.values()], images)
        self.tokenizer, self.answer_vocab, self.max_len = tokenizer, answer_vocab, max_len
        self.n_questions = sum(len(g) for g in self.records)
        self.rows = QuestionRows(tokenizer, answer_vocab, max_len)

    def __getitem__(self, i: int):
        qs = self.records[i]
        img = self._image(qs[0].image)
        if isinstance(img, Skipped):
            return img
        rows = self.rows
        questions = [{"text": rows.ids(q.question), "text_id": q.question_id, "target": rows.target(q.answers),
                      "answers": q.answers} for q in qs]
        return {"image": img, "image_id": qs[0].image_id, "texts": questions}


class CaptionImageDataset(_Base):
    """One item per image with all its captions (grouped captioning): the image encoder then runs
    once per image and its tokens are shared by the image's captions (``Batch.text_image``), as
    :class:`VQAImageDataset` does for questions. The caption rows are those of
    :class:`PairDataset` over the same records (bos caption eos, ids ``image_id#k``).

    ``max_captions``: keep at most this many captions per image (the first ones), None = all.
    """

    def __init__(self, records: Sequence[CaptionRecord], images: ImageSource, tokenizer, max_len: int = 32,
                 max_captions: int | None = None):
        super().__init__([r for r in records if r.captions], images)  # (an image without captions: no rows)
        self.tokenizer, self.max_len, self.max_captions = tokenizer, max_len, max_captions
        self.n_captions = sum(len(r.captions[:max_captions]) for r in self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        img = self._image(r.image)
        if isinstance(img, Skipped):
            return img
        captions = [{"text": self.tokenizer.encode(c, bos=True, eos=True)[: self.max_len],
                     "text_id": f"{r.image_id}#{k}"} for k, c in enumerate(r.captions[: self.max_captions])]
        return {"image": img, "image_id": r.image_id, "texts": captions}


def collate(items: list, pad_id: int = 0) -> Batch:
    """Stack dataset items into one :class:`Batch`; skipped items are listed, not stacked."""
    skipped = [it for it in items if isinstance(it, Skipped)]
    items = [it for it in items if not isinstance(it, Skipped)]
    if not items:
        return Batch(images=torch.zeros(0, 3, 1, 1), image_ids=[], skipped=skipped)
    batch = Batch(
        images=torch.stack([it["image"] for it in items]),
        image_ids=[it["image_id"] for it in items],
        skipped=skipped,
    )
    if "texts" in items[0]:  # grouped questions or captions: text rows + the image row of each
        owner = [row for row, it in enumerate(items) for _ in it["texts"]]
        items = [t for it in items for t in it["texts"]]
        batch.text_image = torch.tensor(owner, dtype=torch.int64)
    if "text" in items[0]:
        lengths = [len(it["text"]) for it in items]
        text = np.full((len(items), max(lengths)), pad_id, dtype=np.int64)
        for row, it in enumerate(items):
            text[row, : len(it["text"])] = it["text"]
        batch.text = torch.from_numpy(text)
        batch.text_len = torch.tensor(lengths, dtype=torch.int64)
        batch.text_ids = [it["text_id"] for it in items]
    if "target" in items[0]:
        batch.targets = torch.stack([it["target"] for it in items])
        batch.answers = [it["answers"] for it in items]
    if "references" in items[0]:
        batch.references = [it["references"] for it in items]
    return batch


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 32
    shuffle: bool = False
    workers: int | None = None  # None: one worker per spare core, at most 4
    seed: int = 0
    drop_last: bool = False
    pin_memory: bool | None = None  # None: when CUDA is available
    shard: bool = True  # under torchrun each rank loads its own share (False: every rank loads all)


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(dataset: torch.utils.data.Dataset, cfg: LoaderConfig, pad_id: int = 0) -> DataLoader:
    """A DataLoader with mmcli's collate, seeded shuffling, workers and pinned memory where they help,
    and a DistributedSampler when running under torchrun."""
    workers = default_workers() if cfg.workers is None else cfg.workers
    pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
    sampler = None
    shuffle = cfg.shuffle
    if cfg.shard and torch.distributed.is_available() and torch.distributed.is_initialized():
        # each rank sees its own shard; set_epoch() on the sampler reshuffles per epoch
        sampler = DistributedSampler(dataset, shuffle=cfg.shuffle, seed=cfg.seed, drop_last=cfg.drop_last)
        shuffle = False
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_Collate(pad_id),
        pin_memory=pin,
        drop_last=cfg.drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )


class _Collate:
    """A picklable collate with the tokenizer's pad id bound (worker processes need to pickle it)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list) -> Batch:
        return collate(items, self.pad_id)
