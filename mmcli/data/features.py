"""A frozen backbone's features of every image of a dataset, computed once and memory-mapped.

With a frozen backbone (``--freeze-backbone``) the image tower's expensive part gives the same
output for an image every time it is shown under the eval transform, so ``--feature-cache``
runs it once per image and stores its tokens: training then reads (N, C) tokens instead of
decoding and encoding the image, every epoch and every later run with the same backbone weights.

A cache is a directory under ``$MMCLI_CACHE``: ``features.npy`` (images, N, C) holding bfloat16
values (stored as their uint16 bit patterns: bf16 keeps fp32's range, which fp16 does not, at half
the size of fp32) and ``index.json`` (the paths, a content key per file, the bad images, the
fingerprint), written last: a directory without it is half-built and is rebuilt. Its name carries
a hash over the image paths and the fingerprint (the backbone's weights, its preprocessing and
the build precision), so another backbone never reads this one's features.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..fileio import atomic_write_text
from .images import PROGRESS_MIN_IMAGES, BadImage, FileRowsCache, ImageSkipper, cache_root


def backbone_fingerprint(backbone: torch.nn.Module, extra: dict) -> str:
    """A hash of every weight and buffer of ``backbone`` (names, shapes, values) and of ``extra``
    (preprocessing, precision): what the cached features depend on besides the images."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for name, t in sorted(backbone.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def feature_cache_dir(spec: str, paths: list[str], fingerprint: str) -> Path:
    """``<cache_root>/features-<spec>-<hash>``, the hash over the sorted absolute paths and the fingerprint."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.")[:48] or "data"
    key = "\n".join(sorted(os.path.abspath(p) for p in paths)) + "\n" + fingerprint
    return cache_root() / f"features-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class FeatureCache(FileRowsCache):
    """The tokens (N, C) of each image, from a memory-mapped ``features.npy``; :meth:`get` gives one
    as an fp32 tensor, or raises the image's :class:`BadImage` again."""

    ARRAY, WHAT = "features.npy", "feature cache"

    def __init__(self, features: np.ndarray, index: dict, out: Path):
        super().__init__(index, out)
        self.features = features
        self.fingerprint: str = index["fingerprint"]
        self._row = {p: i for i, p in enumerate(self.paths)}

    def get(self, path: str) -> torch.Tensor:
        """The (N, C) fp32 tokens of ``path``; KeyError when it is not cached."""
        i = self._check_row(self._row[path])
        return torch.from_numpy(np.array(self.features[i])).view(torch.bfloat16).float()

    def is_valid_for(self, paths: list[str], fingerprint: str) -> bool:
        return fingerprint == self.fingerprint and self.holds_files(paths)

    @classmethod
    def open(cls, out: str | os.PathLike) -> "FeatureCache":
        out = Path(out)
        index, features = cls._read(out)
        try:
            shape = (len(index["paths"]), *index["shape"])
        except (KeyError, TypeError) as e:
            raise UserError(f"{out}: broken feature cache ({e}); build it again") from None
        if features.shape != shape or features.dtype != np.uint16:
            raise UserError(f"{out}: broken feature cache ({cls.ARRAY} is {features.dtype} {features.shape}, "
                            f"the index says {shape}); build it again")
        return cls(features, index, out)

    @classmethod
    def build(cls, paths: list[str], encode: Callable[[torch.Tensor], torch.Tensor], load: Callable[[str], torch.Tensor],
              out: str | os.PathLike, fingerprint: str, skipper: ImageSkipper | None = None,
              batch_size: int = 64) -> "FeatureCache":
        """Run ``encode`` ((B, 3, H, W) -> (B, N, C)) over every image ``load``-ed from ``paths`` and store the
        tokens in a new cache in ``out``; a bad image goes through ``skipper`` (re-raised when strict)."""
        out, paths = Path(out), [str(p) for p in paths]
        skipper = skipper or ImageSkipper()
        keys, tmp = cls._start_build(out, paths)
        bad: list[tuple[int, str]] = []
        arr = None
        try:
            for start, tokens, rows in _encoded(paths, encode, load, batch_size, (skipper, bad)):
                if arr is None:
                    shape = (len(paths), *tokens.shape[1:])
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=shape)
                bits = tokens.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                arr[[start + r for r in rows]] = bits
            if arr is None:
                raise UserError(f"no readable image to cache features of ({len(paths)} unreadable)")
            arr.flush()
            shape = list(arr.shape[1:])
            del arr  # close the memory map before renaming (needed on Windows)
            os.replace(tmp, out / cls.ARRAY)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        index = {"version": 1, "shape": shape, "fingerprint": fingerprint, "paths": paths, "keys": keys, "bad": bad}
        atomic_write_text(out / cls.INDEX, json.dumps(index))
        return cls.open(out)


def _encoded(paths, encode, load, batch_size: int, bad_sink):
    """Yield (first index, (b, N, C) fp32 tokens, the rows of the batch that loaded) per batch of
    ``paths``, with a progress bar on a terminal for a large set."""
    skipper, bad = bad_sink
    bar = None
    if len(paths) >= PROGRESS_MIN_IMAGES:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("caching backbone features", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        task = bar.add_task("features", total=len(paths))
        bar.start()
    try:
        for start in range(0, len(paths), batch_size):
            images, rows = [], []
            for r, p in enumerate(paths[start : start + batch_size]):
                try:
                    images.append(load(p))
                    rows.append(r)
                except BadImage as e:
                    skipper.skip(e)  # re-raises when strict
                    bad.append((start + r, e.problem))
            if images:
                with torch.no_grad():
                    yield start, encode(torch.stack(images)).float().cpu(), rows
            if bar is not None:
                bar.advance(task, len(paths[start : start + batch_size]))
    finally:
        if bar is not None:
            bar.stop()


class FeatureSource:
    """Path -> the cached (N, C) backbone tokens: stands in for an ``ImageSource`` in the datasets, so a
    batch's ``images`` holds tokens, which :class:`~mmcli.model.vision.VisionTower` takes as they are."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def __call__(self, path: str) -> torch.Tensor:
        return self.cache.get(path)
