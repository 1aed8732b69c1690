"""Fuzz mmcli's file readers and image loader for a fixed time.

    python benchmarks/fuzz_readers.py --seconds 300 [--seed 0] [--out fuzz-failures]

A seeded random-mutation loop (no coverage guidance; the same seed gives the
same inputs). Targets, each fed in turn:

* the JSON/JSONL readers of ``mmcli score``: ``read_json_or_jsonl``,
  ``load_captions`` (every ``--format``), ``load_vqa_predictions``,
  ``load_vqa_references``, ``load_ranking``, ``load_retrieval_gt``;
* the dataset readers: ``read_coco``, ``read_karpathy``, ``read_vqa2``
  (questions, and annotations), ``read_jsonl``, ``read_flickr8k`` (token and
  split files);
* the image loader ``load_image``.

Inputs are random bytes, valid seed documents of every format mutated either
as JSON (a node replaced, deleted, duplicated, nested, retyped) or as bytes
(bit flips, insertions, deletions, truncation, splices), and for the image
loader PNG/JPEG/GIF/BMP/TIFF/WebP files made with PIL in memory, mutated the
same way (plus huge header dimensions).

Each call must return (records; for ``load_image`` an RGB image) or raise
:class:`mmcli.errors.UserError` with a one-line message naming the input file
(or the image folder). Dataset records must point inside the image folder,
with normalised absolute paths. Anything else, or a call over ``--timeout``
seconds, is a failure. The report gives the inputs tried and failures per
target; the first failing input of each target is saved under ``--out``; the
exit code is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from mmcli.data import images as image_io  # noqa: E402
from mmcli.data import readers  # noqa: E402
from mmcli.data.records import Dataset  # noqa: E402
from mmcli.errors import UserError  # noqa: E402
from mmcli.metrics import formats, retrieval, vqa  # noqa: E402
from mmcli.metrics.jsonio import read_json_or_jsonl  # noqa: E402

# --------------------------------------------------------------------------- seed documents

_ANSWERS = [{"answer": a, "answer_confidence": "yes", "answer_id": k}
            for k, a in enumerate(["yes"] * 6 + ["no"] * 3 + ["2"], 1)]
SEEDS: dict[str, list[Any]] = {
    "coco": [{"info": {}, "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}],
              "annotations": [{"id": 10, "image_id": 1, "caption": "A dog runs."},
                              {"id": 11, "image_id": 2, "caption": "a cat"},
                              {"id": 12, "image_id": 2, "caption": "two cats on a mat"}]}],
    "coco-results": [[{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}]],
    "mapping": [{"1": "a dog", "2": ["a cat", "a red bus"]}],
    "karpathy": [{"dataset": "coco", "images": [
        {"filepath": "", "filename": "a.jpg", "split": "test", "cocoid": 1,
         "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]},
        {"filename": "b.png", "split": "train", "sentences": [{"tokens": ["a", "cat"]}]},
        {"filename": "1.jpg", "split": "restval", "cocoid": "7", "sentences": [{"raw": "x"}]},
        {"filename": "000000000002.jpg", "split": "val", "sentences": [{"raw": "y"}]}]}],
    "vqa-questions": [{"data_subtype": "val2014", "questions": [
        {"question_id": 1, "image_id": 1, "question": "What is it?"},
        {"question_id": 2, "image_id": 3, "question": "Is it red?"}]}],
    "vqa-annotations": [{"annotations": [
        {"question_id": 1, "image_id": 1, "question_type": "what is", "answer_type": "other",
         "multiple_choice_answer": "yes", "answers": _ANSWERS},
        {"question_id": 2, "image_id": 3, "answer_type": "yes/no", "answers": _ANSWERS[:3]}]}],
    "vqa-predictions": [[{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no"}],
                        {"1": "yes", "2": "two"}],
    "ranking": [{"text_to_image": {"10": ["1", "2"], "11": [2, 1], "12": []},
                 "image_to_text": {"1": ["10", "11"], "2": ["12"]}}],
    "retrieval-gt": [{"1": ["10"], "2": ["11", "12"]},
                     [{"image_id": 1, "caption_id": 10}, {"image_id": 2, "caption_id": 11}]],
    "jsonl": [[{"image": "a.jpg", "caption": "a dog", "split": "train"},
               {"image": "b.png", "captions": ["x", "y"], "image_id": "b"},
               {"image": "a.jpg", "question": "what?", "answers": ["yes"], "question_id": 5,
                "answer_type": "other", "question_type": "what"}]],
}

KEYS = sorted({"images", "annotations", "questions", "id", "file_name", "image_id", "image", "caption",
               "captions", "sentences", "raw", "tokens", "filename", "filepath", "split", "cocoid",
               "question", "question_id", "answer", "answers", "answer_type", "question_type",
               "data_subtype", "text_to_image", "image_to_text", "caption_id", "1", "2", "10"})
STRINGS = ["", " ", "train", "val", "test", "restval", "all", "a.jpg", "b.png", "1.jpg", "..", "../a.jpg",
           "/etc/passwd", "a/../../b", "./a.jpg", "a\x00b", "\n", "\r\n", "\u2028", "\x1b[31m", "\ud800",
           "\udcff", "\ufeff", "yes", "1", "01", "-1", "1.0", "1e3", "0" * 30, "1" * 5000, "%s%n", "{}", "{0}",
           "\u00e9", "e\u0301", "\U0001f600", "a" * 300]
BYTE_TOKENS = [b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\", b"\\u0000", b"\\ud800", b"NaN", b"-Infinity",
               b"1e999", b"-0", b"9" * 400, b"\n", b"\r", b"\x00", b"\xff", b"\xef\xbb\xbf", b"null", b"true",
               b'"images"', b'"annotations"', b'"question_id"', b'"image_id"', b"[" * 2000, b"{\"a\":" * 500]


def random_string(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(STRINGS + KEYS)
    n = rng.choice([1, 2, 5, 20])
    if r < 0.8:
        return "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0, 0x2FFF)])) for _ in range(n))
    return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(n))  # surrogates included


def random_leaf(rng: random.Random) -> Any:
    return rng.choice([
        lambda: None, lambda: True, lambda: False, lambda: rng.randint(-3, 12), lambda: rng.randint(-2**70, 2**70),
        lambda: 10 ** rng.randint(1, 1000), lambda: rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf")]),
        lambda: random_string(rng), lambda: random_string(rng),
    ])()


def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth >= 4 or r < 0.5:
        return random_leaf(rng)
    if r < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {(rng.choice(KEYS) if rng.random() < 0.7 else random_string(rng)): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _nodes(doc: Any, out: list) -> list:
    """(container, key) of every node below ``doc``."""
    if isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((doc, i))
            _nodes(v, out)
    elif isinstance(doc, dict):
        for k, v in doc.items():
            out.append((doc, k))
            _nodes(v, out)
    return out


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """A few structural mutations of a copy of ``doc``."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        nodes = _nodes(doc, [])
        if not nodes:
            return random_json(rng) if rng.random() < 0.5 else [doc]
        parent, key = rng.choice(nodes)
        value = parent[key]
        op = rng.randrange(9)
        if op == 0:
            parent[key] = random_json(rng)
        elif op == 1:
            parent[key] = random_leaf(rng)
        elif op == 2:  # delete
            del parent[key]
        elif op == 3:  # duplicate
            if isinstance(parent, list):
                parent.insert(key, json.loads(json.dumps(value)))
            else:
                parent[rng.choice(KEYS)] = json.loads(json.dumps(value))
        elif op == 4:  # nest
            parent[key] = [value] if rng.random() < 0.5 else {rng.choice(KEYS): value}
        elif op == 5:  # retype a scalar
            parent[key] = (str(value) if not isinstance(value, str)
                           else int(value) if value.isascii() and value.isdigit() and len(value) < 100 else [value])
        elif op == 6 and isinstance(value, list) and value:  # shuffle, truncate or empty a list
            rng.shuffle(value)
            del value[rng.randrange(len(value) + 1):]
        elif op == 7 and isinstance(value, dict):  # add a key
            value[rng.choice(KEYS)] = random_json(rng, 2)
        else:  # copy another node's value here
            other_parent, other_key = rng.choice(nodes)
            parent[key] = json.loads(json.dumps(other_parent[other_key]))
    return doc


