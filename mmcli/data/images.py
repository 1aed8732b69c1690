"""Image loading, preprocessing transforms and a decoded-image cache.

* :func:`load_image` turns any image file into an RGB ``PIL.Image`` (EXIF
  rotation applied, alpha composited on white, 16-bit scaled to 8 bits) or
  raises :class:`BadImage`, one line naming the file and the problem.
* :class:`ImageSkipper` is how training and batch inference survive bad files:
  warn once per file, count, summarise; ``strict=True`` re-raises instead.
* :func:`make_transform` builds the tensor transform from a backbone's data
  config (the dict ``timm.data.resolve_data_config`` returns). timm itself is
  imported only by the model's vision adapter, never here.
* :class:`ImageCache` decodes a dataset's images once into one memory-mapped
  ``.npy`` file, so small-image datasets are not bound by JPEG decoding;
  training (``--image-cache``) keeps one per dataset and size under
  :func:`cache_root` (:func:`dataset_cache_dir`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from ..fileio import atomic_write_text

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 50_000_000
"""Images whose header claims more pixels than this are refused before decoding.

Checked by :func:`load_image` on its own, whatever ``PIL.Image.MAX_IMAGE_PIXELS``
says (PIL's global is never changed). PIL still refuses images over twice its
own limit when opening them; those are reported as too many pixels as well.
"""

MAX_ASPECT = 8
"""Before resizing, an image whose long side is more than this many times its short side is
center-cropped to that ratio (:func:`limit_aspect`). The eval transform keeps only the middle of
the long side, which the crop keeps whole; without it, resizing the short side of a 1 x 100,000
image would first make a 73 x 7,300,000 image (minutes of work, gigabytes, for a 64 px crop).
Images up to this ratio are transformed exactly as before."""

_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_WARNINGS_LOCK = threading.Lock()  # catch_warnings is not thread-safe; the cache decodes in threads


class BadImage(UserError):
    """An image file that cannot be used: ``str(e)`` is ``'<path>: <problem>'``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(str(path), problem)  # both in args, so the error pickles
        self.path, self.problem = str(path), " ".join(problem.split())

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# ----------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read ``path`` fully into an RGB image, or raise :class:`BadImage`.

    ``max_pixels`` defaults to the module's :data:`MAX_PIXELS` (read at call time).
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise BadImage(path, "empty file (0 bytes)")
            img = _decode(f, path, limit)
    except FileNotFoundError:
        raise BadImage(path, "no such file") from None
    except IsADirectoryError:
        raise BadImage(path, "is a directory, expected an image file") from None
    except PermissionError:
        raise BadImage(path, "cannot read the file (permission denied)") from None
    except OSError as e:  # a failing disk or network share; PIL's errors are handled in _decode
        raise BadImage(path, f"cannot read the file ({e.strerror or e})") from None
    except ValueError:  # open() refuses a path with a NUL byte in it
        raise BadImage(repr(str(path)), "not a valid file path (it contains a NUL byte)") from None
    return _to_rgb(img, path)


def _decode(f, path, limit: int) -> Image.Image:
    with _WARNINGS_LOCK, warnings.catch_warnings():  # our own limit below decides, not PIL's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(f)  # reads the header only
        except Image.DecompressionBombError as e:
            raise BadImage(path, f"too many pixels ({e})") from None
        except UnidentifiedImageError:
            raise BadImage(path, "not an image (unknown or unsupported format)") from None
        except Exception as e:  # PIL raises many types on a malformed header
            raise BadImage(path, f"not an image or a corrupt header ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > limit:
        raise BadImage(path, f"too many pixels: {w}x{h} is over the limit of {limit:,}")
    try:
        img.load()  # decode everything now, so a truncated file fails here, not in a worker later
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:  # OSError, SyntaxError, ValueError, EOFError, struct.error...
        msg = str(e)
        problem = "truncated file (the image data ends early)" if "truncated" in msg else f"corrupt image data ({msg})"
        raise BadImage(path, problem) from None
    return img


def _to_rgb(img: Image.Image, path) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparent pixels become white."""
    if img.mode.startswith("I") or img.mode == "F":
        img = Image.fromarray(_to_uint8(np.asarray(img), img.mode), "L")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")  # applies a palette's or a colour key's transparency
        return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV
    except ValueError:
        raise BadImage(path, f"unsupported colour mode {img.mode}") from None


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float greyscale to 0..255 (never by clipping 16-bit data).

    Integer modes (I;16*, I) are taken as 16-bit, 0..65535. Float (F) is taken as
    0..1 when all its values lie there, else as 0..255.
    """
    a = np.nan_to_num(a.astype(np.float64))
    if mode == "F":
        scale = 255.0 if a.size and a.min() >= 0 and a.max() <= 1 else 1.0
        a = a * scale
    else:
        a = np.clip(a, 0, 65535) / 257.0  # 65535 / 257 == 255 exactly
    return np.rint(np.clip(a, 0, 255)).astype(np.uint8)


class ImageSkipper:
    """Turn :class:`BadImage` into one warning line and a count (``strict``: re-raise).

    >>> skipper = ImageSkipper()
    >>> img = skipper.load("x.jpg")   # None, and a warning on stderr, if x.jpg is bad
    """

    def __init__(self, strict: bool = False, quiet: bool = False):
        self.strict, self.quiet = strict, quiet  # quiet: record without the warning line
        self.skipped: list[tuple[str, str]] = []  # (path, problem), one entry per file
        self._seen: set[str] = set()

    def load(self, path: str | os.PathLike) -> Image.Image | None:
        try:
            return load_image(path)
        except BadImage as e:
            self.skip(e)
            return None

    def skip(self, err: BadImage) -> None:
        """Record and warn about ``err`` (raised by any loader), or re-raise it when strict."""
        if self.strict:
            raise err
        self.record(err.path, err.problem)

    def record(self, path: str, problem: str) -> None:
        """Record a bad image found elsewhere (e.g. in a DataLoader worker): one warning per
        file, however often it comes back (every epoch); strict: a BadImage error."""
        if self.strict:
            raise BadImage(path, f"{problem} (--strict stops at bad images)")
        if path in self._seen:
            return
        self._seen.add(path)
        self.skipped.append((path, problem))
        if not self.quiet:
            print(f"mmcli: warning: skipping {path}: {problem}", file=sys.stderr)

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str | None:
        """One line for the end of a run, or None when nothing was skipped."""
        if not self.skipped:
            return None
        n = self.count
        return f"mmcli: warning: skipped {n} bad image{'s' * (n != 1)} (first: {self.skipped[0][0]})"


# ----------------------------------------------------------------------------- transforms


def make_transform(data_config: dict, train: bool = False,
                   augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised float tensor (3, H, W), from a backbone's data config.

    Evaluation (and ``train`` with ``augment="none"``) is timm's eval transform:
    resize the shorter side to ``size / crop_pct`` and center-crop ``size``
    (``crop_mode="squash"``: resize both sides, ignoring the aspect ratio).
    ``augment="light"`` (training only) is a RandomResizedCrop of 50-100% of the
    area plus a horizontal flip. The flip swaps left and right, so it makes
    "what is left of the circle?" questions and captions saying "on the left"
    wrong: the caller chooses whether its task can afford it.
    """
    import torch
    from torchvision.transforms import InterpolationMode, v2

    if augment not in ("none", "light"):
        raise UserError(f"augment {augment!r}: unknown, expected 'none' or 'light'")
    _, h, w = data_config["input_size"]
    interp = InterpolationMode(data_config.get("interpolation", "bilinear"))
    if train and augment == "light":  # (crops of about the output's aspect ratio: nothing huge is made)
        head = [v2.RandomResizedCrop((h, w), scale=(0.5, 1.0), interpolation=interp), v2.RandomHorizontalFlip()]
    else:
        crop_pct = data_config.get("crop_pct") or 0.875
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        mode = data_config.get("crop_mode") or "center"
        if mode == "squash":
            head = [v2.Resize(scale, interpolation=interp)]
        elif mode != "center":
            raise ValueError(f"crop_mode {mode!r} is not supported (only 'center' and 'squash')")
        elif scale[0] == scale[1]:
            head = [limit_aspect, v2.Resize(scale[0], interpolation=interp)]  # shorter side, as timm does
        else:
            head = [limit_aspect, _CoverResize(scale, interp)]
        head.append(v2.CenterCrop((h, w)))
    return v2.Compose([
        *head,
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),  # uint8 0..255 -> float 0..1
        v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
        v2.ToPureTensor(),
    ])


class _CoverResize:
    """Keep the aspect ratio and scale the image just enough to cover (h, w) (timm's ResizeKeepRatio)."""

    def __init__(self, size: tuple[int, int], interp):
        self.size, self.interp = size, interp

    def __call__(self, img: Image.Image) -> Image.Image:
        from torchvision.transforms.v2 import functional as F

        ratio = min(img.height / self.size[0], img.width / self.size[1])
        return F.resize(img, [round(img.height / ratio), round(img.width / ratio)], interpolation=self.interp)


def cache_size(data_config: dict) -> int:
    """The :class:`ImageCache` side that makes the eval transform's resize a no-op (256 for 224 at 0.875)."""
    _, h, w = data_config["input_size"]
    return math.floor(min(h, w) / (data_config.get("crop_pct") or 0.875))


def limit_aspect(img, ratio: int = MAX_ASPECT):
    """The middle of a PIL image whose long side is over ``ratio`` times its short side, cropped
    to that ratio (see :data:`MAX_ASPECT`); any other image (or a tensor) as it is."""
    if not isinstance(img, Image.Image):
        return img
    w, h = img.size
    if max(w, h) <= ratio * min(w, h):
        return img
    if w > h:
        left = (w - ratio * h) // 2
        return img.crop((left, 0, left + ratio * h, h))
    top = (h - ratio * w) // 2
    return img.crop((0, top, w, top + ratio * w))


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic), then crop the central ``size`` x ``size``."""
    img = limit_aspect(img)
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# ----------------------------------------------------------------------------- cache

PROGRESS_MIN_IMAGES = 500  # fewer images build in about a second: no progress bar


def cache_root() -> Path:
    """Where mmcli keeps what it derives from data (the shapes images, image caches):
    ``$MMCLI_CACHE``, else ``~/.cache/mmcli``."""
    return Path(os.environ.get("MMCLI_CACHE") or "~/.cache/mmcli").expanduser()


def dataset_cache_dir(spec: str, paths: list[str], size: int) -> Path:
    """The directory of a dataset's :class:`ImageCache`: ``<cache_root>/images-<spec>-<size>px-<hash>``,
    the spec made safe for a file name and the hash over the sorted absolute image paths (so two
    specs, or one relative spec read from two folders, that name other images never share one)."""
    import hashlib
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.")[:48] or "data"
    digest = hashlib.sha256("\n".join(sorted(os.path.abspath(p) for p in paths)).encode()).hexdigest()[:12]
    return cache_root() / f"images-{slug}-{size}px-{digest}"


def _file_key(path: str) -> list | None:
    """What identifies a file's content cheaply: modification time and size (None if missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class FileRowsCache:
    """What the image cache and the feature cache share: one row per file of a memory-mapped array
    (``ARRAY``), and an ``index.json`` with the files' paths, a content key per file and the unreadable
    ones, written last: a directory without it is a half-built cache. ``WHAT`` names the kind in errors."""

    ARRAY, INDEX, WHAT = "rows.npy", "index.json", "cache"

    def __init__(self, index: dict, out: Path):
        self.out = out
        self.paths: list[str] = index["paths"]
        self.keys: list = index["keys"]
        self.bad: dict[int, str] = {int(i): reason for i, reason in index["bad"]}

    def __len__(self) -> int:
        return len(self.paths)

    def _check_row(self, i: int) -> int:
        """``i``, or the :class:`BadImage` of row ``i`` raised again."""
        if i in self.bad:
            raise BadImage(self.paths[i], self.bad[i])
        return i

    def holds_files(self, paths: list[str]) -> bool:
        """True when the cache holds exactly ``paths``, in that order, none changed since it was built."""
        paths = [str(p) for p in paths]
        return paths == self.paths and all(_file_key(p) == k for p, k in zip(paths, self.keys))

    @classmethod
    def _read(cls, out: Path) -> tuple[dict, np.ndarray]:
        """The index and the memory-mapped array of the cache in ``out``; a UserError when there is none,
        a half-built or a broken one."""
        if not (out / cls.INDEX).is_file():
            article = "an" if cls.WHAT[0] in "aeiou" else "a"
            raise UserError(f"{out}: not {article} {cls.WHAT} or a half-built one ({cls.INDEX} is missing); "
                            "build it again")
        try:
            index = json.loads((out / cls.INDEX).read_text(encoding="utf-8"))
            # allow_pickle=False: a planted pickle is refused, never run
            return index, np.load(out / cls.ARRAY, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"{out}: broken {cls.WHAT} ({e}); build it again") from None

    @classmethod
    def _start_build(cls, out: Path, paths: list[str]) -> tuple[list, Path]:
        """Mark ``out`` half-built (no index) and take the files' content keys before reading them (a
        file changed meanwhile will not match later); the temporary file the array is written to."""
        out.mkdir(parents=True, exist_ok=True)
        (out / cls.INDEX).unlink(missing_ok=True)
        return [_file_key(p) for p in paths], out / f".{cls.ARRAY}.{os.getpid()}.tmp"


class ImageCache(FileRowsCache):
    """Decoded images, ``size`` x ``size`` uint8 RGB, in one memory-mapped ``.npy`` file.

    A cache is a directory: ``pixels.npy`` (N, size, size, 3) and ``index.json``
    (the paths, a content key per file, the bad images). The index is written
    last, so a directory without it is a half-built cache and :meth:`open`
    refuses it. Bad images keep an all-zero row; :meth:`get` raises their
    :class:`BadImage` again, and :attr:`bad` lists them.
    """

    ARRAY, WHAT = "pixels.npy", "image cache"

    def __init__(self, pixels: np.ndarray, index: dict, out: Path):
        super().__init__(index, out)
        self.pixels = pixels
        self.size: int = index["size"]

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only (size, size, 3) uint8 array, or :class:`BadImage`."""
        return self.pixels[self._check_row(i)]

    def get(self, i: int) -> Image.Image:
        """Image ``i`` as an RGB PIL image, or :class:`BadImage`."""
        return Image.fromarray(np.array(self.array(i)), "RGB")

    def is_valid_for(self, paths: list[str], size: int | None = None) -> bool:
        """True when the cache holds exactly ``paths`` (same order, files unchanged) at ``size``."""
        return (size is None or size == self.size) and self.holds_files(paths)

    @classmethod
    def open(cls, out: str | os.PathLike) -> "ImageCache":
        out = Path(out)
        index, pixels = cls._read(out)
        if pixels.shape != (len(index["paths"]), index["size"], index["size"], 3) or pixels.dtype != np.uint8:
            raise UserError(f"{out}: broken image cache ({cls.ARRAY} has shape {pixels.shape}, "
                            f"the index says {len(index['paths'])} images of {index['size']}); build it again")
        return cls(pixels, index, out)

    @classmethod
    def build(cls, paths: list[str], size: int, out: str | os.PathLike, skipper: ImageSkipper | None = None,
              progress: bool = True, workers: int | None = None) -> "ImageCache":
        """Decode ``paths`` (bad ones go through ``skipper``) into a new cache in directory ``out``.

        A strict skipper stops the build at the first bad image and leaves no cache.
        """
        out, paths = Path(out), [str(p) for p in paths]
        skipper = skipper or ImageSkipper()
        keys, tmp = cls._start_build(out, paths)
        bad: list[tuple[int, str]] = []
        decoded = _decode_all(paths, size, progress, workers)
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
            for i, result in enumerate(decoded):
                if isinstance(result, BadImage):
                    skipper.skip(result)  # re-raises when strict
                    bad.append((i, result.problem))
                else:
                    arr[i] = result
            arr.flush()
            del arr  # close the memory map before renaming (needed on Windows)
            os.replace(tmp, out / cls.ARRAY)
        except BaseException:
            decoded.close()
            tmp.unlink(missing_ok=True)
            raise
        index = {"version": 1, "size": size, "paths": paths, "keys": keys, "bad": bad}
        atomic_write_text(out / cls.INDEX, json.dumps(index))
        return cls.open(out)

    @classmethod
    def open_or_build(cls, paths: list[str], size: int, out: str | os.PathLike, **build_kwargs) -> "ImageCache":
        """Reuse the cache in ``out`` when it is complete and matches ``paths`` and ``size``, else rebuild it."""
        try:
            cache = cls.open(out)
            if cache.is_valid_for(paths, size):
                return cache
        except UserError:
            pass
        return cls.build(paths, size, out, **build_kwargs)


def _load_resized(path: str, size: int) -> np.ndarray | BadImage:
    try:
        return np.asarray(resize_center_crop(load_image(path), size))
    except BadImage as e:
        return e


def _decode_all(paths: list[str], size: int, progress: bool, workers: int | None):
    """Yield each path's resized pixels or its BadImage, in order; PIL decodes outside the GIL, so threads help."""
    pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))
    try:
        results = pool.map(_load_resized, paths, [size] * len(paths))
        if not (progress and len(paths) >= PROGRESS_MIN_IMAGES):
            yield from results
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed or 0:.0f} img/s")

        with Progress("caching images", BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn()) as bar:
            task = bar.add_task("cache", total=len(paths))
            for r in results:
                yield r
                bar.advance(task)
    finally:
        pool.shutdown(cancel_futures=True)  # a strict skipper stopped us: don't decode the rest


def load_images_or_skip(paths, strict: bool = False) -> tuple[list[int], list[Image.Image]]:
    """Load each path: (the positions in ``paths`` that loaded, their images). An unreadable file
    is warned about on stderr and skipped, or with ``strict`` raised as one UserError line."""
    import sys

    from ..errors import UserError

    ok, pics = [], []
    for k, p in enumerate(paths):
        try:
            pics.append(load_image(p))
            ok.append(k)
        except BadImage as e:
            if strict:
                raise UserError(f"{e} (--strict)") from None
            print(f"mmcli: warning: skipping {e}", file=sys.stderr)
    return ok, pics
