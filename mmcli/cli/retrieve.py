"""``mmcli retrieve``: search an image folder by text or by image, or rank a captioned set for scoring."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from .infer import BatchSize, Device, ModelDir, Strict, load_one_image
from .options import MAX_TOP, InferPrecision, Precision

SHORT = "Search an image folder by text or image with a trained run (an embedding index, kept up to date)."
HELP = """Search the images of a folder with a trained run's image and text embeddings.

The first search embeds every image of --images into an index (a file beside the folder, DIR.mmcli-index, or --index FILE); later searches reuse it and embed only images added or changed since, and forget deleted ones. An index made by another model is rebuilt.

[b]Queries[/b]: a text ("a dog on the beach": text-to-image); --image IMG: the images most like it (image-to-image), or with --captions FILE the captions that best describe it (image-to-text; a JSON or JSONL captions file, as `mmcli score` reads). --rerank N re-scores the top N of a text query with the model's image-text matching (ITM) head. Results: a table of rank, score and path, or --json.

[b]Evaluation[/b]: --eval CAPTIONS (captions of images in --images, ids = file names without extension) ranks every image for every caption and every caption for every image, and writes the ranking file (--out) and its ground truth (OUT with .refs.json) for `mmcli score OUT REFS --task retrieval`. Each ranked list keeps the best max(-k, 10): R@1/5/10 are exact; the median rank needs -k as large as the set.
"""
EPILOG = """[b]Examples[/b]

  mmcli retrieve "a dog on the beach" --images photos/ --model runs/ret -k 5

  mmcli retrieve --image query.jpg --images photos/ --model runs/ret

  mmcli retrieve --eval captions.jsonl --images photos/ --model runs/ret --out ranking.json
"""


def retrieve(
    query: Annotated[Optional[str], typer.Argument(help="The text to search for.", show_default=False)] = None,
    images: Annotated[Path, typer.Option(help="The image folder to search.", show_default=False,
                                         file_okay=False)] = ...,
    model: ModelDir = ...,
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=MAX_TOP, help="How many results.")] = 5,
    image: Annotated[Optional[Path], typer.Option("--image", help="Search with this image instead of a text.",
                                                  show_default=False, dir_okay=False)] = None,
    captions: Annotated[Optional[Path], typer.Option(help="With --image: rank these captions for it instead of "
                                                     "the folder's images.", show_default=False, dir_okay=False)] = None,
    rerank: Annotated[int, typer.Option(min=0, max=1000, help="Re-score the top N of a text query with the ITM "
                                        "head (0 = off; they are scored in one batch).")] = 0,
    index: Annotated[Optional[Path], typer.Option(help="The index file.  \\[default: DIR.mmcli-index beside "
                                                  "the folder]", show_default=False, dir_okay=False)] = None,
    eval_captions: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation: rank this captions file "
                                                          "both ways (see above).", show_default=False,
                                                          dir_okay=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="With --eval: the ranking file to write.", show_default=False,
                                                dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    batch_size: BatchSize = 64,
    strict: Strict = False,
    device: Device = "auto",
    precision: InferPrecision = Precision.auto,
) -> None:
    from ..api import load
    from ..search import default_index_path, top_k, update_index

    modes = sum(x is not None for x in (query, image, eval_captions))
    if modes != 1:
        raise UserError("give one query: a TEXT, --image IMG, or --eval CAPTIONS (see mmcli retrieve --help)")
    if query is not None and not query.strip():
        raise UserError("the query text is empty")
    if captions is not None and image is None:
        raise UserError("--captions ranks captions for an --image query")
    if eval_captions is not None and out is None:
        raise UserError("--eval needs --out RANKING.json")
    if rerank and query is None:
        raise UserError("--rerank re-scores a text query's images")
    if image is not None and not image.exists():
        raise UserError(f"{image}: no such image file")
    # the user's files are read before any work: an unreadable one is its error, not minutes later
    query_image = load_one_image(image) if image is not None else None
    caps = _captions(captions if image is not None else eval_captions)
    m = load(model, device, precision.value)
    idx_path = index or default_index_path(images)
    idx, counts = update_index(m, images, idx_path, batch_size, strict)
    bad = f", {counts['skipped']} unreadable skipped" if counts["skipped"] else ""
    print(f"mmcli: index {idx_path}: {len(idx.paths)} images ({counts['embedded']} embedded, {counts['reused']} "
          f"reused, {counts['removed']} removed{bad})", file=sys.stderr)
    if eval_captions is not None:
        _evaluate(m, idx, eval_captions, caps, out, k)
        return
    if image is not None and captions is not None:
        caps = [(iid, c) for iid, cs in caps.items() for c in cs]
        keys = _embed_texts(m, [c for _, c in caps], batch_size)
        scores, best = top_k(m.embed_images([query_image]), keys, k)
        rows = [{"rank": r + 1, "score": float(s), "image_id": caps[i][0], "caption": caps[i][1]}
                for r, (s, i) in enumerate(zip(scores[0].tolist(), best[0].tolist()))]
        return _show(rows, as_json, ("caption", "image_id"), f"captions for {image}")
    q = m.embed_images([query_image]) if image is not None else m.embed_texts([query])
    scores, best = top_k(q, idx.embeddings, max(k, rerank))
    hits = [(float(s), idx.paths[i]) for s, i in zip(scores[0].tolist(), best[0].tolist())]
    if rerank:
        hits = _rerank(m, query, images, hits[:rerank]) + hits[rerank:]
    rows = [{"rank": r + 1, "score": s, "image": str(images / p)} for r, (s, p) in enumerate(hits[:k])]
    _show(rows, as_json, ("image",), f"images for {query!r}" if query is not None else f"images like {image}")


def _captions(path: Path | None) -> dict | None:
    """The captions file of --eval or --captions ({image_id: [captions]}, never empty), or None."""
    if path is None:
        return None
    from ..metrics.formats import load_captions

    return load_captions(path)  # (one UserError line for a missing, unreadable, malformed or empty file)


def _embed_texts(m, texts: list[str], batch_size: int):
    import torch

    return torch.cat([m.embed_texts(texts[i: i + batch_size]) for i in range(0, len(texts), batch_size)])


def _rerank(m, query: str, folder: Path, hits: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """The hits re-scored by the ITM head's match probability, best first."""
    prob = m.match([folder / p for _, p in hits], query)
    return sorted(((p, path) for p, (_, path) in zip(prob, hits)), key=lambda x: -x[0])