def serialise(rng: random.Random, doc: Any) -> bytes:
    ascii_only = rng.random() < 0.5
    if isinstance(doc, list) and rng.random() < 0.4:  # JSON lines
        sep = rng.choice(["\n", "\r\n", "\n\n", "\n \n"])
        text = sep.join(json.dumps(v, ensure_ascii=ascii_only) for v in doc) + rng.choice(["", "\n"])
    else:
        text = json.dumps(doc, ensure_ascii=ascii_only, indent=rng.choice([None, None, 1]))
    if rng.random() < 0.05:
        text = "\ufeff" + text
    return text.encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, data: bytes, tokens: list[bytes] = BYTE_TOKENS) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        op = rng.randrange(8)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and buf:  # delete a range
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del buf[pos:]
        elif op == 5 and buf:  # duplicate a range
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end]
        elif op == 6:  # an interesting token
            buf[pos:pos] = rng.choice(tokens)
        elif buf:  # overwrite 1, 2 or 4 bytes with an extreme value
            n = rng.choice([1, 2, 4])
            value = rng.choice([0, 0xFF, 0x7F, 0x80]) if n == 1 else rng.choice([0, 2 ** (8 * n) - 1, 2 ** (8 * n - 1)])
            i = rng.randrange(len(buf))
            buf[i:i + n] = value.to_bytes(n, rng.choice(["big", "little"]))
    return bytes(buf)


