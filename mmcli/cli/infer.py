"""``mmcli caption`` and ``mmcli vqa``: a trained run directory used on the user's own images."""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from .options import (MAX_BATCH, MAX_BEAM, MAX_SEED, MAX_TOP, InferPrecision, Precision, allow_outside_root_option,
                      finite)

# ---------------------------------------------------------------------------- shared options
ModelDir = Annotated[Path, typer.Option(
    "--model", "-m", help="A run directory from `mmcli finetune` (its best/, else last/) or a checkpoint directory.",
    show_default=False, file_okay=False)]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")]
BatchSize = Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="Images per forward pass.")]
Explain = Annotated[Optional[Path], typer.Option(
    "--explain", metavar="OUT.png", help="Draw where the model looked: a grid of panels, the image under the "
    "attention over it for each generated word (caption) or for the answer (vqa); not for late fusion.",
    show_default=False, dir_okay=False)]
Strict = Annotated[bool, typer.Option(help="Stop at the first unreadable image instead of skipping it with a warning.")]

CAPTION_SHORT = "Caption images with a trained run: plain lines, JSON, or a COCO results file for `mmcli score`."
CAPTION_HELP = """Caption image files, folders (every image in them, sorted) and glob patterns with a trained captioning run.

Decoding: greedy by default, --beam N for beam search, --sample for sampling (--top-k, --top-p, --temperature, --seed). Images are captioned in batches of --batch-size; a batch gives the same captions as each image alone.

Output: one `PATH<TAB>CAPTION` line per image, or --json (a JSON list on stdout), or --jsonl FILE (COCO results rows {"image_id", "caption"}, image_id = the file name without its extension, written atomically), which `mmcli score FILE REFS` reads directly. An unreadable image among several is skipped with a warning and counted (--strict: an error); a single unreadable image, or a path that does not exist, is an error.
"""
CAPTION_EPILOG = """[b]Examples[/b]

  mmcli caption photo.jpg --model runs/cap

  mmcli caption photos/ 'more/*.png' --model runs/cap --beam 3 --jsonl preds.jsonl

  mmcli caption photo.jpg --model runs/cap --sample --top-p 0.9 --seed 1
"""

VQA_SHORT = "Answer questions about images with a trained VQA run: top-k answers, or a results file for `mmcli score`."
VQA_HELP = """Answer a question about an image with a trained VQA run: the answer with its score and the --top-k alternatives.

Batch mode: --questions FILE (a VQA v2 questions JSON {"questions": [{"question_id", "image_id", "question"}]}, a JSON list or JSONL of such rows; a row may name its image file with "image" instead of "image_id") answers every question, each image encoded once for all its questions, and writes a VQA results file [{"question_id", "answer"}] to --out (atomically), which `mmcli score --task vqa OUT ANNOTATIONS` reads. Image paths are relative to --images (default: the questions file's folder); an "image_id" is found in --images as a file whose name is that id, or ends in it after zeros (COCO_val2014_000000000042.jpg for 42).
"""
VQA_EPILOG = """[b]Examples[/b]

  mmcli vqa shape.png "what color is the shape?" --model runs/easyvqa

  mmcli vqa --questions questions.jsonl --images imgs/ --model runs/easyvqa --out answers.json
"""


