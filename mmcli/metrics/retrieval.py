"""Cross-modal retrieval evaluation (R@K, median and mean rank) from a ranking file.

Ranking (PREDS), JSON::

    {"text_to_image": {"<caption_id>": ["<image_id>", ...]},   # best first
     "image_to_text": {"<image_id>": ["<caption_id>", ...]}}

Either direction may be absent (or null); what is there is scored, and at least
one must be there. A ranked list may be truncated (e.g. the top 10 only) or
empty; an item may appear only once in a list.

Ground truth (REFS), which captions belong to which image, one of:

* a mapping ``{"<image_id>": ["<caption_id>", ...]}``;
* a COCO captions annotation file ``{"images": [{"id": ...}], "annotations":
  [{"id": <caption_id>, "image_id": ..., "caption": ...}]}`` (the annotation id is
  the caption id; every listed image needs at least one caption);
* JSONL with one ``{"image_id": ..., "caption_id": ...}`` per line (or a JSON
  list of such objects).

Every image has at least one caption and every caption exactly one image.
Ids may be integers or strings and are compared as strings.

Scoring, per direction, over every query of the ground truth (each caption for
text-to-image, each image for image-to-text; a missing or unknown query is an
error, as is a ranked item that is not in the ground truth):

* text-to-image: the rank (1-based) of the caption's one image;
* image-to-text: the rank of the *best-ranked* of the image's captions (the
  Karpathy / VSE++ / ALBEF convention);
* ``R@K`` = percentage (0-100) of queries whose rank is <= K. A query whose
  target is not in its (truncated) list is "beyond the list": a miss for every K;
* median rank = ``floor(median(ranks))`` as in VSE++ (``np.floor(np.median(r)) + 1``
  over 0-based ranks); ``None`` when the median falls beyond the lists;
* mean rank = mean of the ranks; ``None`` when any query is beyond its list
  (its rank is unknown).

``rsum`` is the sum of every R@K of the directions present (the usual
retrieval-literature figure when both directions and K = 1, 5, 10 are scored).
:meth:`RetrievalResult.scores` flattens the figures (``t2i_R@1``, ...,
``t2i_medr``, ``t2i_meanr``, ``i2t_...``, ``rsum``); a warning is added for each
direction where some targets are beyond their lists.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmcli.errors import UserError, examples
from mmcli.metrics.jsonio import located_items, parse_id, read_json_or_jsonl

DIRECTIONS = ("text_to_image", "image_to_text")
_SHORT = {"text_to_image": "t2i", "image_to_text": "i2t"}

Ranking = dict[str, dict[str, list[str]]]  # direction -> query id -> ranked ids
RetrievalGT = dict[str, list[str]]  # image id -> its caption ids


@dataclass
class DirectionResult:
    """One direction's scores; ``ranks`` is per query, None when beyond the list."""

    recall: dict[int, float]
    median_rank: int | None
    mean_rank: float | None
    n_queries: int
    n_beyond_list: int
    ranks: dict[str, int | None]