def _show(rows: list[dict], as_json: bool, columns: tuple[str, ...], title: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("rank", justify="right")
    t.add_column("score", justify="right")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(str(r["rank"]), f"{r['score']:.4f}", *[str(r[c]) for c in columns])
    Console().print(t)


def _evaluate(m, idx, captions_file: Path, caps: dict, out: Path, k: int) -> None:
    """Rank the index's images for each caption (``caps``, read from ``captions_file``) and the
    captions for each image; write the ranking and its ground truth."""
    from ..fileio import atomic_write_text
    from ..search import top_k

    by_id = {Path(p).stem: k for k, p in enumerate(idx.paths)}
    missing = [i for i in caps if i not in by_id]
    if missing:
        raise UserError(f"{captions_file}: image {missing[0]!r} is not in the image folder "
                        f"({len(missing)} of {len(caps)} missing)")
    image_ids = list(caps)
    rows = [by_id[i] for i in image_ids]
    img = idx.embeddings[rows]
    texts = [(f"{i}#{n}", c) for i in image_ids for n, c in enumerate(caps[i])]
    txt = _embed_texts(m, [c for _, c in texts], 64)
    kk = max(k, 10)
    _, t2i = top_k(txt, img, kk)
    _, i2t = top_k(img, txt, kk)
    ranking = {"text_to_image": {texts[q][0]: [image_ids[j] for j in row] for q, row in enumerate(t2i.tolist())},
               "image_to_text": {image_ids[q]: [texts[j][0] for j in row] for q, row in enumerate(i2t.tolist())}}
    refs = {i: [f"{i}#{n}" for n in range(len(caps[i]))] for i in image_ids}
    refs_path = out.with_name(out.stem + ".refs.json")
    atomic_write_text(out, json.dumps(ranking) + "\n")
    atomic_write_text(refs_path, json.dumps(refs) + "\n")
    print(f"mmcli: ranked {len(image_ids)} images and {len(texts)} captions (top {kk}); wrote {out} and {refs_path}; "
          f"score with: mmcli score {out} {refs_path} --task retrieval", file=sys.stderr)
