"""The synthetic ``shapes`` dataset: coloured shapes on a plain background, with
captions and questions that are true by construction.

Each image holds 1 to 4 shapes (circle, square, triangle, diamond, star) in 6
colours and 2 sizes, placed without overlap; no two shapes share both colour
and kind, so "the red circle" always names one shape. Per image:

* 5 captions, each worded differently: a counted list ("two shapes: a large
  red circle and a small blue star"), a spatial relation ("a red circle left
  of a blue star"), a plain list, shapes with their place in the picture, and
  a summary by kind and colour;
* questions of five kinds (``question_type``), each with ``answer_type``:
  ``count`` (number: "how many shapes are there?" -> "2"), ``color`` (color:
  "what color is the circle?"), ``shape`` (shape: "what shape is red?"),
  ``exist`` (yes/no: "is there a triangle?", half of them "no"), and
  ``position`` (yes/no: "is the red circle left of the blue star?", or other:
  "what is left of the blue star?" -> "red circle").

Everything is a function of ``(seed, image index)``: image ``i`` has its own
random stream, seeded with ``seed * 2**32 + i`` (not ``seed + i``, which would
make seed 1 the images of seed 0 shifted by one), so it is the same whatever
``n_images`` is; scenes are drawn in unit coordinates, so they do not depend
on ``size`` either. Splits are fixed by index: ``i % 10`` in 0-7 train, 8 val,
9 test.

Images are cached as PNG under ``<cache>/shapes-n{N}-s{size}-seed{seed}/images/``
(``cache_dir``, else ``$MMCLI_CACHE``, else ``~/.cache/mmcli``). Each PNG is
written to a temporary name and renamed, and ``manifest.json`` is written last
the same way, so a cache without a (matching) manifest is regenerated, and two
processes building the same cache at once (torchrun ranks) never see a partly
written file. The records are rebuilt from the seed on every load (cheap); only
pixels are cached.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

from ..errors import UserError
from .records import CaptionRecord, Dataset, Split, VQARecord

VERSION = 1  # bump when images or texts change: old caches are then regenerated
KINDS = ("circle", "square", "triangle", "diamond", "star")
COLORS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 220),
          "yellow": (235, 205, 30), "purple": (145, 55, 185), "orange": (245, 135, 25)}
SIZES = {"small": 0.09, "large": 0.15}  # radius, as a fraction of the image side
COLOR_NAMES, SIZE_NAMES = tuple(COLORS), tuple(SIZES)
NUMBERS = ("no", "one", "two", "three", "four")
MARGIN = 0.08  # centres closer than this (fraction of the side) are neither left/right nor above/below
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SUPERSAMPLE = 3  # drawn at 3x and reduced: anti-aliased edges
IMAGES_PER_PROCESS = 1000  # fewer, and starting a process costs more than it saves
SPLITS = ("train",) * 8 + ("val", "test")  # by image index % 10


class Shape(NamedTuple):
    kind: str
    color: str
    size: str
    x: float  # centre, 0..1 from the left
    y: float  # centre, 0..1 from the top

    @property
    def r(self) -> float:
        return SIZES[self.size]

    @property
    def name(self) -> str:  # unique within a scene
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Item:
    """One generated image: its scene, captions and questions (question, answer, answer_type, question_type)."""

    index: int
    split: str
    shapes: tuple[Shape, ...]
    captions: tuple[str, ...]
    questions: tuple[tuple[str, str, str, str], ...]

    @property
    def file(self) -> str:
        return image_file(self.index)


def image_file(index: int) -> str:
    return f"images/{index:05d}.png"


# ---------------------------------------------------------------------------
# Scenes and texts
# ---------------------------------------------------------------------------

def image_rng(seed: int, index: int) -> random.Random:
    """The random stream of image ``index``: the scene first, then its texts or its pixels."""
    return random.Random(seed * 2**32 + index)


def make_scene(rng: random.Random) -> tuple[Shape, ...]:
    """1 to 4 shapes, no two overlapping or with the same colour and kind."""
    shapes: list[Shape] = []
    for _ in range(rng.randint(1, 4)):
        for _try in range(40):
            kind, color, size = rng.choice(KINDS), rng.choice(COLOR_NAMES), rng.choice(SIZE_NAMES)
            r = SIZES[size]
            x, y = rng.uniform(r + 0.02, 0.98 - r), rng.uniform(r + 0.02, 0.98 - r)
            if all((kind, color) != (s.kind, s.color) and math.hypot(x - s.x, y - s.y) > r + s.r + 0.03
                   for s in shapes):
                shapes.append(Shape(kind, color, size, round(x, 4), round(y, 4)))
                break
    return tuple(shapes)


def relations(a: Shape, b: Shape) -> list[str]:
    """Where ``a`` is, seen from ``b``: clear relations only."""
    out = []
    if abs(a.x - b.x) > MARGIN:
        out.append("left of" if a.x < b.x else "right of")
    if abs(a.y - b.y) > MARGIN:
        out.append("above" if a.y < b.y else "below")
    return out


def place(s: Shape) -> str:
    row = ("top", "middle", "bottom")[min(2, int(s.y * 3))]
    col = ("left", "center", "right")[min(2, int(s.x * 3))]
    if row == "middle":
        return "in the center" if col == "center" else f"on the {col}"
    return f"at the {row}" if col == "center" else f"in the {row} {col}"


def tally(words) -> dict[str, int]:
    """Counts in order of first appearance (a plain dict: much cheaper than a Counter here)."""
    out: dict[str, int] = {}
    for w in words:
        out[w] = out.get(w, 0) + 1
    return out


def an(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(n: int, word: str) -> str:
    return f"{NUMBERS[n]} {word}" + ("s" if n != 1 else "")


def make_captions(shapes: tuple[Shape, ...], pairs: list[tuple[Shape, Shape, str]], rng: random.Random) -> tuple[str, ...]:
    order = rng.sample(shapes, len(shapes))
    n = len(order)
    full = [an(f"{s.size} {s.name}") for s in order]
    plain = [an(s.name) for s in order]
    if pairs:
        a, b, rel = rng.choice(pairs)
        relation = f"{an(a.name)} {rel} {an(b.name)}"
        if n > 2:
            relation += rng.choice([f" and {plural(n - 2, 'other shape')}", f", with {plural(n - 2, 'more shape')}"])
    else:
        a = order[0]
        relation = f"{an(f'{a.size} {a.name}')} {place(a)}" + (f" and {plural(n - 1, 'other shape')}" if n > 1 else "")
    kinds = tally(s.kind for s in order)
    colors = list(dict.fromkeys(s.color for s in order))
    return (
        f"{plural(n, 'shape')}: {join(full)}",
        relation,
        rng.choice([f"there {'is' if n == 1 else 'are'} {plural(n, 'shape')} in the image: {join(plain)}",
                    f"an image with {join(plain)}", f"a picture showing {join(plain)}"]),
        join([f"{p} {place(s)}" for p, s in zip(plain, order)]),
        f"{join([plural(c, k) for k, c in kinds.items()])} in {join(colors)}",
    )


def make_questions(shapes: tuple[Shape, ...], pairs: list[tuple[Shape, Shape, str]],
                   rng: random.Random) -> tuple[tuple[str, str, str, str], ...]:
    n = len(shapes)
    kinds, colors = tally(s.kind for s in shapes), tally(s.color for s in shapes)
    qs = [(rng.choice(["how many shapes are there?", "how many shapes are in the image?",
                       "how many objects can you see?"]), str(n), "number", "count")]
    # count of one kind or colour, present or not
    if rng.random() < 0.5:
        kind = rng.choice(list(kinds) if rng.random() < 0.6 else KINDS)
        qs.append((f"how many {kind}s are there?", str(kinds.get(kind, 0)), "number", "count"))
    else:
        color = rng.choice(list(colors) if rng.random() < 0.6 else list(COLORS))
        qs.append((f"how many {color} shapes are there?", str(colors.get(color, 0)), "number", "count"))
    unique_kind = [s for s in shapes if kinds[s.kind] == 1]
    if unique_kind:
        s = rng.choice(unique_kind)
        q = rng.choice(["what color is the {}?", "what is the color of the {}?", "which color does the {} have?"])
        qs.append((q.format(s.kind), s.color, "color", "color"))
    unique_color = [s for s in shapes if colors[s.color] == 1]
    if unique_color:
        s = rng.choice(unique_color)
        q = rng.choice(["what shape is {}?", "what is the {} shape?", "which shape is {}?"])
        qs.append((q.format(s.color), s.kind, "shape", "shape"))
    # existence, half true and half false; false ones mostly reuse a colour or kind of the image
    present = rng.random() < 0.5
    if present:
        s = rng.choice(shapes)
        thing = rng.choice([s.kind, f"{s.color} shape", s.name])
    else:
        names = {s.name for s in shapes}
        thing = rng.choice([f"{c} {k}" for c in colors for k in KINDS if f"{c} {k}" not in names]
                           + [k for k in KINDS if k not in kinds] + [f"{c} shape" for c in COLORS if c not in colors])
    q = rng.choice(["is there {}?", "does the image contain {}?", "can you see {}?"])
    qs.append((q.format(an(thing)), "yes" if present else "no", "yes/no", "exist"))
    if pairs:  # positions
        a, b, rel = rng.choice(pairs)
        truth = rng.random() < 0.5
        qs.append((f"is the {a.name} {rel if truth else OPPOSITE[rel]} the {b.name}?",
                   "yes" if truth else "no", "yes/no", "position"))
        # "what is left of the blue star?" when exactly one shape is and every other one is clearly right of it
        found = tally((b, rel) for _, b, rel in pairs)
        unique = [(a, b, rel) for a, b, rel in pairs
                  if found[b, rel] == 1 and found.get((b, OPPOSITE[rel]), 0) == n - 2]
        if unique:
            a, b, rel = rng.choice(unique)
            q = rng.choice(["what is {} the {}?", "which shape is {} the {}?"])
            qs.append((q.format(rel, b.name), a.name, "other", "position"))
    return tuple(qs)


def make_item(seed: int, index: int) -> Item:
    """Image ``index`` of the dataset with this seed (independent of the dataset size)."""
    rng = image_rng(seed, index)
    shapes = make_scene(rng)
    pairs = [(a, b, rel) for a in shapes for b in shapes if a is not b for rel in relations(a, b)]
    return Item(index, SPLITS[index % 10], shapes, make_captions(shapes, pairs, rng), make_questions(shapes, pairs, rng))


# ---------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------

def _outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if kind == "triangle":
        return [(cx + r * math.cos(a), cy + 0.15 * r - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    # star: 5 points
    return [(cx + rr * math.sin(k * math.pi / 5), cy - rr * math.cos(k * math.pi / 5))
            for k in range(10) for rr in [r if k % 2 == 0 else 0.45 * r]]


def render(seed: int, index: int, size: int) -> Image.Image:
    """Image ``index`` as a ``size`` x ``size`` RGB picture."""
    rng = image_rng(seed, index)
    shapes = make_scene(rng)
    side = size * SUPERSAMPLE
    grey = rng.randint(215, 245)
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    for s in shapes:
        fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLORS[s.color])
        cx, cy, r = s.x * side, s.y * side, s.r * side
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_outline(s.kind, cx, cy, r), fill=fill)
    return img.reduce(SUPERSAMPLE)


def _write_images(folder: str, indices: range, size: int, seed: int) -> None:
    for i in indices:
        png = io.BytesIO()
        render(seed, i, size).save(png, format="PNG", compress_level=1)  # one write: PIL's own file writes are slow
        path = os.path.join(folder, image_file(i))
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(png.getbuffer())
        os.replace(tmp, path)  # atomic: another process never sees half a PNG


def write_images(folder: Path, n_images: int, size: int, seed: int, workers: int | None = None) -> None:
    """Render images 0..n-1 into ``folder/images/``, on several processes for big sets."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = 1 if multiprocessing.current_process().daemon else min(8, cores)  # daemons can't have children
    workers = max(1, min(workers, n_images // IMAGES_PER_PROCESS))
    if workers == 1:
        _write_images(str(folder), range(n_images), size, seed)
        return
    # fork where there is one: no re-import of __main__; the children only run PIL and pure Python
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for done in [pool.submit(_write_images, str(folder), range(k, n_images, workers), size, seed)
                     for k in range(workers)]:
            done.result()


# ---------------------------------------------------------------------------
# Cache, records, JSONL
# ---------------------------------------------------------------------------

def _check(n_images: int, size: int, seed: int) -> None:
    if n_images < 1:
        raise UserError(f"shapes: the number of images must be at least 1, got {n_images}")
    if size < 16:
        raise UserError(f"shapes: the image size must be at least 16 pixels, got {size}")
    if seed < 0:
        raise UserError(f"shapes: the seed must be 0 or more, got {seed}")


def cache_folder(n_images: int, size: int, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    from .images import cache_root

    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    return root / f"shapes-n{n_images}-s{size}-seed{seed}"


def _manifest(n_images: int, size: int, seed: int) -> dict:
    return {"generator": "mmcli shapes", "version": VERSION, "n_images": n_images, "size": size, "seed": seed}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _cache_ok(folder: Path, expected: dict) -> bool:
    """A manifest for these parameters and every image there (a few ms for 10,000 files)."""
    try:
        if json.loads((folder / "manifest.json").read_text(encoding="utf-8")) != expected:
            return False
    except (OSError, ValueError):
        return False
    return all(os.path.exists(folder / image_file(i)) for i in range(expected["n_images"]))


def load_shapes(n_images: int = 2000, size: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """The shapes dataset, images rendered once into the cache folder and reused."""
    _check(n_images, size, seed)
    folder = cache_folder(n_images, size, seed, cache_dir)
    expected = _manifest(n_images, size, seed)
    if not _cache_ok(folder, expected):
        try:
            write_images(folder, n_images, size, seed)
            _write_json(folder / "manifest.json", expected)  # last: marks the cache complete
        except OSError as e:
            raise UserError(f"shapes: cannot write the image cache {folder}: {e.strerror or e} "
                            "(set $MMCLI_CACHE to a writable folder)") from None
    else:
        from .cachedir import touch

        touch(folder)  # last used now (`mmcli data cache --unused-days`)
    items = [make_item(seed, i) for i in range(n_images)]
    splits: dict[str, Split] = {name: Split() for name in dict.fromkeys(SPLITS)}
    for it in items:
        image_id, path = f"{it.index:05d}", str(folder / it.file)
        split = splits[it.split]
        split.captions.append(CaptionRecord(image_id, path, it.captions))
        split.questions.extend(VQARecord(f"{image_id}/{k}", image_id, path, q, (a,), at, qt)
                               for k, (q, a, at, qt) in enumerate(it.questions))
    info = {"generator": f"shapes v{VERSION}: n_images={n_images}, size={size}, seed={seed}", "cache": str(folder)}
    return Dataset("shapes", {k: s for k, s in splits.items() if s.captions}, info)


def write_shapes_jsonl(out_dir: str | os.PathLike, n_images: int = 2000, size: int = 64, seed: int = 0) -> Path:
    """Write ``images/*.png``, ``captions.jsonl`` and ``questions.jsonl`` (mmcli's JSONL,
    image paths relative to the files) into ``out_dir``; returns ``out_dir``."""
    _check(n_images, size, seed)
    out = Path(out_dir)
    try:
        write_images(out, n_images, size, seed)
        items = [make_item(seed, i) for i in range(n_images)]
        with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps({"image": it.file, "image_id": f"{it.index:05d}", "captions": list(it.captions),
                                    "split": it.split}) + "\n")
        with open(out / "questions.jsonl", "w", encoding="utf-8") as f:
            for it in items:
                for k, (q, a, at, qt) in enumerate(it.questions):
                    f.write(json.dumps({"image": it.file, "image_id": f"{it.index:05d}", "question_id": f"{it.index:05d}/{k}",
                                        "question": q, "answers": [a], "answer_type": at, "question_type": qt,
                                        "split": it.split}) + "\n")
    except OSError as e:
        raise UserError(f"shapes: cannot write to {out}: {e.strerror or e}") from None
    return out