# ---------------------------------------------------------------------------- finding images
def expand_images(specs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, each once."""
    from ..data.readers import IMAGE_EXTENSIONS

    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: no image files in this folder")
            out += found
        elif p.exists():
            out.append(p)
        elif glob.has_magic(spec):
            found = sorted(Path(f) for f in glob.glob(spec) if Path(f).is_file())
            if not found:
                raise UserError(f"{spec}: no file matches this pattern")
            out += found
        else:
            raise UserError(f"{p}: no such image file or folder")
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _read_images(model, paths: list[Path], strict: bool):
    """(readable paths, their tensors); an unreadable one is warned about and skipped, or an error."""
    from ..data.images import load_images_or_skip

    kept, pics = load_images_or_skip(paths, strict)
    ok = [paths[k] for k in kept]
    return ok, (model.images_tensor(pics) if pics else None)


def _progress(total: int, what: str):
    """A rich progress bar on stderr for long work on a terminal; else a no-op."""
    from contextlib import nullcontext

    if total < 64 or not sys.stderr.isatty():
        return nullcontext(lambda n: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class _Bar:
        def __enter__(self):
            self.p = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=True)
            self.p.__enter__()
            self.t = self.p.add_task(what, total=total)
            return lambda n: self.p.advance(self.t, n)

        def __exit__(self, *exc):
            return self.p.__exit__(*exc)

    return _Bar()


# ---------------------------------------------------------------------------- caption
def caption(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False)],
    model: ModelDir = ...,
    beam: Annotated[int, typer.Option(min=1, max=MAX_BEAM, help="Beam width; 1 = greedy.")] = 1,
    sample: Annotated[bool, typer.Option("--sample", help="Sample each word instead of the most likely.")] = False,
    top_k: Annotated[int, typer.Option(min=0, max=MAX_TOP,
                                       help="With --sample: draw from the K most likely words (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, callback=finite,
                                         help="With --sample: nucleus sampling mass.")] = 1.0,
    temperature: Annotated[float, typer.Option(min=0.0, callback=finite,
                                               help="With --sample: softmax temperature.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(min=0, max=MAX_SEED, help="With --sample: the seed, for repeatable "
                                                "samples.", show_default=False)] = None,
    max_len: Annotated[Optional[int], typer.Option(min=1, help="Most tokens per caption.  \\[default: the model's]",
                                                   show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {image, image_id, caption}.")] = False,
    jsonl: Annotated[Optional[Path], typer.Option(help="Write COCO results rows {image_id, caption} to this JSONL file.",
                                                  show_default=False, dir_okay=False)] = None,
    batch_size: BatchSize = 32,
    explain: Explain = None,
    strict: Strict = False,
    device: Device = "auto",
    precision: InferPrecision = Precision.auto,
    compile: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the decoding step for batches of images: on a 2-core CPU, at the "
        "benchmark's shape, greedy captioning 1.17x faster in bf16 and 1.01-1.04x in fp32 (BENCHMARKS.md), after "
        "about a minute of compiling at the first batch (kept on disk for later runs); pays on large folders. The "
        "captions are the eager ones up to float rounding.")]
    = False,
) -> None:
    from ..api import load
    from ..fileio import atomic_write_text

    if sample and beam > 1:
        raise UserError("--sample and --beam are two decoders; choose one")
    paths = expand_images(images)
    if explain is not None and len(paths) != 1:
        raise UserError(f"--explain draws one image's caption; {len(paths)} images were given")
    if len(paths) == 1:  # one image: an unreadable one is the error itself (its name and the problem)
        load_one_image(paths[0])
    m = load(model, device, precision.value, compile=compile)
    if explain is not None:
        from ..explain import caption_attention, draw_panels

        words, maps = caption_attention(m, paths[0], beam=beam, max_len=max_len, sample=sample, top_k=top_k,
                                        top_p=top_p, temperature=temperature, seed=seed)
        n = draw_panels(paths[0], maps, words, explain, title=" ".join(words))
        print(f"{paths[0]}\t{' '.join(words)}")
        print(f"mmcli: wrote {explain} ({n} panels, one per word)", file=sys.stderr)
        return
    results, skipped = [], 0
    with _progress(len(paths), "captioning") as advance:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i: i + batch_size]
            ok, batch = _read_images(m, chunk, strict)
            skipped += len(chunk) - len(ok)
            if ok:
                caps = m.caption_tensor(batch, beam=beam, max_len=max_len, sample=sample, top_k=top_k, top_p=top_p,
                                        temperature=temperature, seed=seed)
                results += [{"image": str(p), "image_id": p.stem, "caption": c} for p, c in zip(ok, caps)]
            advance(len(chunk))
    if not results:  # (before writing: an earlier --jsonl file is kept)
        raise UserError(f"no readable image to caption: all {len(paths)} are unreadable (first: {paths[0]}; "
                        "see the warnings above)")
    if jsonl is not None:
        atomic_write_text(jsonl, "".join(json.dumps({"image_id": r["image_id"], "caption": r["caption"]}) + "\n"
                                         for r in results))
    if as_json:
        print(json.dumps(results, indent=1))
    elif jsonl is None:
        for r in results:
            print(f"{r['image']}\t{r['caption']}")
    if jsonl is not None or skipped:
        print(f"mmcli: {len(results)} images captioned{f', {skipped} skipped (unreadable)' if skipped else ''}"
              f"{f'; wrote {jsonl}' if jsonl is not None else ''}", file=sys.stderr)


# ---------------------------------------------------------------------------- vqa
def vqa(
    image: Annotated[Optional[Path], typer.Argument(help="The image (leave out with --questions).",
                                                    show_default=False, dir_okay=False)] = None,
    question: Annotated[Optional[str], typer.Argument(help="The question.", show_default=False)] = None,
    model: ModelDir = ...,
    top_k: Annotated[int, typer.Option(min=1, max=MAX_TOP, help="How many answers to show (at most the model's "
                                       "answers).")] = 5,
    questions: Annotated[Optional[Path], typer.Option(help="Batch mode: a questions file (see above).",
                                                      show_default=False, dir_okay=False)] = None,
    images: Annotated[Optional[Path], typer.Option(help="Batch mode: the folder image paths and ids are resolved in. "
                                                   "\\[default: the questions file's folder]", show_default=False,
                                                   file_okay=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Batch mode: the VQA results file to write.", show_default=False,
                                                dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
    batch_size: BatchSize = 32,
    explain: Explain = None,
    strict: Strict = False,
    device: Device = "auto",
    precision: InferPrecision = Precision.auto,
    allow_outside_root: Annotated[bool, allow_outside_root_option()] = False,
) -> None:
    from ..api import load

    if questions is not None:
        if image is not None or question is not None:
            raise UserError("give an IMAGE and a QUESTION, or --questions FILE, not both")
        if out is None:
            raise UserError("--questions needs --out RESULTS.json (the VQA results file to write)")
        if explain is not None:
            raise UserError("--explain draws one question about one image; leave out --questions")
        rows = read_questions(questions, images, allow_outside_root)
        m = load(model, device, precision.value)
        _vqa_batch(m, rows, out, batch_size, strict)
        return
    if image is None or question is None:
        raise UserError("give an IMAGE and a QUESTION (e.g. mmcli vqa img.png \"what color is it?\" --model RUN), "
                        "or --questions FILE --out RESULTS.json")
    if not question.strip():
        raise UserError("the question is empty")
    if not image.exists():
        raise UserError(f"{image}: no such image file")
    pic = load_one_image(image)
    m = load(model, device, precision.value)
    batch = m.images_tensor([pic])
    answers = m.answer_tensor(batch, [0], [question], top_k)[0]
    if explain is not None:
        from ..explain import draw_panels, vqa_attention

        answer, maps = vqa_attention(m, image, question)
        draw_panels(image, maps, [answer], explain, title=question)
        print(f"mmcli: wrote {explain} (where the model looked for its answer)", file=sys.stderr)
    if as_json:
        print(json.dumps({"image": str(image), "question": question,
                          "answers": [{"answer": a, "score": round(p, 6)} for a, p in answers]}))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table()
    t.add_column("answer")
    t.add_column("score", justify="right")
    for a, p in answers:
        t.add_row(a, f"{p:.4f}")
    console = Console()
    console.print(f"{escape(question)}  [dim]({escape(str(image))})[/dim]", highlight=False, soft_wrap=True)
    console.print(t)


def load_one_image(path: Path):
    """The image at ``path``, or the BadImage error (a UserError: one line naming the file and the problem)."""
    from ..data.images import load_image

    return load_image(path)


def read_questions(path: Path, images: Path | None, allow_outside_root: bool = False) -> list[dict]:
    """Question rows {question_id, image (a Path), question} from a VQA v2 questions JSON, a JSON
    list or JSONL; one UserError line naming the file and row for any problem. An "image" path may
    not lead outside ``images`` (default: the file's folder) unless ``allow_outside_root``."""
    from ..data.readers import _image_path
    from ..metrics.jsonio import read_json_or_jsonl

    data, where = read_json_or_jsonl(path)
    if where is None:
        data = data.get("questions") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a VQA questions file: {{\"questions\": [...]}}, a JSON list or JSONL")
        where = [f"question {k + 1}" for k in range(len(data))]
    root = images or path.parent
    by_id = _image_ids(root) if any(isinstance(r, dict) and "image" not in r for r in data) else {}
    rows = []
    for r, w in zip(data, where):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) or "question_id" not in r:
            raise UserError(f"{path}: {w}: expected an object with question_id, question and image or image_id")
        if not r["question"].strip():
            raise UserError(f"{path}: {w}: the question is empty")
        if "image" in r:
            img = Path(_image_path(os.path.abspath(root), r["image"], str(path), w, allow_outside_root))
        elif "image_id" in r:
            img = by_id.get(str(r["image_id"]))
            if img is None:
                raise UserError(f"{path}: {w}: no image for image_id {r['image_id']} in {root}")
        else:
            raise UserError(f"{path}: {w}: the row names no image (image or image_id)")
        rows.append({"question_id": r["question_id"], "image": img, "question": r["question"]})
    if not rows:
        raise UserError(f"{path}: no questions")
    return rows


def _image_ids(root: Path) -> dict[str, Path]:
    """Image files of ``root`` by name without extension, and by the number at the end of it without
    leading zeros (COCO_val2014_000000000042 -> "42")."""
    import re

    from ..data.readers import IMAGE_EXTENSIONS

    if not root.is_dir():
        raise UserError(f"{root}: no such image folder")
    ids: dict[str, Path] = {}
    for f in sorted(root.iterdir()):
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            ids.setdefault(f.stem, f)
            m = re.search(r"(\d+)$", f.stem)
            if m:
                ids.setdefault(str(int(m.group(1))), f)
    return ids


def _vqa_batch(m, rows: list[dict], out: Path, batch_size: int, strict: bool) -> None:
    """Answer every row, each image encoded once for its questions; write [{question_id, answer}]."""
    from ..fileio import atomic_write_text

    by_image: dict[Path, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    groups = list(by_image.items())
    results, skipped = [], 0
    with _progress(len(groups), "answering") as advance:
        for i in range(0, len(groups), batch_size):
            chunk = groups[i: i + batch_size]
            ok, batch = _read_images(m, [p for p, _ in chunk], strict)
            keep = [(p, qs) for p, qs in chunk if p in set(ok)]
            skipped += sum(len(qs) for p, qs in chunk if p not in set(ok))
            if keep:
                qs = [q for _, g in keep for q in g]
                index = [k for k, (_, g) in enumerate(keep) for _ in g]
                answers = m.answer_tensor(batch, index, [q["question"] for q in qs], 1)
                results += [{"question_id": q["question_id"], "answer": a[0][0]} for q, a in zip(qs, answers)]
            advance(len(chunk))
    if not results:
        raise UserError(f"no question could be answered: all {len(groups)} images are unreadable "
                        f"(first: {groups[0][0]}; see the warnings above)")
    atomic_write_text(out, json.dumps(results) + "\n")
    print(f"mmcli: {len(results)} questions answered{f', {skipped} skipped (unreadable image)' if skipped else ''}; "
          f"wrote {out}", file=sys.stderr)