def json_input(rng: random.Random, kinds: list[str]) -> bytes:
    """Random bytes, a mutated seed of one of ``kinds`` (or any), or random JSON."""
    r = rng.random()
    if r < 0.05:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if r < 0.07:  # deep nesting, alone or in place of a value of a seed
        n = rng.choice([100, 900, 990, 1000, 1500, 100000])
        deep = rng.choice(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n])
        text = json.dumps(rng.choice(SEEDS[rng.choice(kinds)]))
        quote = [i for i, c in enumerate(text) if c == ":"]
        if quote and rng.random() < 0.7:
            i = rng.choice(quote) + 1
            text = text[:i] + deep + text[i:].lstrip("0123456789\"-.truefalsn")
        else:
            text = deep
        return text.encode()
    if r < 0.15:
        return serialise(rng, random_json(rng))
    kind = rng.choice(kinds) if rng.random() < 0.8 else rng.choice(list(SEEDS))
    doc = rng.choice(SEEDS[kind])
    if rng.random() < 0.7:
        doc = mutate_json(rng, doc)
    data = serialise(rng, doc)
    if rng.random() < 0.3:
        data = mutate_bytes(rng, data)
    return data


# --------------------------------------------------------------------------- image seeds


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_seeds() -> list[bytes]:
    rgb = Image.radial_gradient("L").resize((24, 16)).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((24, 16)))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    seeds = [
        _encode(rgb, "PNG"), _encode(rgba, "PNG"), _encode(rgb.convert("L"), "PNG"), _encode(rgb.convert("1"), "PNG"),
        _encode(rgb.convert("LA"), "PNG"), _encode(pal, "PNG", transparency=0),
        _encode(rgb.convert("L").convert("I;16"), "PNG"), _encode(rgb, "PNG", exif=exif),
        _encode(rgb, "JPEG", quality=80), _encode(rgb, "JPEG", progressive=True), _encode(rgb.convert("L"), "JPEG"),
        _encode(rgb.convert("CMYK"), "JPEG"), _encode(rgb, "JPEG", exif=exif),
        _encode(pal, "GIF"), _encode(rgb, "BMP"), _encode(rgb, "TIFF"), _encode(rgb, "TIFF", compression="tiff_lzw"),
        _encode(rgb.convert("F"), "TIFF"), _encode(rgb, "WEBP"), _encode(rgba, "WEBP", lossless=True),
        _encode(rgb, "PPM"), _encode(rgb, "ICO"),
    ]
    return seeds


