"""The one dataset spec syntax of the CLI: ``KIND[:ARG[:ARG...]]``.

``load_dataset("flickr8k:../shared/data/flickr8k")`` reads a dataset; the
:data:`SPEC_HELP` text documents the syntax for ``--help`` and the README. The
parts are separated by ``:``, so paths containing ``:`` are not supported. A
leading ``~`` in a path is expanded.
"""

from __future__ import annotations

import os

from ..errors import UserError
from . import readers
from .records import Dataset

SPEC_KINDS: dict[str, str] = {
    "easyvqa": "built-in easy-VQA questions about simple shapes (easy-vqa package, no download)",
    "shapes": "built-in synthetic coloured-shape scenes with captions and questions",
    "flickr8k": "Flickr8k folder: token file, split files, images/",
    "coco": "COCO captions annotation JSON plus its image folder",
    "karpathy": "Karpathy split JSON (dataset_coco.json style) plus its image folder",
    "vqa2": "VQA v2 questions JSON, annotations JSON (may be left out) and COCO image folder",
    "jsonl": "mmcli JSONL: image + caption(s) or question + answer(s) per line",
    "folder": "every image file under a folder, without captions (for inference)",
}

SPEC_HELP = """\
Dataset specs (parts are separated by ':', so paths may not contain ':'):
  easyvqa                            built-in easy-VQA, no download
  shapes, shapes:N, shapes:N:SIZE    synthetic shapes: N images, SIZE x SIZE px
  flickr8k:DIR                       Flickr8k token and split files, DIR/images
  coco:ANNOTATIONS:IMAGES            COCO captions JSON and image folder
  karpathy:JSON:IMAGES               Karpathy split JSON and image folder
  vqa2:QUESTIONS:ANNOTATIONS:IMAGES  VQA v2 (QUESTIONS::IMAGES: no answers)
  jsonl:FILE                         lines {"image", "caption" or "captions"}
                                     or {"image", "question", "answers"}
  folder:DIR                         every image under DIR, no captions"""

# kind -> (fewest, most) parts after the kind
_ARITY = {"easyvqa": (0, 0), "shapes": (0, 2), "flickr8k": (1, 1), "coco": (2, 2),
          "karpathy": (2, 2), "vqa2": (3, 3), "jsonl": (1, 1), "folder": (1, 1)}
_USAGE = {"easyvqa": "easyvqa", "shapes": "shapes, shapes:N or shapes:N:SIZE", "flickr8k": "flickr8k:DIR",
          "coco": "coco:ANNOTATIONS:IMAGES", "karpathy": "karpathy:JSON:IMAGES",
          "vqa2": "vqa2:QUESTIONS:ANNOTATIONS:IMAGES", "jsonl": "jsonl:FILE", "folder": "folder:DIR"}


def load_dataset(spec: str, *, allow_outside_root: bool = False) -> Dataset:
    """Read the dataset a spec names; its ``name`` is the spec.

    ``allow_outside_root`` is passed to the readers of annotated image folders.
    """
    kind, args = parse_spec(spec)
    outside = {"allow_outside_root": allow_outside_root}
    if kind == "easyvqa":
        from .easyvqa import load_easyvqa

        ds = load_easyvqa()
    elif kind == "shapes":
        from .shapes import load_shapes

        ds = load_shapes(**_shapes_args(spec, args))
    elif kind == "flickr8k":
        ds = readers.read_flickr8k(args[0], **outside)
    elif kind == "coco":
        ds = readers.read_coco(args[0], args[1], **outside)
    elif kind == "karpathy":
        ds = readers.read_karpathy(args[0], args[1], **outside)
    elif kind == "vqa2":
        ds = readers.read_vqa2(args[0], args[1] or None, args[2], **outside)
    elif kind == "jsonl":
        ds = readers.read_jsonl(args[0], **outside)
    else:
        ds = readers.read_folder(args[0])
    ds.name = spec
    return ds


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``(kind, parts)``, with the number of parts checked and paths ``~``-expanded."""
    kind, *args = spec.strip().split(":")
    kind = kind.strip().lower()
    if kind not in SPEC_KINDS:
        raise _spec_error(spec, f"unknown kind {kind!r}")
    low, high = _ARITY[kind]
    if not low <= len(args) <= high:
        raise _spec_error(spec, f"expected {_USAGE[kind]}; paths may not contain ':'")
    if kind in ("easyvqa", "shapes"):
        return kind, args
    for i, arg in enumerate(args):
        if not arg.strip() and not (kind == "vqa2" and i == 1):
            raise _spec_error(spec, f"empty path in {_USAGE[kind]}")
    return kind, [os.path.expanduser(a) if a else a for a in args]


_SHAPES_LIMITS = {"n_images": ("N", 1, 1_000_000), "size": ("SIZE", 16, 1024)}  # as `mmcli data shapes`


def _shapes_args(spec: str, args: list[str]) -> dict[str, int]:
    """``n_images`` and ``size`` when given; load_shapes' defaults otherwise."""
    out = {}
    for key, value in zip(_SHAPES_LIMITS, args):
        label, low, high = _SHAPES_LIMITS[key]
        value = value.strip()
        if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
            raise _spec_error(spec, f"{label} in shapes:N:SIZE must be an integer from {low} to {high}, "
                                    f"got {value!r}")
        out[key] = int(value)
    return out


def _spec_error(spec: str, problem: str) -> UserError:
    return UserError(f"dataset spec {spec!r}: {problem} (kinds: {', '.join(SPEC_KINDS)})")
