"""``score_files``: read a predictions file and a references file, score them, report.

This is what ``mmcli score`` calls; the CLI only renders the returned
:class:`ScoreReport` as a table or JSON.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

TASKS = ("caption", "vqa", "retrieval")


@dataclass(frozen=True)
class ScoreOptions:
    """How to read and score the files (the flags of ``mmcli score``)."""

    task: str = "caption"
    preds_format: str = "auto"
    refs_format: str = "auto"
    split: str | None = None  # Karpathy split of the references
    metrics: tuple[str, ...] | None = None  # caption metrics; None = the COCO ones
    tokenize: str = "ptb"
    restrict_to_preds: bool = False
    vqa_normalize: str = "official"
    ks: tuple[int, ...] = (1, 5, 10)


@dataclass
class ScoreReport:
    """Everything ``mmcli score`` prints or writes."""

    task: str
    scores: dict[str, float | None]  # headline metrics, in display order
    n_items: int  # images, questions or queries scored
    signature: str
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. per answer type
    counts: dict[str, int] = field(default_factory=dict)  # e.g. references, queries per direction
    warnings: list[str] = field(default_factory=list)
    item_key: str = "image_id"  # what a per-item row is keyed by
    item_ids: list[str] = field(default_factory=list)
    item_scores: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per item

    def per_item(self) -> list[dict]:
        """One row per image (or question): its id and its scores."""
        names = list(self.item_scores)
        return [
            {self.item_key: iid, **{m: self.item_scores[m][k] for m in names}} for k, iid in enumerate(self.item_ids)
        ]

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "scores": self.scores,
            "groups": self.groups,
            "n_items": self.n_items,
            "counts": self.counts,
            "signature": self.signature,
            "warnings": self.warnings,
        }


def score_files(preds: str | Path, refs: str | Path, opts: ScoreOptions = ScoreOptions()) -> ScoreReport:
    """Score ``preds`` against ``refs`` for ``opts.task``."""
    if opts.task == "caption":
        return _captions(preds, refs, opts)
    if opts.task == "vqa":
        return _vqa(preds, refs, opts)
    if opts.task == "retrieval":
        return _retrieval(preds, refs, opts)
    raise UserError(f"unknown task {opts.task!r}; choose from {', '.join(TASKS)}")


@contextmanager
def _naming(preds, refs):
    """Name both files in an error found while matching one against the other."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{preds} vs {refs}: {e}") from None


def _captions(preds, refs, opts: ScoreOptions) -> ScoreReport:
    from .captions import DEFAULT_METRICS, score_captions
    from .formats import load_captions

    p = load_captions(preds, opts.preds_format, opts.split)
    r = load_captions(refs, opts.refs_format, opts.split)
    res = score_captions(
        p,
        r,
        metrics=opts.metrics or DEFAULT_METRICS,
        tokenize=opts.tokenize,
        restrict_to_preds=opts.restrict_to_preds,
        names=(str(preds), str(refs)),
    )
    return ScoreReport(
        task="caption",
        scores=dict(res.scores),
        n_items=len(res.image_ids),
        signature=res.signature,
        counts={"images": len(res.image_ids), "references": res.n_references},
        warnings=res.warnings,
        item_ids=res.image_ids,
        item_scores=res.per_image,
    )


def _vqa(preds, refs, opts: ScoreOptions) -> ScoreReport:
    from .vqa import load_vqa_predictions, load_vqa_references, vqa_accuracy

    p, r = load_vqa_predictions(preds), load_vqa_references(refs)
    with _naming(preds, refs):
        res = vqa_accuracy(p, r, variant=opts.vqa_normalize)
    groups = {}
    if res.per_answer_type:
        groups["per answer type"] = dict(res.per_answer_type)
    if res.per_question_type:
        groups["per question type"] = dict(res.per_question_type)
    return ScoreReport(
        task="vqa",
        scores={"vqa_accuracy": res.overall},
        n_items=res.n_questions,
        signature=res.signature,
        groups=groups,
        counts={"questions": res.n_questions},
        item_key="question_id",
        item_ids=list(res.per_question),
        item_scores={"accuracy": list(res.per_question.values())},
    )


def _retrieval(preds, refs, opts: ScoreOptions) -> ScoreReport:
    from .retrieval import load_ranking, load_retrieval_gt, retrieval_recall

    p, r = load_ranking(preds), load_retrieval_gt(refs)
    with _naming(preds, refs):
        res = retrieval_recall(p, r, ks=opts.ks)
    return ScoreReport(
        task="retrieval",
        scores=res.scores(),
        n_items=sum(res.counts().values()),
        signature=res.signature,
        counts=res.counts(),
        warnings=list(res.warnings),
        item_key="query",  # per-query rank (None: beyond a truncated list)
        item_ids=[f"{name}:{q}" for name, d in res.directions().items() for q in d.ranks],
        item_scores={"rank": [r for d in res.directions().values() for r in d.ranks.values()]},
    )
