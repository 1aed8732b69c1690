"""Readers that turn datasets on disk into a :class:`~mmcli.data.records.Dataset`.

=================  ==========================================================  ==============
reader             input                                                       splits
=================  ==========================================================  ==============
``read_coco``      COCO captions JSON + image folder                           ``all``
``read_karpathy``  Karpathy split JSON + image folder                          train/val/test
``read_flickr8k``  Flickr8k folder (token file, split files, images)           train/val/test
``read_vqa2``      VQA v2 questions (+ annotations) JSON + COCO image folder   ``all``
``read_jsonl``     mmcli JSONL (captions and/or questions)                     from ``split``
``read_folder``    every image file under a folder (inference)                 ``all``
=================  ==========================================================  ==============

Common rules:

* Image paths in records are absolute and normalised (``os.path.abspath``, no
  symlinks resolved). Readers never open or stat single images: a missing image
  folder is an error here, a missing image file is reported later by the loader.
* A path from an annotation file that leads outside its image root (``..`` or an
  absolute path elsewhere) is a :class:`UserError` unless
  ``allow_outside_root=True``.
* Captions are stripped of surrounding whitespace; answers are kept verbatim.
* Every problem with the input (missing file or folder, bad JSON, wrong shape,
  a bad line, duplicate ids, no records at all) is a one-line :class:`UserError`
  naming the file and, where it helps, the line or entry.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from ..errors import UserError, examples
from ..metrics.jsonio import located_items, parse_id, read_json_or_jsonl, read_text, show_id
from .records import CaptionRecord, Dataset, Split, VQARecord

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_coco",
    "read_flickr8k",
    "read_folder",
    "read_jsonl",
    "read_karpathy",
    "read_vqa2",
]


# --------------------------------------------------------------------------- helpers


def _image_root(images: str | os.PathLike) -> str:
    """The absolute image folder; it must exist."""
    root = os.path.abspath(images)
    if not os.path.exists(root):
        raise UserError(f"{images}: image folder not found")
    if not os.path.isdir(root):
        raise UserError(f"{images}: is a file, expected an image folder")
    return root


def _image_path(root: str, rel: Any, name: str, where: str, allow_outside_root: bool) -> str:
    """``rel`` (from an annotation file) joined to ``root``; it may not leave ``root``."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        raise UserError(f"{name}: {where}: image path must be a non-empty string (no NUL), got {_show(rel)}")
    full = os.path.normpath(os.path.join(root, rel))
    inside = full == root or full.startswith(root if root.endswith(os.sep) else root + os.sep)
    if not allow_outside_root and not inside:
        raise UserError(f"{name}: {where}: image path {rel!r} is outside the image folder {root}")
    return full


