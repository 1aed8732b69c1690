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

from pathlib import Path
from typing import Any

from ..errors import UserError, examples
from .jsonio import located_items, parse_id, read_json_or_jsonl, show_id

FORMATS = ("auto", "coco-results", "coco", "mapping", "jsonl", "karpathy")

Captions = dict[str, list[str]]


def detect_format(path: str | Path, data: Any) -> str:
    """Guess the format of an already-parsed JSON document."""
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
    data, where = read_json_or_jsonl(path)
    if fmt == "auto":
        fmt = "jsonl" if where is not None else detect_format(path, data)
    if fmt == "jsonl":
        rows = data if where is not None else [data]  # a one-line JSONL file parses as one object
        out = _from_rows(path, rows, where or ["line 1"], ("image_id", "image", "id"))
    elif where is not None:
        raise UserError(f"{path}: is JSONL (one object per line), but --format {fmt} expects one JSON document")
    elif fmt == "coco-results":
        rows = _expect(path, data, list, "a list of {image_id, caption}")
        out = _from_rows(path, rows, None, ("image_id",))
    elif fmt == "coco":
        out = _from_coco(path, _expect(path, data, dict, "a COCO annotations object"))
    elif fmt == "karpathy":
        out = _from_karpathy(path, _expect(path, data, dict, "a Karpathy split object"), split or "test")
    else:
        out = _from_mapping(path, _expect(path, data, dict, "a mapping of id to caption(s)"))
    if not out:
        raise UserError(f"{path}: contains no captions")
    return out


def _expect(path, data, typ, what):
    if not isinstance(data, typ):
        raise UserError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    return data


def _caption(path, value, where) -> str:
    if not isinstance(value, str):
        raise UserError(f"{path}: {where}: caption must be a string, got {type(value).__name__} {value!r:.40}")
    return value


def _from_rows(path, rows, where_list, id_keys) -> Captions:
    """Rows of ``{id_key: ..., "caption": ...}`` (or ``"captions": [...]``)."""
    out: Captions = {}
    for where, row in located_items(rows, where_list):
        if not isinstance(row, dict):
            raise UserError(f"{path}: {where}: expected an object with image_id and caption")
        key = next((k for k in id_keys if k in row), None)
        if key is None:
            raise UserError(f"{path}: {where}: missing {' or '.join(id_keys)}")
        iid = parse_id(row[key], path, where, key)
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
        where = f"image {show_id(iid)}"
        caps = caps if isinstance(caps, list) else [caps]
        out[iid] = [_caption(path, c, where) for c in caps]
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
            out[parse_id(img["id"], path, f"images entry {no}", "id")] = []
    declared = set(out) if isinstance(images, list) else None
    for iid, caps in _from_rows(path, anns, [f"annotation {k}" for k in range(1, len(anns) + 1)], ("image_id",)).items():
        if declared is not None and iid not in declared:
            raise UserError(f"{path}: annotation for image {show_id(iid)}, which is not in the 'images' list")
        out.setdefault(iid, []).extend(caps)
    return out


def _from_karpathy(path, data: dict, split: str) -> Captions:
    out: Captions = {}
    splits = set()
    images = data.get("images")
    if not isinstance(images, list):
        raise UserError(f"{path}: 'images' must be a list of Karpathy image entries")
    for no, img in enumerate(images, 1):
        where = f"images entry {no}"
        if not isinstance(img, dict) or not isinstance(img.get("sentences"), list):
            raise UserError(f"{path}: {where}: expected an object with a 'sentences' list")
        splits.add(str(img.get("split"))[:40])
        if img.get("split") != split:
            continue
        iid = img.get("cocoid", img.get("filename"))
        if iid is None:
            raise UserError(f"{path}: {where}: needs 'cocoid' or 'filename'")
        caps = []
        for s in img["sentences"]:
            tokens = s.get("tokens") if isinstance(s, dict) else None
            if isinstance(s, dict) and "raw" in s:
                caps.append(_caption(path, s["raw"], where))
            elif isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                caps.append(" ".join(tokens))
            else:
                raise UserError(f"{path}: {where}: each sentence needs 'raw' (or a 'tokens' list of strings)")
        out[parse_id(iid, path, where, "image id")] = caps
    if not out:
        # (the split names are the file's: show_id escapes any control character in them)
        raise UserError(f"{path}: no images in split {split!r} "
                        f"(splits present: {examples(sorted(splits), 8, show_id)})")
    return out