def image_input(rng: random.Random, seeds: list[bytes]) -> bytes:
    r = rng.random()
    if r < 0.03:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 256)))
    data = rng.choice(seeds)
    if r < 0.08:  # a splice of two files
        other = rng.choice(seeds)
        return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)):]
    if r < 0.12 and data.startswith(b"\x89PNG"):  # huge IHDR dimensions (decompression bomb)
        w, h = rng.choice([(100000, 100000), (2**31 - 1, 1), (0, 5), (8000, 7000)])
        return data[:16] + w.to_bytes(4, "big") + h.to_bytes(4, "big") + data[24:]
    return mutate_bytes(rng, data, tokens=[b"\x00" * 4, b"\xff" * 4, b"\xff\xd8", b"\xff\xd9", b"IEND", b"IDAT"])


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    make: Callable[[random.Random], dict[str, bytes]]  # file name (in the work dir) -> content
    call: Callable[[Path], Any]
    check: Callable[[Any, Path], None]
    names: Callable[[Path], tuple[str, ...]]  # what an error message must name (one of)
    tried: int = 0
    failures: int = 0
    slowest: float = 0.0
    first: str | None = None  # description of the first failure
    saved: Path | None = None
    kinds: set = field(default_factory=set)  # distinct failure kinds


def _check_none(result: Any, work: Path) -> None:
    pass


def _check_dataset(root: Callable[[Path], Path]) -> Callable[[Any, Path], None]:
    def check(ds: Any, work: Path) -> None:
        assert isinstance(ds, Dataset) and ds.splits, f"not a non-empty Dataset: {ds!r:.80}"
        base = os.path.abspath(root(work))
        for split in ds.splits.values():
            for rec in [*split.captions, *split.questions]:
                assert os.path.isabs(rec.image) and os.path.normpath(rec.image) == rec.image, \
                    f"image path not normalised: {rec.image!r}"
                assert rec.image == base or rec.image.startswith(base + os.sep), \
                    f"image path outside the image folder: {rec.image!r}"
    return check


def _check_image(img: Any, work: Path) -> None:
    assert isinstance(img, Image.Image), f"not an image: {type(img).__name__}"
    assert img.mode == "RGB", f"mode {img.mode}, expected RGB"
    w, h = img.size
    assert w > 0 and h > 0 and w * h <= image_io.MAX_PIXELS, f"size {img.size}"