def _show(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON document that must be an object."""
    data, where = read_json_or_jsonl(path)
    if where is not None:
        raise UserError(f"{path}: is JSONL (one object per line), expected one JSON document: {what}")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def _list_field(name: str, obj: dict, key: str, where: str | None = None) -> list:
    """``obj[key]``, which must be a list."""
    value = obj.get(key)
    if not isinstance(value, list):
        at = f"{where}: " if where else ""
        got = "it is missing" if key not in obj else f"got {type(value).__name__}"
        raise UserError(f"{name}: {at}{key!r} must be a list ({got})")
    return value


def _entry(name: str, where: str, item: Any, needs: tuple[str, ...]) -> dict:
    """A list item that must be an object with the ``needs`` keys."""
    if not isinstance(item, dict):
        raise UserError(f"{name}: {where}: expected an object, got {_show(item)}")
    missing = [k for k in needs if k not in item]
    if missing:
        raise UserError(f"{name}: {where}: missing {', '.join(repr(k) for k in missing)}")
    return item


def _string(name: str, where: str, value: Any, field: str) -> str:
    """A non-empty string field, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{name}: {where}: {field} must be a non-empty string, got {_show(value)}")
    return value.strip()


def _optional_string(name: str, where: str, value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{name}: {where}: {field} must be a string, got {_show(value)}")
    return value


def _dataset(name: str, source: str, splits: dict[str, Split], info: dict[str, str] | None = None) -> Dataset:
    """The dataset of the non-empty splits; no records at all is an error."""
    kept = {k: s for k, s in splits.items() if s.captions or s.questions}
    if not kept:
        raise UserError(f"{source}: contains no images or questions")
    return Dataset(name=name, splits=kept, info=dict(info or {}))


# --------------------------------------------------------------------------- COCO


def read_coco(annotations: str | os.PathLike, images: str | os.PathLike, *,
              allow_outside_root: bool = False) -> Dataset:
    """COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``.

    One split ``all`` in the order of ``images``; image path = ``images/file_name``.
    Images without captions are kept with none; a file without ``annotations``
    (COCO's ``image_info_test*.json``) gives caption-less records for inference.
    """
    name = str(annotations)
    root = _image_root(images)
    data = _read_json(annotations, 'a COCO captions object {"images": [...], "annotations": [...]}')
    by_id: dict[str, tuple[str, list[str]]] = {}
    for where, item in located_items(_list_field(name, data, "images"), None):
        where = f"images {where}"
        item = _entry(name, where, item, ("id", "file_name"))
        iid = parse_id(item["id"], name, where, "id")
        if iid in by_id:
            raise UserError(f"{name}: {where}: image id {show_id(iid)} appears twice in 'images'")
        by_id[iid] = (_image_path(root, item["file_name"], name, where, allow_outside_root), [])
    anns = _list_field(name, data, "annotations") if "annotations" in data else []
    for where, item in located_items(anns, None):
        where = f"annotations {where}"
        item = _entry(name, where, item, ("image_id", "caption"))
        iid = parse_id(item["image_id"], name, where, "image_id")
        if iid not in by_id:
            raise UserError(f"{name}: {where}: caption for image {show_id(iid)}, which is not in 'images'")
        by_id[iid][1].append(_string(name, where, item["caption"], "caption"))
    records = [CaptionRecord(iid, path, tuple(caps)) for iid, (path, caps) in by_id.items()]
    info = {"source": "COCO captions"} if "annotations" in data else {"source": "COCO image list (no captions)"}
    return _dataset(f"coco:{annotations}:{images}", name, {"all": Split(captions=records)}, info)


# --------------------------------------------------------------------------- Karpathy

_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def read_karpathy(path: str | os.PathLike, images: str | os.PathLike, *,
                  allow_outside_root: bool = False) -> Dataset:
    """Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, ...).

    ``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw", "tokens"}], "cocoid"?}]}``.
    Splits ``train`` (with ``restval`` merged in), ``val``, ``test``, in file order.
    Image path = ``images/[filepath/]filename``; image id = ``str(cocoid)`` when
    present, else the file name. A sentence without ``raw`` uses its ``tokens``.
    """
    name = str(path)
    root = _image_root(images)
    data = _read_json(path, 'a Karpathy split object {"images": [{"filename", "split", "sentences"}]}')
    splits = {"train": Split(), "val": Split(), "test": Split()}
    seen: dict[str, str] = {}
    restval = 0
    for where, item in located_items(_list_field(name, data, "images"), None):
        where = f"images {where}"
        item = _entry(name, where, item, ("filename", "split", "sentences"))
        split = item["split"]
        if not isinstance(split, str) or split not in _KARPATHY_SPLITS:
            raise UserError(f"{name}: {where}: unknown split {_show(split)} "
                            f"(expected one of {', '.join(_KARPATHY_SPLITS)})")
        restval += split == "restval"
        filename = _string(name, where, item["filename"], "filename")
        iid = parse_id(item["cocoid"], name, where, "cocoid") if "cocoid" in item else filename
        if iid in seen:
            raise UserError(f"{name}: {where}: image {show_id(iid)} appears twice (first at {seen[iid]})")
        seen[iid] = where
        folder = item.get("filepath") or ""
        if not isinstance(folder, str):
            raise UserError(f"{name}: {where}: filepath must be a string, got {_show(folder)}")
        image = _image_path(root, os.path.join(folder, filename), name, where, allow_outside_root)
        captions = tuple(_karpathy_sentence(name, f"{where} sentence {k}", s)
                         for k, s in enumerate(_list_field(name, item, "sentences", where), 1))
        splits[_KARPATHY_SPLITS[split]].captions.append(CaptionRecord(iid, image, captions))
    info = {"source": "Karpathy split"}
    if restval:
        info["restval"] = f"{restval} restval images merged into train"
    return _dataset(f"karpathy:{path}:{images}", name, splits, info)


def _karpathy_sentence(name: str, where: str, sentence: Any) -> str:
    if isinstance(sentence, dict) and "raw" in sentence:
        return _string(name, where, sentence["raw"], "raw")
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list) and sentence["tokens"] \
            and all(isinstance(t, str) for t in sentence["tokens"]):
        return " ".join(sentence["tokens"])
    raise UserError(f"{name}: {where}: expected an object with 'raw' (or a 'tokens' list of strings)")


# --------------------------------------------------------------------------- Flickr8k

FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = (
    ("train", "Flickr_8k.trainImages.txt"),
    ("val", "Flickr_8k.devImages.txt"),
    ("test", "Flickr_8k.testImages.txt"),  # optional: often held out on purpose
)
FLICKR8K_IMAGE_FOLDERS = ("images", "Flicker8k_Dataset")


def read_flickr8k(root: str | os.PathLike, *, allow_outside_root: bool = False) -> Dataset:
    """The Flickr8k folder: token file, split files and an image folder.

    ``root/Flickr8k.token.txt`` has lines ``IMAGE.jpg#K<TAB>caption``;
    ``Flickr_8k.{train,dev,test}Images.txt`` list one file name a line and give
    the splits ``train``, ``val`` (= dev) and ``test`` (only when its file
    exists). Images live in ``root/images`` or ``root/Flicker8k_Dataset``.
    Image id = file name; records follow the split file's order.

    Sensible handling of imperfect files: captions are ordered by ``K`` whatever
    the line order (gaps allowed); captions of images that are in no split file
    are ignored (counted in ``info``); a split image without any caption, an
    image listed twice or in two splits, a repeated ``IMAGE#K`` or a malformed
    line is a :class:`UserError` naming the file and line.
    """
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"{root}: Flickr8k folder not found" if not base.exists()
                        else f"{root}: is a file, expected the Flickr8k folder")
    folder = next((base / d for d in FLICKR8K_IMAGE_FOLDERS if (base / d).is_dir()), None)
    if folder is None:
        raise UserError(f"{root}: no image folder (expected {' or '.join(FLICKR8K_IMAGE_FOLDERS)})")
    image_root = _image_root(folder)
    tokens = base / FLICKR8K_TOKENS
    captions = _flickr_captions(tokens)
    splits: dict[str, Split] = {}
    listed: dict[str, str] = {}
    for split, filename in FLICKR8K_SPLIT_FILES:
        path = base / filename
        if split == "test" and not path.exists():
            continue
        names = _flickr_split_names(path, listed)
        missing = [n for n, _ in names if n not in captions]
        if missing:
            raise UserError(f"{path}: {len(missing)} images have no caption in {tokens}: {examples(missing)}")
        splits[split] = Split(captions=[
            CaptionRecord(n, _image_path(image_root, n, str(path), where, allow_outside_root),
                          tuple(c for _, c in sorted(captions[n].items())))
            for n, where in names
        ])
    info = {"source": "Flickr8k", "splits": ", ".join(splits)}
    unused = [n for n in captions if n not in listed]
    if unused:
        info["unused_captions"] = f"captions of {len(unused)} images in no split file were ignored"
    return _dataset(f"flickr8k:{root}", str(root), splits, info)