@dataclass
class RetrievalResult:
    """Both directions (None when absent from the ranking), rsum, and notes."""

    text_to_image: DirectionResult | None
    image_to_text: DirectionResult | None
    rsum: float
    ks: tuple[int, ...]
    signature: str
    warnings: list[str] = field(default_factory=list)

    def directions(self) -> dict[str, DirectionResult]:
        both = {"text_to_image": self.text_to_image, "image_to_text": self.image_to_text}
        return {d: r for d, r in both.items() if r is not None}

    def scores(self) -> dict[str, float | None]:
        """Headline figures in display order: ``t2i_R@1`` .. ``t2i_medr``, ``t2i_meanr``,
        the same for ``i2t``, then ``rsum``."""
        out: dict[str, float | None] = {}
        for direction, r in self.directions().items():
            short = _SHORT[direction]
            out.update({f"{short}_R@{k}": v for k, v in r.recall.items()})
            out[f"{short}_medr"] = r.median_rank
            out[f"{short}_meanr"] = r.mean_rank
        out["rsum"] = self.rsum
        return out

    def counts(self) -> dict[str, int]:
        return {f"{d} queries": r.n_queries for d, r in self.directions().items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# Shapes (shared by the loaders and by in-memory arguments)
# ---------------------------------------------------------------------------


def _ranked_list(value: Any, name: str, where: str) -> list[str]:
    if not isinstance(value, list):
        raise UserError(f"{name}: {where}: expected a ranked list of ids, "
                        f"got {type(value).__name__}")
    items = [parse_id(x, name, where, "a ranked item") for x in value]
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise UserError(f"{name}: {where}: {item!r} appears twice in the ranked list")
        seen.add(item)
    return items


def _direction_block(value: Any, name: str, direction: str) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise UserError(f"{name}: '{direction}' must be an object mapping each query id "
                        f"to a ranked list, got {type(value).__name__}")
    if not value:
        raise UserError(f"{name}: '{direction}' has no queries")
    out: dict[str, list[str]] = {}
    for key, lst in value.items():
        qid = parse_id(key, name, direction, "a query id")
        if qid in out:
            raise UserError(f"{name}: {direction}: query {qid!r} appears twice")
        out[qid] = _ranked_list(lst, name, f"{direction} query {qid!r}")
    return out


def _ranking_shape(data: Any, name: str) -> Ranking:
    if not isinstance(data, Mapping):
        raise UserError(f"{name}: expected an object with 'text_to_image' and/or "
                        f"'image_to_text', got {type(data).__name__}")
    unknown = [str(k) for k in data if k not in DIRECTIONS]
    if unknown:
        raise UserError(f"{name}: unknown key(s) {examples(unknown)} (expected "
                        "'text_to_image' and/or 'image_to_text')")
    out = {d: _direction_block(data[d], name, d) for d in DIRECTIONS if data.get(d) is not None}
    if not out:
        raise UserError(f"{name}: neither 'text_to_image' nor 'image_to_text' is given")
    return out


def _gt_shape(data: Any, name: str) -> RetrievalGT:
    """Validate ``{image_id: [caption_id, ...]}``; a caption belongs to one image."""
    if not isinstance(data, Mapping):
        raise UserError(f"{name}: expected a mapping of image id to caption ids, "
                        f"got {type(data).__name__}")
    if not data:
        raise UserError(f"{name}: no images")
    out: RetrievalGT = {}
    owner: dict[str, str] = {}
    for key, caps in data.items():
        image = parse_id(key, name, "ground truth", "an image id")
        where = f"image {image!r}"
        if image in out:
            raise UserError(f"{name}: {where} appears twice")
        if not isinstance(caps, list):
            raise UserError(f"{name}: {where}: expected a list of caption ids, "
                            f"got {type(caps).__name__}")
        if not caps:
            raise UserError(f"{name}: {where} has no captions")
        out[image] = [parse_id(c, name, where, "a caption id") for c in caps]
        for cap in out[image]:
            if cap in owner:
                raise UserError(f"{name}: caption {cap!r} is listed for image "
                                f"{owner[cap]!r} and again for image {image!r}")
            owner[cap] = image
    return out


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_ranking(path: str | Path) -> Ranking:
    """Read a ranking file (see the module docstring); ids become strings."""
    data, where = read_json_or_jsonl(path)
    if where is not None:
        raise UserError(f"{path}: expected one JSON object with 'text_to_image' and/or "
                        "'image_to_text', not JSON lines")
    return _ranking_shape(data, str(path))


def _pairs_to_gt(pairs: list[tuple[str, str, str]], name: str) -> dict[str, list[str]]:
    """(where, image, caption) triples to a mapping, rejecting a repeated caption."""
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for where, image, caption in pairs:
        if caption in seen:
            raise UserError(f"{name}: {where}: caption {caption!r} appears twice "
                            f"(first for image {seen[caption]!r})")
        seen[caption] = image
        out.setdefault(image, []).append(caption)
    return out


def _record_pairs(data: list[Any], where: list[str] | None, name: str,
                  caption_key: str) -> list[tuple[str, str, str]]:
    pairs = []
    for loc, rec in located_items(data, where):
        if not isinstance(rec, dict):
            raise UserError(f"{name}: {loc}: expected an object with 'image_id' and "
                            f"'{caption_key}', got {type(rec).__name__}")
        for key in ("image_id", caption_key):
            if key not in rec:
                raise UserError(f"{name}: {loc}: missing {key!r} (expected an object "
                                f"with 'image_id' and '{caption_key}')")
        pairs.append((loc, parse_id(rec["image_id"], name, loc, "image_id"),
                      parse_id(rec[caption_key], name, loc, caption_key)))
    return pairs


def _coco_gt(data: dict[str, Any], name: str) -> dict[str, list[str]]:
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise UserError(f"{name}: 'annotations' must be a list, got {type(annotations).__name__}")
    out = _pairs_to_gt(_record_pairs(annotations, None, name, "id"), name)
    images = data.get("images")
    if images is None:
        return out
    if not isinstance(images, list):
        raise UserError(f"{name}: 'images' must be a list, got {type(images).__name__}")
    listed = []
    where = [f"images entry {i}" for i in range(1, len(images) + 1)]
    for loc, img in located_items(images, where):
        if not isinstance(img, dict) or "id" not in img:
            raise UserError(f"{name}: {loc}: expected an object with 'id'")
        listed.append(parse_id(img["id"], name, loc, "id"))
    uncaptioned = [i for i in listed if i not in out]
    if uncaptioned:
        raise UserError(f"{name}: {len(uncaptioned)} image(s) in 'images' have no caption "
                        f"annotation: {examples(uncaptioned)}")
    unlisted = sorted(set(out) - set(listed))
    if unlisted:
        raise UserError(f"{name}: annotations refer to image(s) not in 'images': "
                        f"{examples(unlisted)}")
    return out


def _is_pair_record(data: Any) -> bool:
    return isinstance(data, dict) and "image_id" in data and "caption_id" in data


def load_retrieval_gt(path: str | Path) -> RetrievalGT:
    """Read ground truth (see the module docstring) as ``{image_id: [caption_id, ...]}``."""
    name = str(path)
    data, where = read_json_or_jsonl(path)
    if _is_pair_record(data):
        data, where = [data], None  # a one-line JSONL file
    if isinstance(data, list):
        data = _pairs_to_gt(_record_pairs(data, where, name, "caption_id"), name)
    elif isinstance(data, dict) and "annotations" in data:
        data = _coco_gt(data, name)
    elif isinstance(data, dict) and "images" in data:
        raise UserError(f"{name}: has 'images' but no 'annotations' (expected a COCO "
                        "captions file, an {image_id: [caption_id, ...]} mapping or JSONL)")
    return _gt_shape(data, name)


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    try:
        values = list(ks)
    except TypeError:
        raise UserError(f"ks: expected a list of positive integers, got {ks!r}") from None
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"ks: {k!r} is not a positive integer")
    if not values:
        raise UserError("ks: give at least one K")
    if len(set(values)) != len(values):
        raise UserError(f"ks: repeated K in {values}")
    return tuple(sorted(values))


