"""Reading caption predictions and references from the formats people use.

Every reader returns an ordered ``{image_id: [caption, ...]}`` with string ids
(JSON ints and strings that spell the same id are the same image). Formats:

``coco-results``  ``[{"image_id": 1, "caption": "..."}, ...]`` (COCO results; also a
                  list of references with several entries per image)
``coco``          COCO captions annotations ``{"images": [{"id"}], "annotations":
                  [{"image_id", "caption"}]}``; image order from ``images``
``mapping``       ``{"id": "caption"}`` or ``{"id": ["ref", ...]}``
``jsonl``         one object a line: ``{"image_id" | "image" | "id": ..., "caption":
                  "..."}`` or ``... "captions": [...]}``
``karpathy``      Karpathy split JSON (``dataset_coco.json`` style): ``{"images":
                  [{"filename", "split", "sentences": [{"raw"}], "cocoid"?}]}``; the id
                  is ``cocoid`` when present, else the file name; one split is kept

Problems raise :class:`mmcli.errors.UserError` with one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

FORMATS = ("auto", "coco-results", "coco", "mapping", "jsonl", "karpathy")

Captions = dict[str, list[str]]


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, or raise a one-line UserError naming the file."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content, or a one-line UserError naming the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file")
    if p.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    return text


def read_jsonl(path: str | Path) -> list[Any]:
    """One JSON value per non-blank line."""
    rows = []
    for no, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON on line {no} ({e.msg})") from None
    return rows


def detect_format(path: str | Path, data: Any) -> str:
    """Guess the format of already-parsed ``data`` (``None`` means JSONL)."""
    if data is None:
        return "jsonl"
    if isinstance(data, list):
        return "coco-results"
    if isinstance(data, dict):
        if "annotations" in data:
            return "coco"
        images = data.get("images")
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return "karpathy"
        return "mapping"
    raise UserError(f"{path}: expected a JSON object or list of captions, got {type(data).__name__}")


def load_captions(path: str | Path, fmt: str = "auto", split: str | None = None) -> Captions:
    """Read a predictions or references file into ``{image_id: [caption, ...]}``.

    ``split`` selects the Karpathy split (default ``test``).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    data: Any = None
    if fmt != "jsonl":
        data = _load_json_or_jsonl(path) if fmt == "auto" else read_json(path)
    if fmt == "jsonl" or (fmt == "auto" and data is None):
        rows, fmt = read_jsonl(path), "jsonl"
    elif fmt == "auto":
        fmt = detect_format(path, data)
    if fmt == "jsonl":
        out = _from_rows(path, rows, "line", ("image_id", "image", "id"))
    elif fmt == "coco-results":
        out = _from_rows(path, _expect(path, data, list, "a list of {image_id, caption}"), "entry", ("image_id",))
    elif fmt == "coco":
        out = _from_coco(path, _expect(path, data, dict, "a COCO annotations object"))
    elif fmt == "karpathy":
        out = _from_karpathy(path, _expect(path, data, dict, "a Karpathy split object"), split or "test")
    else:
        out = _from_mapping(path, _expect(path, data, dict, "a mapping of id to caption(s)"))
    if not out:
        raise UserError(f"{path}: contains no captions")
    return out


def _load_json_or_jsonl(path: str | Path) -> Any:
    """Parsed JSON, or None when the file is JSONL (several values on several lines)."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and lines[0].lstrip().startswith("{"):
            try:
                json.loads(lines[0])
                return None  # first line is a complete object: JSONL
            except json.JSONDecodeError:
                pass
        raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


def _expect(path, data, typ, what):
    if not isinstance(data, typ):
        raise UserError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def _id(path, value, where) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UserError(f"{path}: {where}: image id must be a string or integer, got {value!r}")
    return str(value)


def _caption(path, value, where) -> str:
    if not isinstance(value, str):
        raise UserError(f"{path}: {where}: caption must be a string, got {type(value).__name__} {value!r:.40}")
    return value


def _from_rows(path, rows, unit, id_keys) -> Captions:
    out: Captions = {}
    for no, row in enumerate(rows, 1):
        where = f"{unit} {no}"
        if not isinstance(row, dict):
            raise UserError(f"{path}: {where}: expected an object with image_id and caption")
        key = next((k for k in id_keys if k in row), None)
        if key is None:
            raise UserError(f"{path}: {where}: missing {' or '.join(id_keys)}")
        iid = _id(path, row[key], where)
        if "caption" in row:
            caps = [_caption(path, row["caption"], where)]
        elif "captions" in row and isinstance(row["captions"], list):
            caps = [_caption(path, c, where) for c in row["captions"]]
        else:
            raise UserError(f"{path}: {where}: missing 'caption' (or a 'captions' list)")
        out.setdefault(iid, []).extend(caps)
    return out


def _from_mapping(path, data: dict) -> Captions:
    out: Captions = {}
    for iid, caps in data.items():
        where = f"image {iid}"
        if isinstance(caps, str):
            out[iid] = [caps]
        elif isinstance(caps, list):
            out[iid] = [_caption(path, c, where) for c in caps]
        else:
            raise UserError(f"{path}: {where}: expected a caption or a list of captions, got {type(caps).__name__}")
    return out


def _from_coco(path, data: dict) -> Captions:
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise UserError(f"{path}: 'annotations' must be a list")
    out: Captions = {}
    images = data.get("images")
    if isinstance(images, list):  # keep the images list's order, as pycocoevalcap does
        for no, img in enumerate(images, 1):
            if not isinstance(img, dict) or "id" not in img:
                raise UserError(f"{path}: images entry {no}: expected an object with an 'id'")
            out[_id(path, img["id"], f"images entry {no}")] = []
    declared = set(out) if isinstance(images, list) else None
    for iid, caps in _from_rows(path, anns, "annotation", ("image_id",)).items():
        if declared is not None and iid not in declared:
            raise UserError(f"{path}: annotation for image {iid}, which is not in the 'images' list")
        out.setdefault(iid, []).extend(caps)
    return out


def _from_karpathy(path, data: dict, split: str) -> Captions:
    out: Captions = {}
    splits = set()
    for no, img in enumerate(data["images"], 1):
        where = f"images entry {no}"
        if not isinstance(img, dict) or not isinstance(img.get("sentences"), list):
            raise UserError(f"{path}: {where}: expected an object with a 'sentences' list")
        splits.add(str(img.get("split")))
        if img.get("split") != split:
            continue
        iid = img.get("cocoid", img.get("filename"))
        if iid is None:
            raise UserError(f"{path}: {where}: needs 'cocoid' or 'filename'")
        caps = []
        for s in img["sentences"]:
            if not isinstance(s, dict) or ("raw" not in s and "tokens" not in s):
                raise UserError(f"{path}: {where}: each sentence needs 'raw' (or 'tokens')")
            caps.append(_caption(path, s["raw"], where) if "raw" in s else " ".join(s["tokens"]))
        out[_id(path, iid, where)] = caps
    if not out:
        raise UserError(f"{path}: no images in split {split!r} (splits present: {', '.join(sorted(splits))})")
    return out
