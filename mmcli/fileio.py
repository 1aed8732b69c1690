"""Atomic file output: a result file is either the old one or the complete new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    An interruption or a full disk leaves any earlier ``path`` untouched and no
    partial file behind.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: is a directory, expected a file to write")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: cannot write, folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        os.unlink(tmp)
        raise