def _flickr_captions(path: Path) -> dict[str, dict[int, str]]:
    """``{file name: {K: caption}}`` from a Flickr token file."""
    out: dict[str, dict[int, str]] = {}
    for lineno, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines: U+2028 may be in a caption
        if not line.strip():
            continue
        head, sep, caption = line.partition("\t")
        if not sep:  # tolerate a space instead of the tab
            head, _, caption = line.strip().partition(" ")
        image, hash_, k = head.strip().rpartition("#")
        if not hash_ or not image or not (k.isascii() and k.isdigit() and len(k) <= 20):
            raise UserError(f"{path}: line {lineno}: expected 'IMAGE#K<TAB>caption', got {_show(line)}")
        caps = out.setdefault(image, {})
        if int(k) in caps:
            raise UserError(f"{path}: line {lineno}: caption {show_id(image + '#' + k)} appears twice")
        caps[int(k)] = _string(str(path), f"line {lineno}", caption, "caption")
    return out


def _flickr_split_names(path: Path, listed: dict[str, str]) -> list[tuple[str, str]]:
    """``(image name, "line N")`` of a split file; ``listed`` (name -> file and line) catches repeats."""
    names = []
    for lineno, line in enumerate(read_text(path).split("\n"), 1):  # CRLF is fine: names are stripped
        image = line.strip()
        if not image:
            continue
        if image in listed:
            raise UserError(f"{path}: line {lineno}: image {show_id(image)} is already listed at {listed[image]}")
        listed[image] = f"{path.name} line {lineno}"
        names.append((image, f"line {lineno}"))
    return names