def build_targets(seed_images: list[bytes]) -> list[Target]:
    def json_file(suffixes: list[str], kinds: list[str]):
        def make(rng: random.Random) -> dict[str, bytes]:
            return {"input" + rng.choice(suffixes): json_input(rng, kinds)}
        return make

    def only(work: Path) -> Path:
        return next(p for p in work.iterdir() if p.name.startswith("input"))

    def named(*extra: str):
        return lambda work: (str(only(work)), *(str(work / e) for e in extra))

    score_sfx = [".json", ".json", ".jsonl", ".ndjson"]
    targets = [
        Target("read_json_or_jsonl", json_file(score_sfx, list(SEEDS)), lambda w: read_json_or_jsonl(only(w)),
               _check_none, named()),
    ]
    for fmt in formats.FORMATS:
        kinds = {"auto": list(SEEDS), "coco-results": ["coco-results"], "coco": ["coco"], "mapping": ["mapping"],
                 "jsonl": ["jsonl", "coco-results"], "karpathy": ["karpathy"]}[fmt]
        targets.append(Target(f"load_captions[{fmt}]", json_file(score_sfx, kinds),
                              lambda w, fmt=fmt: formats.load_captions(only(w), fmt), _check_none, named()))
    targets += [
        Target("load_vqa_predictions", json_file(score_sfx, ["vqa-predictions"]),
               lambda w: vqa.load_vqa_predictions(only(w)), _check_none, named()),
        Target("load_vqa_references", json_file(score_sfx, ["vqa-annotations", "vqa-predictions"]),
               lambda w: vqa.load_vqa_references(only(w)), _check_none, named()),
        Target("load_ranking", json_file(score_sfx, ["ranking"]),
               lambda w: retrieval.load_ranking(only(w)), _check_none, named()),
        Target("load_retrieval_gt", json_file(score_sfx, ["retrieval-gt", "coco"]),
               lambda w: retrieval.load_retrieval_gt(only(w)), _check_none, named()),
        Target("read_coco", json_file([".json"], ["coco"]),
               lambda w: readers.read_coco(only(w), w / "images"), _check_dataset(lambda w: w / "images"),
               named("images")),
        Target("read_karpathy", json_file([".json"], ["karpathy"]),
               lambda w: readers.read_karpathy(only(w), w / "images"), _check_dataset(lambda w: w / "images"),
               named("images")),
        Target("read_vqa2[questions]", json_file([".json"], ["vqa-questions"]),
               lambda w: readers.read_vqa2(only(w), None, w / "images"), _check_dataset(lambda w: w / "images"),
               named("images")),
        Target("read_vqa2[annotations]", json_file([".json"], ["vqa-annotations"]),
               lambda w: readers.read_vqa2(w / "questions.json", only(w), w / "images"),
               _check_dataset(lambda w: w / "images"), named("images", "questions.json")),
        Target("read_jsonl", json_file([".jsonl", ".json"], ["jsonl"]),
               lambda w: readers.read_jsonl(only(w)), _check_dataset(lambda w: w), named()),
        Target("read_flickr8k", make_flickr, lambda w: readers.read_flickr8k(w / "flickr8k"),
               _check_dataset(lambda w: w / "flickr8k" / "images"), lambda w: (str(w / "flickr8k"),)),
        Target("load_image", lambda rng: {"input.img": image_input(rng, seed_images)},
               lambda w: image_io.load_image(w / "input.img"), _check_image, lambda w: (str(w / "input.img"),)),
    ]
    return targets


FLICKR_TOKENS = ("a.jpg#0\tA dog runs.\na.jpg#1\ta dog\nb.png#0\tA cat.\nc.jpg#4\tunused\n"
                 "1.jpg#0 space instead of a tab\n").encode()
FLICKR_SPLITS = {"train": b"a.jpg\n1.jpg\n", "val": b"b.png\r\n", "test": b""}


def make_flickr(rng: random.Random) -> dict[str, bytes]:
    files = {}
    tokens = FLICKR_TOKENS
    if rng.random() < 0.8:
        tokens = mutate_bytes(rng, tokens, tokens=[b"\t", b"#", b"\n", b"\r", b" ", b"#99999", b"#" + b"1" * 5000,
                                                   b"\xe2\x80\xa8", b"../", b"\x00", b".jpg"])
    files["flickr8k/" + readers.FLICKR8K_TOKENS] = tokens
    for (split, filename), content in zip(readers.FLICKR8K_SPLIT_FILES, FLICKR_SPLITS.values()):
        if split == "test" and rng.random() < 0.3:
            continue
        if rng.random() < 0.4:
            content = mutate_bytes(rng, content, tokens=[b"\n", b"a.jpg", b"b.png", b"../x", b"/", b"\x00", b" "])
        files["flickr8k/" + filename] = content
    return files


# --------------------------------------------------------------------------- running


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