def _check_ids(block: dict[str, list[str]], direction: str, queries: Mapping[str, Any],
               items: Mapping[str, Any]) -> None:
    q_kind, i_kind = ("caption", "image") if direction == "text_to_image" else ("image", "caption")
    unknown = [q for q in block if q not in queries]
    if unknown:
        raise UserError(f"ranking: {direction}: {len(unknown)} query id(s) are not {q_kind} "
                        f"ids of the ground truth: {examples(unknown)}")
    missing = [q for q in queries if q not in block]
    if missing:
        raise UserError(f"ranking: {direction}: {len(missing)} {q_kind}(s) of the ground truth "
                        f"have no ranked list: {examples(missing)}")
    bad = list(dict.fromkeys(i for lst in block.values() for i in lst if i not in items))
    if bad:
        hint = (" (they are query ids: are the directions swapped?)"
                if all(i in queries for i in bad) else "")
        raise UserError(f"ranking: {direction}: {len(bad)} ranked id(s) are not {i_kind} "
                        f"ids of the ground truth: {examples(bad)}{hint}")


def _first_hit(ranked: list[str], targets: set[str]) -> int | None:
    for position, item in enumerate(ranked, 1):
        if item in targets:
            return position
    return None


def _summarise(ranks: dict[str, int | None], ks: tuple[int, ...]) -> DirectionResult:
    n = len(ranks)
    found = [r for r in ranks.values() if r is not None]
    recall = {k: 100.0 * sum(1 for r in found if r <= k) / n for k in ks}
    median = statistics.median([math.inf if r is None else r for r in ranks.values()])
    return DirectionResult(
        recall=recall,
        median_rank=None if math.isinf(median) else math.floor(median),
        mean_rank=float(sum(found)) / n if len(found) == n else None,
        n_queries=n,
        n_beyond_list=n - len(found),
        ranks=ranks,
    )


def retrieval_recall(ranking: Mapping[str, Any], gt: Mapping[str, Any],
                     ks: Iterable[int] = (1, 5, 10)) -> RetrievalResult:
    """Score a ranking (direction -> query -> ranked ids) against ``gt`` (image -> captions)."""
    ks = _check_ks(ks)
    ranking = _ranking_shape(ranking, "ranking")
    gt = _gt_shape(gt, "ground truth")
    image_of = {cap: image for image, caps in gt.items() for cap in caps}
    targets = {
        "text_to_image": (image_of, gt, lambda q: {image_of[q]}),
        "image_to_text": (gt, image_of, lambda q: set(gt[q])),
    }
    results: dict[str, DirectionResult | None] = dict.fromkeys(DIRECTIONS)
    for direction, block in ranking.items():
        queries, items, target = targets[direction]
        _check_ids(block, direction, queries, items)
        ranks = {q: _first_hit(block[q], target(q)) for q in queries}
        results[direction] = _summarise(ranks, ks)
    rsum = sum(sum(r.recall.values()) for r in results.values() if r is not None)
    warnings = [
        f"{d}: {r.n_beyond_list} of {r.n_queries} queries have their target beyond the "
        "(truncated) ranked list: a miss for every K, rank unknown"
        for d, r in results.items() if r is not None and r.n_beyond_list
    ]
    dirs = "+".join(_SHORT[d] for d in DIRECTIONS if results[d] is not None)
    return RetrievalResult(
        text_to_image=results["text_to_image"],
        image_to_text=results["image_to_text"],
        rsum=rsum,
        ks=ks,
        signature=f"retrieval|dirs:{dirs}|k:{','.join(map(str, ks))}|i2t:first-caption",
        warnings=warnings,
    )
