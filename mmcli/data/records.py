"""Plain records that every reader produces and every task consumes.

A reader turns a dataset on disk (or a built-in one) into a :class:`Dataset`:
named splits, each holding image-caption records and/or VQA records. Images
are referred to by file path; pixels are loaded later by ``mmcli.data.images``.
Ids are strings, unique within a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


@dataclass(frozen=True)
class CaptionRecord:
    """One image and its reference captions (captioning, retrieval, pretraining)."""

    image_id: str
    image: str  # path to the image file
    captions: tuple[str, ...]


@dataclass(frozen=True)
class VQARecord:
    """One question about one image, with its reference answers."""

    question_id: str
    image_id: str
    image: str  # path to the image file
    question: str
    answers: tuple[str, ...]  # 1 (easy-VQA, JSONL) or 10 (VQA v2, kept for the official metric)
    answer_type: str | None = None  # e.g. "yes/no", "number", "other"
    question_type: str | None = None  # e.g. "what color is the"


@dataclass(frozen=True)
class PairRecord:
    """One image with one text (a caption flattened out for contrastive training and retrieval)."""

    text_id: str  # "<image_id>#<k>": caption k of the image
    image_id: str
    image: str
    text: str


@dataclass
class Split:
    """The records of one split; a dataset may have captions, questions, or both."""

    captions: list[CaptionRecord] = field(default_factory=list)
    questions: list[VQARecord] = field(default_factory=list)

    def pairs(self) -> list[PairRecord]:
        """Every caption of every image as its own image-text pair."""
        return [
            PairRecord(f"{r.image_id}#{k}", r.image_id, r.image, c)
            for r in self.captions
            for k, c in enumerate(r.captions)
        ]

    def images(self) -> dict[str, str]:
        """image id -> path, for every image of the split."""
        out = {r.image_id: r.image for r in self.captions}
        out.update((q.image_id, q.image) for q in self.questions)
        return out


@dataclass
class Dataset:
    """Named splits (``train``, ``val``, ``test``; single-file sources use ``all``)."""

    name: str  # the spec it was read from, e.g. "flickr8k:/data/flickr8k"
    splits: dict[str, Split]
    info: dict[str, str] = field(default_factory=dict)  # free-form notes for `mmcli data stats`

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UserError(f"{self.name}: no split {name!r} (it has: {', '.join(self.splits) or 'none'})")
        return self.splits[name]
