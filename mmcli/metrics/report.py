"""``score_files``: read a predictions file and a references file, score them, report.

This is what ``mmcli score`` calls; the CLI only renders the returned
:class:`ScoreReport` as a table or JSON.
"""

from __future__ import annotations

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
    per_item: list[dict] = field(default_factory=list)  # one row per image / question

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
    names = list(res.per_image)
    rows = [
        {"image_id": iid, **{m: res.per_image[m][k] for m in names}} for k, iid in enumerate(res.image_ids)
    ]
    return ScoreReport(
        task="caption",
        scores=dict(res.scores),
        n_items=len(res.image_ids),
        signature=res.signature,
        counts={"images": len(res.image_ids), "references": res.n_references},
        warnings=res.warnings,
        per_item=rows,
    )


def _vqa(preds, refs, opts: ScoreOptions) -> ScoreReport:
    from .vqa import load_vqa_predictions, load_vqa_references, vqa_accuracy

    res = vqa_accuracy(load_vqa_predictions(preds), load_vqa_references(refs), variant=opts.vqa_normalize)
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
        per_item=[{"question_id": q, "accuracy": a} for q, a in res.per_question.items()],
    )


def _retrieval(preds, refs, opts: ScoreOptions) -> ScoreReport:
    from .retrieval import load_ranking, load_retrieval_gt, retrieval_recall

    res = retrieval_recall(load_ranking(preds), load_retrieval_gt(refs), ks=opts.ks)
    return ScoreReport(
        task="retrieval",
        scores=res.scores(),
        n_items=sum(res.counts().values()),
        signature=res.signature,
        counts=res.counts(),
        warnings=list(res.warnings),
    )
