"""Every command survives bad input: one ``mmcli: error:`` line naming the input and the problem,
exit code 2, no traceback, and no partial or clobbered output file.

The matrix below runs each command in-process (``run_cli``) on missing paths, a directory where a
file is expected and the reverse, unreadable files, empty files, invalid UTF-8, invalid JSON, JSON
of the wrong shape, out-of-range and non-finite numeric flags, unknown choices, and bad images
(truncated, zero bytes, text named .jpg, decompression bombs, extreme aspect ratios, 1x1 pixel).
Every case fails before any training step (a few are accepted on purpose: see ``OK`` and ``WARN``).
docs/bad-input.md is the table of these cases and their outcomes.

Unreadable files: the tests run as root, who reads a chmod 000 file anyway, so the file is made
unreadable twice: chmod 000 (what a normal user meets), and ``open`` / ``io.open`` raise the
PermissionError the kernel would raise, for that one path only (:func:`locked`).

Malicious pickles (:func:`test_planted_pickles_are_never_unpickled`): a file whose unpickling
creates a marker file, planted wherever a command reads a checkpoint or state; the marker must
never appear.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = str(10**30)  # past every bound, and past int64
ERROR, WARN, OK = "error", "warn", "ok"
PREVIOUS = b"previous results: must survive a failing run\n"


# ============================================================================ trained runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny caption, VQA, retrieval and pretrain runs (one step each, enough to load and run)."""
    from mmcli.cli import main
    from mmcli.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("bad-input")
    assert main(["data", "shapes", "--out", str(root / "shapes"), "--n", "24", "--size", "32"]) == 0
    torch.set_num_threads(1)
    common = dict(preset="tiny", batch_size=8, lr=3e-3, warmup_steps=1, vocab_size=400,
                  log_every=1, max_steps=1, eval_every=1, test=False)
    caps, qs = f"jsonl:{root}/shapes/captions.jsonl", f"jsonl:{root}/shapes/questions.jsonl"
    for name, task, data in (("cap", "caption", caps), ("vqa", "vqa", qs), ("ret", "retrieval", caps),
                             ("pt", "pretrain", caps)):
        fit(TrainConfig(task=task, data=data, out=str(root / name), **common))
    return {"root": root, "images": root / "shapes" / "images", "cap": root / "cap", "vqa": root / "vqa",
            "ret": root / "ret", "pt": root / "pt"}