@contextlib.contextmanager
def _quiet_c_stderr():
    """Silence what C libraries (libtiff, libjpeg) print on fd 2 during a call."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _one_line(msg: str, names: tuple[str, ...]) -> str | None:
    """Why ``msg`` is not a proper one-line message naming one of ``names`` (None if it is)."""
    if not any(n in msg for n in names):
        return f"the message names none of the inputs: {msg!r:.200}"
    rest = msg
    for n in names:
        rest = rest.replace(n, "")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in rest):
        return f"the message is not one line: {msg!r:.200}"
    return None


def run_one(target: Target, rng: random.Random, work: Path,
            timeout: float) -> tuple[str, str, dict[str, bytes]] | None:
    """Feed one input; None, or (kind, description, input files) of the failure."""
    for p in sorted(work.glob("input*")):
        p.unlink()
    files = target.make(rng)
    for rel, content in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if "flickr8k/" + readers.FLICKR8K_SPLIT_FILES[2][1] not in files:
        (work / "flickr8k" / readers.FLICKR8K_SPLIT_FILES[2][1]).unlink(missing_ok=True)
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with _quiet_c_stderr():
            result = target.call(work)
        problem = None
    except UserError as e:
        result, problem = None, _one_line(str(e), target.names(work))
        kind = "bad UserError message"
    except _Timeout:
        result, problem, kind = None, f"took more than {timeout:g} s", "timeout"
    except Exception as e:  # the bug this is looking for
        frames = traceback.extract_tb(e.__traceback__)
        ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(ROOT / "mmcli")]
        tb = (ours or frames)[-1]  # the innermost line of mmcli, else the innermost line
        where = f"{os.path.relpath(tb.filename, ROOT) if ours else tb.filename}:{tb.lineno}"
        result, problem = None, f"{type(e).__name__}: {str(e)[:200]} ({where})"
        kind = f"{type(e).__name__} at {where}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    target.slowest = max(target.slowest, time.perf_counter() - start)
    if problem is None and result is not None:
        try:
            target.check(result, work)
        except AssertionError as e:
            problem, kind = f"bad result: {e}", f"bad result: {str(e).split(':')[0]}"
    if problem is None:
        return None
    return kind, problem, files


def save(target: Target, files: dict[str, bytes], out: Path) -> Path:
    """Write the input files of a failure under ``out/<target>/``."""
    dest = out / target.name.replace("[", "-").replace("]", "")
    for rel, content in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(content)
    return dest


def setup(work: Path) -> None:
    images = work / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png", "1.jpg", "000000000002.jpg", "COCO_val2014_000000000003.jpg"):
        Image.new("RGB", (2, 2)).save(images / name, format="PNG")
    (work / "questions.json").write_text(json.dumps(SEEDS["vqa-questions"][0]))
    (work / "flickr8k" / "images").mkdir(parents=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300, help="how long to fuzz (default 300)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--timeout", type=float, default=20, help="seconds one input may take (default 20)")
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"),
                    help="folder for the first failing input of each target (default ./fuzz-failures)")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")  # PIL's warnings about odd files; errors are what counts
    signal.signal(signal.SIGALRM, _on_alarm)
    rng = random.Random(args.seed)
    targets = build_targets(image_seeds())
    first_overall: tuple[Target, str] | None = None
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mmcli-fuzz-") as tmp:
        work = Path(tmp)
        setup(work)
        while time.monotonic() - start < args.seconds:
            for target in targets:
                failure = run_one(target, rng, work, args.timeout)
                target.tried += 1
                if failure is None:
                    continue
                kind, problem, files = failure
                target.failures += 1
                target.kinds.add(kind)
                if target.first is None:
                    target.first, target.saved = problem, save(target, files, args.out)
                    if first_overall is None:
                        first_overall = (target, problem)
        elapsed = time.monotonic() - start

    width = max(len(t.name) for t in targets)
    print(f"fuzz_readers: {elapsed:.1f} s, seed {args.seed}, timeout {args.timeout:g} s per input")
    print(f"{'target':<{width}}  {'inputs':>8}  {'failures':>8}  {'slowest':>8}")
    for t in targets:
        print(f"{t.name:<{width}}  {t.tried:>8}  {t.failures:>8}  {t.slowest:>7.3f}s")
    total, failed = sum(t.tried for t in targets), sum(t.failures for t in targets)
    print(f"{'total':<{width}}  {total:>8}  {failed:>8}")
    if first_overall is None:
        print("no failures")
        return 0
    for t in targets:
        if t.first is not None:
            print(f"{t.name}: {t.failures} failure(s), {len(t.kinds)} kind(s): {'; '.join(sorted(t.kinds))}")
            print(f"  first: {t.first}")
            print(f"  input saved in {t.saved}")
    target, problem = first_overall
    print(f"first failure: {target.name}: {problem} (input saved in {target.saved})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
