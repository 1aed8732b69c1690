"""Reading the JSON and JSONL files users give to ``mmcli score``.

Every problem (missing file, directory, not UTF-8, empty, invalid JSON, a key
repeated inside one object) becomes a one-line :class:`UserError` naming the
file, so no reader lets a traceback through.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content (a BOM is dropped); never empty."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, expected a JSON or JSONL file") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{name}: not UTF-8 text (bad byte at offset {e.start})") from None
    if not text.strip():
        raise UserError(f"{name}: file is empty")
    return text


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:  # the decoder recurses once per level of [ or {
        raise ValueError("arrays or objects nested too deeply") from None


def _json_error(name: str, e: ValueError, line: int | None = None) -> UserError:
    if isinstance(e, _DuplicateKey):
        where = "" if line is None else f" at line {line}"
        return UserError(f"{name}: invalid data{where}: {e}")
    if isinstance(e, json.JSONDecodeError):
        lineno = e.lineno if line is None else line
        return UserError(f"{name}: invalid JSON at line {lineno} column {e.colno} ({e.msg})")
    where = "" if line is None else f" at line {line}"
    return UserError(f"{name}: invalid JSON{where} ({e})")


def _parse_jsonl(text: str, name: str) -> tuple[list[Any], list[str]]:
    records, where = [], []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(_loads(line))
        except ValueError as e:
            raise _json_error(name, e, lineno) from None
        where.append(f"line {lineno}")
    return records, where


def _looks_like_jsonl(text: str) -> bool:
    first = next(line for line in text.split("\n") if line.strip())
    try:
        return isinstance(_loads(first), dict)
    except ValueError:
        return False


def read_json_or_jsonl(path: str | Path) -> tuple[Any, list[str] | None]:
    """Parse a JSON file, or JSONL (``.jsonl``/``.ndjson``, or several JSON objects
    one per line). Returns ``(data, where)``: for JSONL ``data`` is the list of
    line values and ``where`` names their lines (``"line 3"``); for JSON ``where``
    is None. Every problem is a one-line :class:`UserError` naming the file."""
    name = str(path)
    text = read_text(path)
    if Path(path).suffix.lower() in (".jsonl", ".ndjson"):
        return _parse_jsonl(text, name)
    try:
        return _loads(text), None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _looks_like_jsonl(text):
            return _parse_jsonl(text, name)
        raise _json_error(name, e) from None
    except ValueError as e:
        raise _json_error(name, e) from None


def located_items(data: list[Any], where: list[str] | None) -> list[tuple[str, Any]]:
    """Pair each list item with where it came from (``line N`` or ``entry N``)."""
    names = where if where is not None else [f"entry {i}" for i in range(1, len(data) + 1)]
    return list(zip(names, data))


def show_id(value: str) -> str:
    """An id (or name) from a file for a one-line message: as written when it is
    plain printable text, else quoted with escapes (a newline in an id must not
    break the message)."""
    return value if value and value.isprintable() and value.strip() == value else repr(value)


def parse_id(value: Any, name: str, where: str, field: str) -> str:
    """An id from a file (int or string) as a string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UserError(f"{name}: {where}: {field} must be an integer or a string, "
                        f"got {json.dumps(value)[:40]}")
    return str(value)