# --------------------------------------------------------------------------- VQA v2


def read_vqa2(questions: str | os.PathLike, annotations: str | os.PathLike | None,
              images: str | os.PathLike, *, allow_outside_root: bool = False) -> Dataset:
    """VQA v2: questions JSON, annotations JSON (or None for test-dev) and a COCO image folder.

    One split ``all`` in question order; all ten answers are kept in file order
    (``answers`` is empty without annotations). The image file of COCO id N is
    ``COCO_<data_subtype>_%012d.jpg``, ``%012d.jpg`` or ``N.jpg``: the naming is
    decided once per folder by probing the first few image ids (the first match
    wins; without ``data_subtype`` any ``COCO_*_%012d.jpg`` prefix is found).
    ``allow_outside_root`` is accepted for symmetry: names are built here, so
    they never leave the folder.
    """
    del allow_outside_root
    name = str(questions)
    root = _image_root(images)
    data = _read_json(questions, 'a VQA questions object {"questions": [...]}')
    rows = []
    for where, item in located_items(_list_field(name, data, "questions"), None):
        where = f"questions {where}"
        item = _entry(name, where, item, ("question_id", "image_id", "question"))
        qid = parse_id(item["question_id"], name, where, "question_id")
        rows.append((where, qid, _coco_id(name, where, item["image_id"]),
                     _string(name, where, item["question"], "question")))
    if not rows:
        raise UserError(f"{name}: contains no questions")
    subtype = data.get("data_subtype") if isinstance(data.get("data_subtype"), str) else None
    if subtype is not None and (any(c in subtype for c in "/\\") or not subtype.isprintable()):
        # it becomes part of a file name: "val2014/../.." would look outside the folder, and a control
        # character would end up in the error that names the file it was looking for
        raise UserError(f"{name}: data_subtype must be a plain name like 'val2014', got {_show(subtype)}")
    pattern = _coco_file_pattern(root, images, [r[2] for r in rows], subtype)
    answers = _vqa_answers(annotations) if annotations else None
    records, seen = [], {}
    for where, qid, image_id, question in rows:
        if qid in seen:
            raise UserError(f"{name}: {where}: question id {show_id(qid)} appears twice (first at {seen[qid]})")
        seen[qid] = where
        if answers is not None and qid not in answers:
            raise UserError(f"{annotations}: no annotation for question {show_id(qid)} of {name}")
        ans, atype, qtype = answers[qid] if answers is not None else ((), None, None)
        records.append(VQARecord(qid, str(image_id), os.path.join(root, pattern.format(image_id)),
                                 question, ans, atype, qtype))
    if answers is not None and len(answers) > len(seen):
        extra = [q for q in answers if q not in seen]
        raise UserError(f"{annotations}: {len(extra)} annotations are for questions not in {name}: {examples(extra)}")
    info = {"source": "VQA v2", "image_files": pattern.replace("{:012d}", "%012d").replace("{}", "N")}
    if answers is None:
        info["answers"] = "no annotations given: answers are empty"
    return _dataset(f"vqa2:{questions}:{annotations or ''}:{images}", name, {"all": Split(questions=records)}, info)


def _coco_id(name: str, where: str, value: Any) -> int:
    """A COCO image id: an integer (or a string of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise UserError(f"{name}: {where}: image_id must be a COCO image number, got {_show(value)}")


def _coco_file_pattern(root: str, images: str | os.PathLike, ids: list[int], subtype: str | None) -> str:
    """The ``str.format`` pattern of this folder's image file names, probed on a few ids."""
    escaped = (subtype or "").replace("{", "{{").replace("}", "}}")
    patterns = ([f"COCO_{escaped}_{{:012d}}.jpg"] if subtype else []) + ["{:012d}.jpg", "{}.jpg"]
    probes = list(dict.fromkeys(ids))[:5]
    for image_id in probes:
        for pattern in patterns:
            if os.path.isfile(os.path.join(root, pattern.format(image_id))):
                return pattern
        if not subtype:
            hits = glob.glob(os.path.join(glob.escape(root), f"COCO_*_{image_id:012d}.jpg"))
            if hits:
                prefix = os.path.basename(hits[0])[: -len(f"{image_id:012d}.jpg")]
                return prefix.replace("{", "{{").replace("}", "}}") + "{:012d}.jpg"
    tried = ", ".join(p.format(probes[0]) for p in patterns)
    raise UserError(f"{images}: no image file for COCO image {probes[0]} (tried {tried}"
                    f"{'' if subtype else ', COCO_*_%012d.jpg'})")


