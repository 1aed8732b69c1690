"""easy-VQA, the built-in VQA dataset, read from the ``easy-vqa`` package (no download).

The package holds 4,000 train and 1,000 test 64x64 PNG images, 38,575 / 9,673
questions and 13 answers. Its test image ids restart at 0, so mmcli's ids carry
the package split: image ``train/123``, question ``train/4567`` (the index in
the package's question list). Splits:

* ``train`` and ``val``: the package's train set, divided by image with a
  seeded shuffle (``val_fraction`` of the images and all of their questions
  go to ``val``), so no image is in both;
* ``test``: the package's test set, for the final number only.

Each question has one answer, an ``answer_type`` (``yes/no``, ``color`` or
``shape``) and a ``question_type``: the question's words before the first
colour or shape name (a trailing ``shape`` dropped), e.g. ``is there a``,
``does the image not contain a``, ``what color is the``; questions that name
no colour or shape keep all their words (``what shape is in the image``).
"""

from __future__ import annotations

import random
from functools import lru_cache
from importlib import metadata

from ..errors import UserError
from .records import Dataset, Split, VQARecord

SHAPES = frozenset({"circle", "rectangle", "triangle"})
COLORS = frozenset({"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"})


def answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    return "other"


@lru_cache(maxsize=None)  # a few hundred distinct question texts
def question_type(question: str) -> str:
    """The template prefix: words before the first colour or shape name ("is there not a")."""
    words = question.lower().rstrip("?").split()
    cut = next((k for k, w in enumerate(words) if w in COLORS or w in SHAPES), None)
    if cut is None and words[-1:] == ["shape"] and len(words) > 2:  # "what color is the shape"
        cut = len(words) - 1
    return " ".join(words[:cut])


def _records(split: str, questions, answers, image_ids, paths) -> list[VQARecord]:
    out = []
    for k, (q, a, i) in enumerate(zip(questions, answers, image_ids)):
        out.append(VQARecord(f"{split}/{k}", f"{split}/{i}", paths[i], q, (a,), answer_type(a), question_type(q)))
    return out


def load_easyvqa(val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """easy-VQA as train / val / test (val carved from the package's train set by image)."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"easyvqa: val_fraction must be in [0, 1), got {val_fraction}")
    try:
        import easy_vqa
    except ImportError:  # pragma: no cover - a dependency of mmcli
        raise UserError("easyvqa: the easy-vqa package is not installed (pip install easy-vqa)") from None

    train = _records("train", *easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths())
    test = _records("test", *easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())

    images = sorted({r.image_id for r in train}, key=lambda s: int(s.split("/")[1]))
    random.Random(seed).shuffle(images)
    val_images = set(images[: round(val_fraction * len(images))])
    splits = {
        "train": Split(questions=[r for r in train if r.image_id not in val_images]),
        "val": Split(questions=[r for r in train if r.image_id in val_images]),
        "test": Split(questions=test),
    }
    info = {
        "source": f"easy-vqa {metadata.version('easy-vqa')} (pip package, bundled images)",
        "val": f"{len(val_images)} of the package's {len(images)} train images (seed {seed}); test is the package's test set",
        "package splits": (
            f"train {len(images):,} images / {len(train):,} questions (train + val here), "
            f"test {len({r.image_id for r in test}):,} images / {len(test):,} questions"
        ),
        "answers": ", ".join(easy_vqa.get_answers()),
    }
    return Dataset("easyvqa", splits, info)