# ============================================================================ bad files


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb when large)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def solid_png(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def truncated_png(path: Path, good: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_IMAGES = {  # kind -> (file name, how to make it from a good image, what the error says)
    "zero": ("zero.png", lambda p, g: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated": ("truncated.png", lambda p, g: truncated_png(p, g), "truncated file"),
    "text": ("text.jpg", lambda p, g: p.write_text("this is not a picture\n"), "not an image"),
    "bomb": ("bomb.png", lambda p, g: p.write_bytes(png_header(100_000, 100_000)), "too many pixels"),
    "big": ("big.png", lambda p, g: p.write_bytes(png_header(8_000, 8_000)), "too many pixels: 8000x8000"),
    "locked": ("locked.png", lambda p, g: shutil.copy(g, p), "cannot read the file (permission denied)"),
}
ODD_IMAGES = {"tall": (1, 10_000), "wide": (100_000, 1), "tiny": (1, 1)}  # accepted: (width, height)


class Sandbox(dict):
    """``{name}`` placeholders of the matrix, each made on first use in the test's directory."""

    def __init__(self, tmp: Path, runs: dict[str, Path], locked: set[str]):
        super().__init__()
        self.tmp, self.runs, self.locked = tmp, runs, locked
        self.good = sorted(runs["images"].iterdir())

    def __missing__(self, key: str):
        value = self[key] = str(self._make(key))
        return value

    def lock(self, path: Path) -> Path:
        path.chmod(0)
        self.locked.add(os.path.abspath(path))
        return path

    def folder(self, name: str, n: int = 3, bad: str | None = None) -> Path:
        d = self.tmp / name
        d.mkdir()
        for p in self.good[:n]:
            shutil.copy(p, d / p.name)
        if bad is not None:
            self.bad_image(bad, d)
        return d

    def bad_image(self, kind: str, where: Path | None = None) -> Path:
        name, make, _ = BAD_IMAGES[kind]
        p = (where or self.tmp) / name
        make(p, self.good[0])
        return self.lock(p) if kind == "locked" else p

    def _make(self, key: str):
        t, r = self.tmp, self.runs
        if key in ("cap", "vqa", "ret", "pt"):
            return r[key]
        if key == "img":
            return self.good[0]
        if key in BAD_IMAGES:
            return self.bad_image(key)
        if key in ODD_IMAGES:
            return solid_png(t / f"{key}.png", ODD_IMAGES[key])
        if key.startswith("mixed_"):  # good images and one bad one
            return self.folder(key, bad=key[len("mixed_"):])
        files = {
            "missing": None, "dir": "DIR", "file": "a plain file\n",
            "empty": b"", "utf8": b'{"1": "caf\xe9 au lait"}\n', "badjson": "{not json\n",
            "shape": "[1, 2, 3]\n", "coco_shape": '{"images": 3, "annotations": []}\n',
            "unreadable": '{"1": "a dog"}\n', "index": b"\x00\x01 not a safetensors index",
            "preds": '{"1": "a dog runs", "2": "a cat"}\n', "refs": '{"1": ["a dog runs"], "2": ["a cat sleeps"]}\n',
        }
        if key in files:
            p = t / {"missing": "missing.json", "dir": "adir", "file": "afile.txt", "index": "index.bin"}.get(
                key, f"{key}.json")
            content = files[key]
            if content == "DIR":
                p.mkdir()
            elif isinstance(content, bytes):
                p.write_bytes(content)
            elif content is not None:
                p.write_text(content)
            return self.lock(p) if key == "unreadable" else p
        if key == "out":  # an earlier result file that a failing run must leave as it is
            (t / "out.json").write_bytes(PREVIOUS)
            return t / "out.json"
        if key == "run":  # a run directory that a failing run must not create
            return t / "run"
        if key == "resumed":  # a copy of a finished run, to --resume
            return shutil.copytree(r["cap"], t / "resumed")
        if key == "imgs":
            return self.folder("imgs")
        if key == "allbad":
            d = t / "allbad"
            d.mkdir()
            self.bad_image("zero", d), self.bad_image("text", d)
            return d
        if key.startswith("caps"):  # captions of the images of {imgs} for retrieve --eval
            ids = [p.stem for p in Path(self["imgs"]).iterdir()] + (["nowhere"] if key == "caps_unknown" else [])
            p = t / f"{key}.jsonl"
            p.write_text("".join(json.dumps({"image_id": i, "captions": ["a shape"]}) + "\n" for i in ids))
            return p
        if key.startswith("q_"):  # a VQA questions file beside its images
            return self.questions(key)
        if key == "train_bad":  # a caption JSONL with one zero-byte image among good ones
            d = self.folder("train", n=8, bad="zero")
            rows = [{"image": p.name, "caption": "a red shape"} for p in sorted(d.iterdir())]
            (d / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            return d / "captions.jsonl"
        raise KeyError(key)

    def questions(self, key: str) -> Path:
        d = self.folder(key, n=0 if key == "q_allbad" else 2, bad="zero" if key in ("q_mixed", "q_allbad") else None)
        rows = [{"question_id": k, "image": p.name, "question": "what color is the shape?"}
                for k, p in enumerate(sorted(d.iterdir()))]
        if key == "q_outside":
            rows.append({"question_id": 99, "image": "../outside.png", "question": "what color is it?"})
            shutil.copy(self.good[0], self.tmp / "outside.png")
        elif key == "q_noid":
            rows.append({"question_id": 99, "image_id": 12345, "question": "what color is it?"})
        elif key == "q_shape":
            rows.append({"image": rows[0]["image"], "question": "what color is it?"})  # no question_id
        p = d / "questions.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return p


@pytest.fixture
def locked(monkeypatch) -> set[str]:
    """Absolute paths that ``open`` refuses with PermissionError, as for a chmod 000 file read by
    a normal user (root reads those anyway). builtins.open serves the image loader, io.open
    pathlib's reads (the JSON readers)."""
    paths: set[str] = set()
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) in paths:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    return paths


# ============================================================================ the matrix

TRAIN = "--preset tiny --out {run}"
FT = "finetune --task caption --data jsonl:{img_dir_captions} " + TRAIN
PT = "pretrain --data jsonl:{img_dir_captions} " + TRAIN


def cases():
    """(id, command line, outcome, what stderr says, the output that must survive): placeholders
    {name} are files made by :class:`Sandbox`; the output is "out" (an earlier file, kept
    byte-identical), "run" (a run directory, not created), "resumed" (a run, unchanged) or None."""
    c = []

    def add(cid, argv, outcome, needles, protect=None):
        c.append(pytest.param(argv, outcome, needles, protect, id=cid))

    # ------------------------------------------------------------------ score
    s = "score {preds} {refs} --per-image {out}"
    add("score-missing", "score {missing} {refs} --per-image {out}", ERROR, ["{missing}: file not found"], "out")
    add("score-dir", "score {dir} {refs} --per-image {out}", ERROR, ["{dir}: is a directory"], "out")
    add("score-unreadable", "score {unreadable} {refs} --per-image {out}", ERROR,
        ["{unreadable}: cannot read (Permission denied)"], "out")
    add("score-empty", "score {preds} {empty} --per-image {out}", ERROR, ["{empty}: file is empty"], "out")
    add("score-utf8", "score {utf8} {refs} --per-image {out}", ERROR, ["{utf8}: not UTF-8 text"], "out")
    add("score-badjson", "score {preds} {badjson} --per-image {out}", ERROR, ["{badjson}: invalid JSON at line 1"],
        "out")
    add("score-shape", "score {preds} {shape} --per-image {out}", ERROR, ["{shape}:"], "out")
    add("score-vqa-shape", "score {preds} {shape} --task vqa --per-image {out}", ERROR, ["{shape}:"], "out")
    add("score-retrieval-shape", "score {shape} {refs} --task retrieval --per-image {out}", ERROR, ["{shape}:"],
        "out")
    add("score-per-image-dir", "score {preds} {refs} --per-image {dir}", ERROR, ["--per-image", "is a directory"])
    add("score-task", s + " --task nope", ERROR, ["Invalid value for '--task'", "nope"], "out")
    add("score-format", s + " --format nope", ERROR, ["Invalid value for '--format'", "nope"], "out")
    add("score-metrics", s + " --metrics nope", ERROR, ["nope"], "out")

    # ------------------------------------------------------------------ data
    add("data-stats-missing", "data stats jsonl:{missing}", ERROR, ["{missing}: file not found"])
    add("data-stats-dir", "data stats jsonl:{dir}", ERROR, ["{dir}: is a directory, expected a JSON or JSONL file"])
    add("data-stats-file-for-dir", "data stats folder:{file}", ERROR, ["{file}: is a file, expected a folder"])
    add("data-stats-coco-images-file", "data stats coco:{coco_shape}:{file}", ERROR,
        ["{file}: is a file, expected an image folder"])
    add("data-stats-flickr-file", "data stats flickr8k:{file}", ERROR, ["{file}: is a file, expected the Flickr8k"])
    add("data-stats-unreadable", "data stats jsonl:{unreadable}", ERROR,
        ["{unreadable}: cannot read (Permission denied)"])
    add("data-stats-empty", "data stats jsonl:{empty}", ERROR, ["{empty}: file is empty"])
    add("data-stats-utf8", "data stats jsonl:{utf8}", ERROR, ["{utf8}: not UTF-8 text"])
    add("data-stats-badjson", "data stats jsonl:{badjson}", ERROR, ["{badjson}: invalid JSON at line 1"])
    add("data-stats-shape", "data stats jsonl:{shape}", ERROR, ["{shape}: entry 1: expected a JSON object"])
    add("data-stats-coco-shape", "data stats coco:{coco_shape}:{dir}", ERROR, ["{coco_shape}: 'images' must be a list"])
    add("data-stats-kind", "data stats nosuchkind", ERROR, ["unknown kind 'nosuchkind'"])
    add("data-stats-shapes-huge", f"data stats shapes:{HUGE}", ERROR, ["N in shapes:N:SIZE must be an integer"])
    add("data-stats-shapes-negative", "data stats shapes:-5", ERROR, ["N in shapes:N:SIZE must be an integer"])
    for flag, value in (("--n", HUGE), ("--n", "0"), ("--size", "-1"), ("--size", HUGE), ("--seed", "-1"),
                        ("--seed", HUGE)):
        add(f"data-shapes{flag}={value[:6]}", f"data shapes --out {{run}} {flag} {value}", ERROR,
            [f"Invalid value for '{flag}'"], "run")
    add("data-shapes-out-file", "data shapes --out {file}", ERROR, ["{file}"])

    # ------------------------------------------------------------------ pretrain and finetune: data
    for cmd, base in (("pretrain", "pretrain " + TRAIN), ("finetune", "finetune --task caption " + TRAIN)):
        for what, spec, needle in (
            ("missing", "jsonl:{missing}", "{missing}: file not found"),
            ("dir", "jsonl:{dir}", "{dir}: is a directory"),
            ("file-for-dir", "flickr8k:{file}", "{file}: is a file, expected the Flickr8k folder"),
            ("unreadable", "jsonl:{unreadable}", "{unreadable}: cannot read (Permission denied)"),
            ("empty", "jsonl:{empty}", "{empty}: file is empty"),
            ("utf8", "jsonl:{utf8}", "{utf8}: not UTF-8 text"),
            ("badjson", "jsonl:{badjson}", "{badjson}: invalid JSON at line 1"),
            ("shape", "jsonl:{shape}", "{shape}: entry 1: expected a JSON object"),
            ("coco-shape", "coco:{coco_shape}:{dir}", "{coco_shape}: 'images' must be a list"),
            ("spec", "nosuchkind:x", "unknown kind 'nosuchkind'"),
        ):
            add(f"{cmd}-data-{what}", f"{base} --data {spec}", ERROR, [needle], "run")

        # numeric flags and choices (the data is fine: {caps_train} is a real caption file)
        good = f"{base} --data jsonl:{{caps_train}}"
        numeric = [("--max-steps", "0"), ("--max-steps", "-3"), ("--max-steps", HUGE), ("--epochs", "0"),
                   ("--epochs", HUGE), ("--lr", "-1"), ("--lr", "0"), ("--lr", "inf"), ("--lr", "nan"),
                   ("--warmup-steps", "-1"), ("--warmup-steps", HUGE), ("--grad-accum", "0"),
                   ("--grad-accum", HUGE), ("--seed", "-1"), ("--seed", HUGE), ("--workers", "-1"),
                   ("--workers", HUGE), ("--vocab-size", "1"), ("--vocab-size", HUGE), ("--beam", "0"),
                   ("--beam", HUGE), ("--eval-every", "-1"), ("--eval-every", HUGE), ("--patience", "-1"),
                   ("--label-smoothing", "-1"), ("--label-smoothing", "1"), ("--label-smoothing", "nan"),
                   ("--batch-size", "-1"), ("--batch-size", HUGE)]
        numeric += [("--batch-size", "1")] if cmd == "pretrain" else [("--batch-size", "0")]
        checked_later = {("--lr", "0"): "need lr > 0", ("--label-smoothing", "1"): "label_smoothing must be in [0, 1)"}
        for flag, value in numeric:
            add(f"{cmd}{flag}={value[:6]}", f"{good} {flag} {value}", ERROR,
                [checked_later.get((flag, value), f"Invalid value for '{flag}'")], "run")
        for flag, value, needle in (
            ("--fusion", "nope", "Invalid value for '--fusion'"),
            ("--precision", "nope", "Invalid value for '--precision'"),
            ("--precision", "fp16", "--precision fp16 needs a CUDA device"),
            ("--preset", "huge", "Invalid value for '--preset'"),
            ("--augment", "nope", "Invalid value for '--augment'"),
            ("--device", "nope", "unknown device 'nope'"),
            ("--device", "cuda:99", "--device cuda:99"),
            ("--model", "nope=1", "--model: unknown model field 'nope'"),
            ("--model", "dim=0", "dim must be positive"),
            ("--model", "heads=0", "heads must be positive"),
            ("--model", "dropout=1.5", "dropout must be in [0, 1), got 1.5"),
            ("--model", "text_layers=-1", "text_layers must not be negative"),
            ("--model", "mlp_ratio=0", "mlp_ratio must give the MLP a hidden width of at least 1"),
            ("--init", "{missing}", "{missing}"),
            ("--init", "{dir}", "--init {dir}: no checkpoint in it"),
            ("--init", "{file}", "{file}"),
            ("--resume", "{dir}", "{dir}: not a training run directory"),
            ("--resume", "{file}", "{file}"),
        ):
            cid = f"{cmd}{flag}={value.strip('{}')}"
            add(cid, f"{good} {flag} {value}", ERROR, [needle], "run")
        add(f"{cmd}-resume-bad-flag", f"{cmd} --resume {{resumed}} --max-steps 0", ERROR,
            ["Invalid value for '--max-steps'"], "resumed")
    add("pretrain-objectives", f"pretrain --data jsonl:{{caps_train}} {TRAIN} --objectives nope", ERROR,
        ["--objectives: unknown objective 'nope'"], "run")
    add("finetune-task", f"finetune --task nope --data jsonl:{{caps_train}} {TRAIN}", ERROR,
        ["Invalid value for '--task'"], "run")
    add("finetune-strict-bad-image", f"finetune --task caption --data jsonl:{{train_bad}} {TRAIN} --strict "
        "--max-steps 1 --batch-size 64 --vocab-size 400 --no-test", ERROR, ["zero.png: empty file (0 bytes)"])

    # ------------------------------------------------------------------ caption
    cap = "caption {img} --model {cap}"
    add("caption-missing", "caption {missing} --model {cap} --jsonl {out}", ERROR,
        ["{missing}: no such image file or folder"], "out")
    add("caption-empty-dir", "caption {dir} --model {cap} --jsonl {out}", ERROR, ["{dir}: no image files"], "out")
    add("caption-glob", "caption nomatch*.png --model {cap} --jsonl {out}", ERROR, ["nomatch*.png: no file matches"],
        "out")
    for kind, (_, _, problem) in BAD_IMAGES.items():
        add(f"caption-image-{kind}", f"caption {{{kind}}} --model {{cap}} --jsonl {{out}}", ERROR,
            [f"{{{kind}}}: {problem}"], "out")
        add(f"caption-folder-with-{kind}", f"caption {{mixed_{kind}}} --model {{cap}} --jsonl {{out}}", WARN,
            [f"skipping {{mixed_{kind}}}/{BAD_IMAGES[kind][0]}: {problem}", "3 images captioned, 1 skipped"])
    add("caption-folder-all-bad", "caption {allbad} --model {cap} --jsonl {out}", ERROR,
        ["no readable image to caption: all 2 are unreadable"], "out")
    add("caption-strict", "caption {mixed_zero} --model {cap} --strict --jsonl {out}", ERROR,
        ["zero.png: empty file (0 bytes)"], "out")
    for kind in ODD_IMAGES:
        add(f"caption-image-{kind}", f"caption {{{kind}}} --model {{cap}}", OK, ["{" + kind + "}\t"])
    add("caption-model-missing", "caption {img} --model {missing} --jsonl {out}", ERROR,
        ["{missing}: no such model directory"], "out")
    add("caption-model-file", "caption {img} --model {file} --jsonl {out}", ERROR, ["--model", "{file}", "is a file"],
        "out")
    add("caption-model-not-a-run", "caption {img} --model {dir} --jsonl {out}", ERROR,
        ["{dir}: no trained model in it"], "out")
    add("caption-jsonl-dir", "caption {img} --model {cap} --jsonl {dir}", ERROR, ["--jsonl", "{dir}", "is a directory"])
    add("caption-jsonl-no-folder", "caption {img} --model {cap} --jsonl {missing}/x.jsonl", ERROR,
        ["{missing}/x.jsonl: cannot write, folder {missing} does not exist"])
    add("caption-sample-and-beam", cap + " --sample --beam 2 --jsonl {out}", ERROR, ["--sample and --beam"], "out")
    for flag, value in (("--beam", "0"), ("--beam", HUGE), ("--beam", "1000"), ("--top-k", "-1"), ("--top-k", HUGE),
                        ("--top-p", "2"), ("--top-p", "nan"), ("--temperature", "-1"), ("--temperature", "inf"),
                        ("--temperature", "nan"), ("--seed", "-1"), ("--seed", HUGE), ("--max-len", "0"),
                        ("--batch-size", "0"), ("--batch-size", HUGE)):
        add(f"caption{flag}={value[:6]}", f"{cap} {flag} {value} --jsonl {{out}}", ERROR,
            [f"Invalid value for '{flag}'"], "out")
    for value in ("1000", HUGE):
        add(f"caption--max-len={value[:6]}", cap + f" --max-len {value} --jsonl {{out}}", ERROR,
            [f"max_len {value}: this model writes captions of 1 to 31 tokens"], "out")
    add("caption--device=nope", cap + " --device nope --jsonl {out}", ERROR, ["unknown device 'nope'"], "out")
    add("caption--device=cuda:99", cap + " --device cuda:99 --jsonl {out}", ERROR, ["--device cuda:99"], "out")

    # ------------------------------------------------------------------ vqa
    vqa = "vqa {img} Q --model {vqa}"
    add("vqa-missing", "vqa {missing} Q --model {vqa}", ERROR, ["{missing}: no such image file"])
    add("vqa-dir", "vqa {dir} Q --model {vqa}", ERROR, ["{dir}", "is a directory"])
    for kind, (_, _, problem) in BAD_IMAGES.items():
        add(f"vqa-image-{kind}", f"vqa {{{kind}}} Q --model {{vqa}}", ERROR, [f"{{{kind}}}: {problem}"])
    for kind in ODD_IMAGES:
        add(f"vqa-image-{kind}", f"vqa {{{kind}}} Q --model {{vqa}} --json", OK, ['"answers"'])
    add("vqa-question-empty", "vqa {img} EMPTYQ --model {vqa}", ERROR, ["the question is empty"])
    add("vqa-model-caption", vqa.replace("{vqa}", "{cap}"), ERROR, ["{cap}", "has no VQA head"])
    add("vqa-model-file", "vqa {img} Q --model {file}", ERROR, ["--model", "{file}", "is a file"])
    for flag, value in (("--top-k", "0"), ("--top-k", HUGE), ("--batch-size", "0"), ("--batch-size", HUGE)):
        add(f"vqa{flag}={value[:6]}", f"{vqa} {flag} {value}", ERROR, [f"Invalid value for '{flag}'"])
    add("vqa--device=nope", vqa + " --device nope", ERROR, ["unknown device 'nope'"])
    batch = "vqa --model {vqa} --out {out} --questions"
    for what, needle in (("missing", "{missing}: file not found"), ("empty", "{empty}: file is empty"),
                         ("utf8", "{utf8}: not UTF-8 text"), ("badjson", "{badjson}: invalid JSON at line 1"),
                         ("shape", "{shape}: question 1: expected an object"),
                         ("unreadable", "{unreadable}: cannot read (Permission denied)")):
        add(f"vqa-questions-{what}", f"{batch} {{{what}}}", ERROR, [needle], "out")
    add("vqa-questions-dir", batch + " {dir}", ERROR, ["--questions", "{dir}", "is a directory"], "out")
    add("vqa-questions-row-shape", batch + " {q_shape}", ERROR,
        ["{q_shape}: line 3: expected an object with question_id"], "out")
    add("vqa-questions-unknown-image-id", batch + " {q_noid}", ERROR, ["{q_noid}: line 3: no image for image_id 12345"],
        "out")
    add("vqa-questions-outside-root", batch + " {q_outside}", ERROR,
        ["{q_outside}: line 3: image path '../outside.png' is outside the image folder"], "out")
    add("vqa-questions-bad-image", batch + " {q_mixed}", WARN, ["zero.png: empty file (0 bytes)",
                                                                 "2 questions answered, 1 skipped"])
    add("vqa-questions-all-bad", batch + " {q_allbad}", ERROR,
        ["no question could be answered: all 1 images are unreadable"], "out")
    add("vqa-questions-images-file", batch + " {q_mixed} --images {file}", ERROR, ["--images", "{file}", "is a file"],
        "out")
    add("vqa-questions-out-dir", "vqa --model {vqa} --out {dir} --questions {q_mixed}", ERROR,
        ["--out", "{dir}", "is a directory"])
    add("vqa-questions-and-image", "vqa {img} Q --model {vqa} --out {out} --questions {q_mixed}", ERROR,
        ["give an IMAGE and a QUESTION, or --questions FILE, not both"], "out")

    # ------------------------------------------------------------------ retrieve
    ret = "retrieve dog --images {imgs} --model {ret}"
    ev = "retrieve --images {imgs} --model {ret} --out {out} --eval"
    add("retrieve-images-missing", "retrieve dog --images {missing} --model {ret}", ERROR,
        ["{missing}: no such image folder"])
    add("retrieve-images-file", "retrieve dog --images {file} --model {ret}", ERROR,
        ["--images", "{file}", "is a file"])
    add("retrieve-images-empty-dir", "retrieve dog --images {dir} --model {ret}", ERROR, ["{dir}: no image files"])
    add("retrieve-images-all-bad", "retrieve dog --images {allbad} --model {ret}", ERROR,
        ["{allbad}: no readable image to index"])
    for kind in ("zero", "truncated", "text", "bomb", "locked"):
        add(f"retrieve-folder-with-{kind}", f"retrieve dog --images {{mixed_{kind}}} --model {{ret}} --json", WARN,
            [f"skipping {{mixed_{kind}}}/{BAD_IMAGES[kind][0]}: {BAD_IMAGES[kind][2]}", "1 unreadable skipped"])
    for kind, (_, _, problem) in BAD_IMAGES.items():
        add(f"retrieve-query-image-{kind}", f"retrieve --image {{{kind}}} --images {{imgs}} --model {{ret}}", ERROR,
            [f"{{{kind}}}: {problem}"])
    for kind in ODD_IMAGES:
        add(f"retrieve-query-image-{kind}", f"retrieve --image {{{kind}}} --images {{imgs}} --model {{ret}} --json",
            OK, ['"rank": 1'])
    add("retrieve-query-image-missing", "retrieve --image {missing} --images {imgs} --model {ret}", ERROR,
        ["{missing}: no such image file"])
    add("retrieve-query-empty", "retrieve EMPTYQ --images {imgs} --model {ret}", ERROR, ["the query text is empty"])
    add("retrieve-index-dir", ret + " --index {dir}", ERROR, ["--index", "{dir}", "is a directory"])
    add("retrieve-index-corrupt", ret + " --index {index}", ERROR, ["{index}: not a readable mmcli index"])
    add("retrieve-index-empty", ret + " --index {empty}", ERROR, ["{empty}: not a readable mmcli index"])
    add("retrieve-model-missing", "retrieve dog --images {imgs} --model {missing}", ERROR,
        ["{missing}: no such model directory"])
    for what, needle in (("missing", "{missing}: file not found"), ("empty", "{empty}: file is empty"),
                         ("utf8", "{utf8}: not UTF-8 text"), ("badjson", "{badjson}: invalid JSON at line 1"),
                         ("shape", "{shape}:"), ("unreadable", "{unreadable}: cannot read (Permission denied)"),
                         ("caps_unknown", "{caps_unknown}: image 'nowhere' is not in the image folder")):
        add(f"retrieve-eval-{what}", f"{ev} {{{what}}}", ERROR, [needle], "out")
    add("retrieve-eval-dir", ev + " {dir}", ERROR, ["--eval", "{dir}", "is a directory"], "out")
    add("retrieve-captions-badjson", "retrieve --image {img} --images {imgs} --model {ret} --captions {badjson}",
        ERROR, ["{badjson}: invalid JSON at line 1"])
    for flag, value in (("-k", "0"), ("-k", HUGE), ("--rerank", "-1"), ("--rerank", HUGE),
                        ("--batch-size", "0"), ("--batch-size", HUGE)):
        add(f"retrieve{flag}={value[:6]}", f"{ret} {flag} {value}", ERROR, [f"Invalid value for '{flag}'"])
    add("retrieve--device=nope", ret + " --device nope", ERROR, ["unknown device 'nope'"])
    add("retrieve-two-queries", "retrieve dog --image {img} --images {imgs} --model {ret}", ERROR, ["give one query"])
    return c


CASES = cases()


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (relative name -> SHA-256), to show a run was left as it was."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, outcome, needles, protect", CASES)
def test_bad_input(runs, run_cli, tmp_path, locked, argv, outcome, needles, protect):
    box = Sandbox(tmp_path, runs, locked)
    box["img_dir_captions"] = box["caps_train"] = str(runs["root"] / "shapes" / "captions.jsonl")
    args = []
    for token in argv.split():
        args.append({"Q": "what color is it?", "EMPTYQ": "  "}.get(token) or token.format_map(box))
    before = tree(Path(box[protect])) if protect == "resumed" else None
    code, out, err = run_cli(*args)
    expect = [n.format_map(box) for n in needles]
    assert "Traceback" not in out + err, err
    if outcome == ERROR:
        assert code == 2, (code, out, err)
        errors = [line for line in err.splitlines() if line.startswith("mmcli: error")]
        assert len(errors) == 1, err
        assert all(n in errors[0] for n in expect), (expect, errors[0])
        assert errors[0].count("\n") == 0 and len(errors[0]) < 600
    elif outcome == WARN:
        assert code == 0, (code, out, err)
        assert "mmcli: error" not in err
        warnings = [line for line in err.splitlines() if line.startswith("mmcli:")]
        assert all(any(n in w for w in warnings) for n in expect), (expect, err)
        assert any(w.startswith("mmcli: warning: skipping") for w in warnings), err
    else:
        assert code == 0, (code, out, err)
        assert all(n in out for n in expect), (expect, out)
    if protect == "out":
        out_file = Path(box["out"])
        assert out_file.read_bytes() == PREVIOUS
        leftovers = [p.name for p in out_file.parent.iterdir() if p.name.startswith(".out.json")]
        assert not leftovers and not Path(str(out_file.with_suffix("")) + ".refs.json").exists()
    elif protect == "run":
        assert not Path(box["run"]).exists(), list(Path(box["run"]).iterdir())
    elif protect == "resumed":
        assert tree(Path(box["resumed"])) == before


def test_matrix_covers_every_command():
    commands = {p.values[0].split()[0] for p in CASES}
    assert commands == {"score", "data", "pretrain", "finetune", "caption", "vqa", "retrieve"}
    assert len(CASES) >= 200


def test_a_bad_image_among_good_ones_is_skipped_and_the_rest_written(runs, run_cli, tmp_path, locked):
    box = Sandbox(tmp_path, runs, locked)
    code, out, err = run_cli("caption", box["mixed_truncated"], "--model", runs["cap"], "--jsonl", box["out"])
    assert code == 0, err
    rows = [json.loads(line) for line in Path(box["out"]).read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [p.stem for p in box.good[:3]]
    assert err.count("mmcli: warning: skipping") == 1 and "truncated.png" in err


def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, MMCLI_DEBUG="1", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "mmcli", "data", "stats", "jsonl:missing.jsonl"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError: missing.jsonl: file not found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mmcli", "data", "stats", "jsonl:missing.jsonl"],
                       capture_output=True, text=True, env=dict(env, MMCLI_DEBUG="0"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == "mmcli: error: missing.jsonl: file not found\n"


def test_extreme_aspect_ratios_are_cropped_to_their_middle_before_resizing():
    """A 100,000 x 1 image costs what a small one costs (it took minutes), and an image up to
    8:1 goes through the transform exactly as before (no crop)."""
    import time

    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from mmcli.data.images import MAX_ASPECT, limit_aspect, make_transform, resize_center_crop

    config = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 0.95, "crop_mode": "center"}
    t = make_transform(config)
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (1, 100_000, 3), dtype=np.uint8))
    start = time.perf_counter()
    x = t(wide)
    assert x.shape == (3, 64, 64) and time.perf_counter() - start < 2
    assert limit_aspect(wide).size == (MAX_ASPECT, 1) and torch.equal(x, t(wide.crop((49_996, 0, 50_004, 1))))
    assert resize_center_crop(wide, 67).size == (67, 67)
    plain = v2.Compose([v2.Resize(67), v2.CenterCrop(64), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize([0.5] * 3, [0.5] * 3)])
    for size in ((80, 10), (10, 80), (64, 64), (33, 70)):  # up to 8:1: untouched
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        assert limit_aspect(img) is img and torch.equal(t(img), plain(img))


# ============================================================================ malicious pickles


class Payload:
    """Unpickling this creates ``marker``: what a real attack would replace with any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, as_torch: bool = False) -> None:
    """Replace ``path`` with the payload: a raw pickle, or a torch.save zip as a .pt file would be."""
    path.unlink(missing_ok=True)
    if as_torch:
        torch.save({"optimizer": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))


def test_the_payload_is_live(tmp_path):
    """Unpickled, the planted files do create the marker: the test below proves something."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    plant(tmp_path / "x.pt", marker, as_torch=True)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


PLANTED = [  # (id, run to copy, files to replace (relative; .pt ones as torch zips), command, outcome, stderr)
    ("caption-weights", "cap", ["best/model.safetensors"], "caption {img} --model {run}", ERROR,
     "best/model.safetensors: truncated or corrupt, not a valid safetensors file"),
    ("caption-tokenizer", "cap", ["best/tokenizer.model"], "caption {img} --model {run}", ERROR,
     "best/tokenizer.model"),
    ("vqa-weights", "vqa", ["best/model.safetensors"], "vqa {img} Q --model {run}", ERROR,
     "best/model.safetensors: truncated or corrupt"),
    ("vqa-answers", "vqa", ["best/answers.json"], "vqa {img} Q --model {run}", ERROR, "best/answers.json"),
    ("retrieve-weights", "ret", ["best/model.safetensors"], "retrieve dog --images {imgs} --model {run}", ERROR,
     "best/model.safetensors: truncated or corrupt"),
    ("retrieve-index", "ret", [], "retrieve dog --images {imgs} --model {run} --index {evil}", ERROR,
     "{evil}: not a readable mmcli index"),
    ("finetune-init-weights", "pt", ["best/model.safetensors", "last/model.safetensors"],
     "finetune --task caption --init {run} --data jsonl:{caps_train} --out {new}", ERROR,
     "best/model.safetensors: truncated or corrupt"),
    ("pretrain-init-weights", "pt", ["best/model.safetensors", "last/model.safetensors"],
     "pretrain --init {run} --data jsonl:{caps_train} --out {new}", ERROR,
     "best/model.safetensors: truncated or corrupt"),
    ("finetune-backbone-weights", "cap", [],
     "finetune --task caption --preset tiny --model backbone_weights={evil_pt} --data jsonl:{caps_train} --out {new}",
     ERROR, "{evil_pt}: refused: it contains Python objects other than tensors and plain values"),
    ("finetune-resume-weights", "cap", ["last/model.safetensors"], "finetune --resume {run}", ERROR,
     "last/model.safetensors: truncated or corrupt"),
    ("finetune-resume-train-state", "cap", ["last/train_state.pt"], "finetune --resume {run}", ERROR,
     "last/train_state.pt: refused: it contains Python objects other than tensors and plain values"),
    ("pretrain-resume-train-state", "pt", ["last/train_state.pt"], "pretrain --resume {run}", ERROR,
     "last/train_state.pt: refused"),
    ("pretrain-resume-train-state-raw", "pt", ["last/train_state.pt!raw"], "pretrain --resume {run}", ERROR,
     "last/train_state.pt: refused"),
    # files mmcli never reads: ignored, the commands work
    ("caption-optimizer-file", "cap", ["best/optimizer.pt", "best/scheduler.pkl", "best/rng_state.pth"],
     "caption {img} --model {run}", OK, ""),
    ("resume-optimizer-file", "cap", ["last/optimizer.pt", "last/optimizer.pkl"],
     "finetune --resume {run} --max-steps 1", OK, "resuming"),
]


@pytest.mark.parametrize("copy, files, argv, outcome, needle", [pytest.param(*p[1:], id=p[0]) for p in PLANTED])
def test_planted_pickles_are_never_unpickled(runs, run_cli, tmp_path, locked, copy, files, argv, outcome, needle):
    """A pickle planted where a command reads a checkpoint or state is never unpickled: the
    command fails with one line naming the file (or ignores a file it never reads)."""
    marker = tmp_path / "pwned"
    box = Sandbox(tmp_path, runs, locked)
    run = shutil.copytree(runs[copy], tmp_path / "run-copy")
    for f in files:
        name, _, raw = f.partition("!")
        plant(run / name, marker, as_torch=name.endswith(".pt") and not raw)
    plant(tmp_path / "evil.index", marker)
    plant(tmp_path / "evil.pt", marker, as_torch=True)
    box.update(run=str(run), evil=str(tmp_path / "evil.index"), evil_pt=str(tmp_path / "evil.pt"),
               new=str(tmp_path / "new-run"), caps_train=str(runs["root"] / "shapes" / "captions.jsonl"))
    args = [{"Q": "what color is it?"}.get(t) or t.format_map(box) for t in argv.split()]
    code, out, err = run_cli(*args)
    assert not marker.exists(), "a planted pickle was unpickled"
    assert "Traceback" not in out + err
    if outcome == ERROR:
        errors = [line for line in err.splitlines() if line.startswith("mmcli: error")]
        assert code == 2 and len(errors) == 1, err
        assert needle.format_map(box) in errors[0], errors[0]
        assert not (tmp_path / "new-run").exists()
    else:
        assert code == 0, err
        assert needle in err


def test_a_pickle_in_the_image_cache_is_never_unpickled(tmp_path):
    """The decoded-image cache (``--image-cache``) is state too: its pixels are read with
    numpy's pickle-free loader, so a planted pickle is refused (and the cache rebuilt)."""
    from mmcli.data.images import ImageCache
    from mmcli.errors import UserError

    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ImageCache.INDEX).write_text(json.dumps({"paths": [], "keys": [], "size": 8, "bad": []}))
    plant(cache / ImageCache.ARRAY, marker)
    with pytest.raises(UserError, match="broken image cache"):
        ImageCache.open(cache)
    assert not marker.exists()


