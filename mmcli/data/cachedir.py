"""What mmcli keeps under its cache folder, and removing it: ``mmcli data cache``.

The cache folder (:func:`mmcli.data.images.cache_root`: ``$MMCLI_CACHE``, else ``~/.cache/mmcli``)
holds three kinds of entries, each a directory named by what it was made from:

* ``features-<spec>-<hash>``: a frozen backbone's features (``--feature-cache``), one per dataset and
  backbone state: a run from another ``--init``, or a backbone trained further, makes a new one;
* ``images-<spec>-<size>px-<hash>``: decoded, resized images (``--image-cache``);
* ``shapes-n<N>-s<SIZE>-seed<S>``: the rendered images of the built-in shapes set.

An entry's modification time is when it was last built or reused: the trainer touches a cache
directory when it reuses it (:func:`touch`), so ``--unused-days`` finds the ones no run has read
lately. Only directories of these three kinds are ever removed; anything else in the folder is
listed as not mmcli's and left alone. A removal first renames the entry to a hidden name, so a
half-removed cache is never taken for a built one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .images import FileRowsCache

KINDS = {"features-": ("features", FileRowsCache.INDEX), "images-": ("images", FileRowsCache.INDEX),
         "shapes-": ("shapes", "manifest.json")}  # name prefix -> (kind, the file a complete entry has)


@dataclass
class CacheEntry:
    name: str
    path: Path
    kind: str  # features | images | shapes | other (not mmcli's: never removed)
    complete: bool  # the entry's index or manifest is there (else a build was cut short)
    images: int | None  # images it holds, from its index or manifest
    bytes: int
    used: float  # modification time: last built or reused (seconds since the epoch)

    @property
    def removable(self) -> bool:
        return self.kind != "other"

    def as_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "kind": self.kind, "complete": self.complete,
                "images": self.images, "bytes": self.bytes, "used": self.used}


def list_caches(root: Path) -> list[CacheEntry]:
    """The entries of ``root``, by name (hidden ones, such as a removal in progress, left out)."""
    try:
        children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []
    return [_entry(p) for p in children]


def _entry(path: Path) -> CacheEntry:
    kind, marker = next((v for prefix, v in KINDS.items() if path.name.startswith(prefix)), ("other", None))
    if not path.is_dir():
        kind, marker = "other", None
    complete, images = False, None
    if marker is not None:
        try:
            info = json.loads((path / marker).read_text(encoding="utf-8"))
            complete = True
            images = info["n_images"] if kind == "shapes" else len(info["paths"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        used = path.stat().st_mtime
    except OSError:
        used = 0.0
    return CacheEntry(path.name, path, kind, complete, images, _size(path), used)


def _size(path: Path) -> int:
    """Bytes on disk of a file or directory tree (allocated blocks: a sparse file counts what it uses)."""
    total = 0
    for p in [path] if not path.is_dir() else path.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def select(entries: list[CacheEntry], patterns: list[str], unused_days: float | None,
           now: float | None = None) -> list[CacheEntry]:
    """The removable entries whose name matches one of ``patterns`` (shell globs; none: every entry)
    and, with ``unused_days``, that no run has built or reused for that many days."""
    now = time.time() if now is None else now
    picked = []
    for e in entries:
        if not e.removable or (patterns and not any(fnmatch.fnmatchcase(e.name, p) for p in patterns)):
            continue
        if unused_days is not None and now - e.used < unused_days * 86400:
            continue
        picked.append(e)
    return picked


def remove(entry: CacheEntry) -> None:
    """Delete one entry: renamed to a hidden name first (atomic), then deleted."""
    if not entry.removable:
        raise ValueError(f"{entry.path} is not an mmcli cache")
    hidden = entry.path.with_name(f".removing-{entry.name}-{os.getpid()}")
    os.replace(entry.path, hidden)
    shutil.rmtree(hidden)


def touch(path: Path) -> None:
    """Mark a cache directory as just used (its modification time); a read-only cache stays as it is."""
    try:
        os.utime(path)
    except OSError:
        pass


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def human_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, seconds) / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"