def _vqa_answers(path: str | os.PathLike) -> dict[str, tuple[tuple[str, ...], str | None, str | None]]:
    """``{question_id: (answers, answer_type, question_type)}`` from a VQA annotations file."""
    name = str(path)
    data = _read_json(path, 'a VQA annotations object {"annotations": [...]}')
    out: dict[str, tuple[tuple[str, ...], str | None, str | None]] = {}
    for where, item in located_items(_list_field(name, data, "annotations"), None):
        where = f"annotations {where}"
        item = _entry(name, where, item, ("question_id", "answers"))
        qid = parse_id(item["question_id"], name, where, "question_id")
        if qid in out:
            raise UserError(f"{name}: {where}: question id {show_id(qid)} appears twice")
        answers = []
        for a in _list_field(name, item, "answers", where):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise UserError(f"{name}: {where}: each answer must be an object with an 'answer' string")
            answers.append(a["answer"])
        out[qid] = (tuple(answers),
                    _optional_string(name, where, item.get("answer_type"), "answer_type"),
                    _optional_string(name, where, item.get("question_type"), "question_type"))
    if not out:
        raise UserError(f"{name}: contains no annotations")
    return out


# --------------------------------------------------------------------------- JSONL

_CAPTION_KEYS = frozenset({"image", "image_id", "split", "caption", "captions"})
_QUESTION_KEYS = frozenset({"image", "image_id", "split", "question", "question_id",
                            "answer", "answers", "answer_type", "question_type"})


class _JsonlSplit:
    """Records of one split while a JSONL file is read: captions merge per image."""

    def __init__(self) -> None:
        self.captions: dict[str, tuple[str, list[str]]] = {}  # image path -> (image id, captions)
        self.questions: list[VQARecord] = []
        self.question_ids: dict[str, str] = {}  # question id -> where
        self.paths: dict[str, str] = {}  # image id -> image path
        self.ids: dict[str, str] = {}  # image path -> image id

    def image(self, name: str, where: str, image_id: str, path: str) -> None:
        """Check that image ids and image files pair up one to one in this split."""
        other = self.paths.setdefault(image_id, path)
        if other != path:
            raise UserError(f"{name}: {where}: image id {image_id!r} is already used for {show_id(other)}")
        known = self.ids.setdefault(path, image_id)
        if known != image_id:
            raise UserError(f"{name}: {where}: image {show_id(path)} already has image id {known!r}, not {image_id!r}")

    def split(self) -> Split:
        return Split(captions=[CaptionRecord(i, p, tuple(c)) for p, (i, c) in self.captions.items()],
                     questions=self.questions)


def read_jsonl(path: str | os.PathLike, *, allow_outside_root: bool = False) -> Dataset:
    """mmcli's JSONL: one object a line, captions and/or questions.

    ``{"image": P, "caption": "..."}`` or ``{"image": P, "captions": [...]}`` (or
    just ``{"image": P}``: an image without captions), and ``{"image": P,
    "question": "...", "answers": [...]}`` (or ``"answer": "..."``; neither: no
    answers). Optional keys: ``image_id`` (default: ``P`` as written), ``split``
    (default ``all``; splits in order of first appearance), ``question_id``
    (default: the line number), ``answer_type``, ``question_type``. Other keys
    are errors (a typo would otherwise silently drop data). Relative image paths
    are relative to the JSONL file's folder, which is also the image root.
    Caption lines naming the same image in the same split merge into one record.
    A JSON list of such objects is read the same way.
    """
    name = str(path)
    data, where = read_json_or_jsonl(path)
    if where is None:
        if isinstance(data, dict):
            data, where = [data], ["line 1"]
        elif not isinstance(data, list):
            raise UserError(f"{name}: expected one JSON object per line, got a JSON {type(data).__name__}")
    root = os.path.dirname(os.path.abspath(path))
    splits: dict[str, _JsonlSplit] = {}
    for at, row in located_items(data, where):
        _jsonl_row(name, at, row, root, allow_outside_root, splits)
    return _dataset(f"jsonl:{path}", name, {k: s.split() for k, s in splits.items()}, {"source": "JSONL"})