# ============================================================================ image paths outside their folder


@pytest.fixture
def outside(runs, tmp_path) -> Path:
    """A caption JSONL in data/ whose second image is ../outside.png (one level up)."""
    data = tmp_path / "data"
    data.mkdir()
    good = sorted(runs["images"].iterdir())
    for p in good[:8]:
        shutil.copy(p, data / p.name)
    shutil.copy(good[8], tmp_path / "outside.png")
    rows = [{"image": p.name, "caption": "a red shape"} for p in good[:8]]
    rows.insert(1, {"image": "../outside.png", "caption": "a shape outside"})
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data / "captions.jsonl"


@pytest.mark.parametrize("command", [
    "data stats jsonl:{f}",
    "pretrain --data jsonl:{f} --preset tiny --out run --max-steps 1 --batch-size 8 --vocab-size 300 --no-test",
    "finetune --task caption --data jsonl:{f} --preset tiny --out run --max-steps 1 --batch-size 8 --vocab-size 300 "
    "--no-test",
])
def test_image_paths_outside_the_folder_need_the_flag(run_cli, outside, command):
    args = command.format(f=outside).split()
    code, out, err = run_cli(*args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"mmcli: error: {outside}: line 2: image path '../outside.png' is outside the image folder ")
    assert not Path("run").exists()
    code, out, err = run_cli(*args, "--allow-outside-root")
    assert code == 0, err
    if args[0] == "data":
        assert json.loads(run_cli(*args, "--allow-outside-root", "--json")[1])["splits"]["all"]["images"] == 9
    else:
        assert json.loads(Path("run/config.json").read_text())["train"]["allow_outside_root"] is True


def test_vqa_questions_outside_the_folder_need_the_flag(runs, run_cli, tmp_path, locked):
    box = Sandbox(tmp_path, runs, locked)
    args = ("vqa", "--questions", box["q_outside"], "--model", runs["vqa"], "--out", tmp_path / "answers.json")
    code, out, err = run_cli(*args)
    assert code == 2 and "'../outside.png' is outside the image folder" in err and err.count("\n") == 1
    code, out, err = run_cli(*args, "--allow-outside-root")
    assert code == 0, err
    assert len(json.loads((tmp_path / "answers.json").read_text())) == 3


def test_help_documents_the_flag(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # (at 80 columns rich shortens the long option name)
    for cmd in (["finetune"], ["pretrain"], ["data", "stats"], ["vqa"]):
        code, out, _ = run_cli(*cmd, "--help")
        assert code == 0 and "--allow-outside-root" in out, cmd


def test_retrieve_reads_the_captions_file_before_any_work(runs, run_cli, tmp_path, locked):
    """A bad --eval or --captions file fails before the model is loaded and the folder indexed."""
    box = Sandbox(tmp_path, runs, locked)
    for args in (("--eval", box["badjson"], "--out", box["out"]), ("--image", box["img"], "--captions", box["empty"])):
        code, out, err = run_cli("retrieve", "--images", box["imgs"], "--model", runs["ret"], *args)
        assert code == 2 and err.count("\n") == 1 and "mmcli: index" not in err, err
        assert not (tmp_path / "imgs.mmcli-index").exists()


# ============================================================================ docs/bad-input.md

DOC = REPO / "docs" / "bad-input.md"
KEPT = {"out": "yes (`<out>` byte-identical)", "run": "yes (`<run>` not created)",
        "resumed": "yes (`<resumed>` unchanged)", None: "-"}


def matrix_markdown() -> str:
    """The matrix as the Markdown table of docs/bad-input.md (``python tests/test_bad_input.py`` prints it)."""
    def show(text: str) -> str:
        return text.replace("{", "<").replace("}", ">").replace("|", "\\|").replace("\t", "<TAB>")

    rows = ["| command | case | command line | exit | what the test asserts | output left untouched |",
            "|---|---|---|---|---|---|"]
    for p in CASES:
        argv, outcome, needles, protect = p.values
        said = " and ".join(f"`{show(n)}`" for n in needles)
        if outcome == ERROR:
            exit_code, stderr, kept = "2", f"one `mmcli: error:` line with {said}", KEPT[protect]
        elif outcome == WARN:
            exit_code, stderr, kept = "0", f"a `mmcli: warning: skipping` line; stderr has {said}", "written, good images only"
        else:
            exit_code, stderr, kept = "0", f"accepted: stdout has {said}", "-"
        rows.append(f"| {argv.split()[0]} | {p.id} | `{show(argv)}` | {exit_code} | {stderr} | {kept} |")
    return "\n".join(rows) + "\n"


def test_docs_table_is_the_matrix():
    text = DOC.read_text(encoding="utf-8")
    begin, end = "<!-- matrix: begin -->\n", "<!-- matrix: end -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0] == matrix_markdown(), \
        "docs/bad-input.md is out of date: paste the output of `python tests/test_bad_input.py` between its markers"


if __name__ == "__main__":
    print(matrix_markdown(), end="")