def _jsonl_row(name: str, where: str, row: Any, root: str, allow_outside_root: bool,
               splits: dict[str, _JsonlSplit]) -> None:
    """Add one JSONL object to its split."""
    if not isinstance(row, dict):
        raise UserError(f"{name}: {where}: expected a JSON object, got {_show(row)}")
    is_question = "question" in row
    allowed = _QUESTION_KEYS if is_question else _CAPTION_KEYS
    unknown = [k for k in row if k not in allowed]
    if unknown:
        kind = "question" if is_question else "caption"
        raise UserError(f"{name}: {where}: unexpected key {unknown[0]!r} in a {kind} line "
                        f"(allowed: {', '.join(sorted(allowed))})")
    if "image" not in row:
        raise UserError(f"{name}: {where}: missing 'image'")
    image = _image_path(root, row["image"], name, where, allow_outside_root)
    image_id = parse_id(row["image_id"], name, where, "image_id") if "image_id" in row else row["image"]
    split_name = _string(name, where, row["split"], "split") if "split" in row else "all"
    split = splits.setdefault(split_name, _JsonlSplit())
    split.image(name, where, image_id, image)
    if is_question:
        split.questions.append(_jsonl_question(name, where, row, image_id, image, split))
    else:
        split.captions.setdefault(image, (image_id, []))[1].extend(_jsonl_captions(name, where, row))


def _jsonl_captions(name: str, where: str, row: dict) -> list[str]:
    if "caption" in row and "captions" in row:
        raise UserError(f"{name}: {where}: has both 'caption' and 'captions'; use one")
    if "caption" in row:
        return [_string(name, where, row["caption"], "caption")]
    captions = row.get("captions", [])
    if not isinstance(captions, list):
        raise UserError(f"{name}: {where}: 'captions' must be a list of strings, got {_show(captions)}")
    return [_string(name, where, c, "each caption") for c in captions]


def _jsonl_question(name: str, where: str, row: dict, image_id: str, image: str,
                    split: _JsonlSplit) -> VQARecord:
    question = _string(name, where, row["question"], "question")
    if "answer" in row and "answers" in row:
        raise UserError(f"{name}: {where}: has both 'answer' and 'answers'; use one")
    if "answer" in row:
        answers = [row["answer"]]
    else:
        answers = row.get("answers", [])
        if not isinstance(answers, list):
            raise UserError(f"{name}: {where}: 'answers' must be a list of strings, got {_show(answers)}")
    if not all(isinstance(a, str) for a in answers):
        raise UserError(f"{name}: {where}: answers must be strings, got {_show(answers)}")
    default_id = where.rsplit(" ", 1)[-1]  # "line 7" -> "7"
    qid = parse_id(row["question_id"], name, where, "question_id") if "question_id" in row else default_id
    if qid in split.question_ids:
        raise UserError(f"{name}: {where}: question id {show_id(qid)} appears twice in its split "
                        f"(first at {split.question_ids[qid]})")
    split.question_ids[qid] = where
    return VQARecord(qid, image_id, image, question, tuple(answers),
                     _optional_string(name, where, row.get("answer_type"), "answer_type"),
                     _optional_string(name, where, row.get("question_type"), "question_type"))


# --------------------------------------------------------------------------- folder


def read_folder(path: str | os.PathLike) -> Dataset:
    """Every image file under ``path`` (recursive) as a caption-less record, split ``all``.

    Extensions: jpg, jpeg, png, bmp, gif, webp, tif, tiff (any case). Hidden
    files and folders (names starting with ``.``) are skipped and folder links
    are not followed. Records are sorted by path; the image id is the path
    relative to ``path`` with ``/`` separators.
    """
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise UserError(f"{path}: folder not found" if not os.path.exists(root)
                        else f"{path}: is a file, expected a folder of images")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(folder, f) for f in files
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
    if not found:
        raise UserError(f"{path}: no image files ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})")
    records = [CaptionRecord(Path(os.path.relpath(p, root)).as_posix(), p, ())
               for p in sorted(found, key=lambda p: Path(os.path.relpath(p, root)).as_posix())]
    return Dataset(name=f"folder:{path}", splits={"all": Split(captions=records)},
                   info={"source": "image folder (no captions)"})
