"""What `mmcli data stats` reports about a dataset: counts, lengths, vocabulary, answers, blind baselines."""

from __future__ import annotations

import statistics
from collections import Counter

from .records import Dataset, Split


def _lengths(texts: list[str]) -> dict[str, float]:
    n = sorted(len(t.split()) for t in texts)
    if not n:
        return {}
    return {"mean": round(statistics.fmean(n), 2), "median": statistics.median(n), "p95": n[int(0.95 * (len(n) - 1))], "max": n[-1]}


def split_stats(split: Split, top: int = 10) -> dict:
    """Counts and distributions of one split."""
    captions = [c for r in split.captions for c in r.captions]
    out: dict = {"images": len(split.images()), "captions": len(captions), "questions": len(split.questions)}
    if captions:
        out["caption_words"] = _lengths(captions)
        out["caption_vocabulary"] = len({w for c in captions for w in c.lower().split()})
    if split.questions:
        out["question_words"] = _lengths([q.question for q in split.questions])
        # the most common of a question's answers (VQA v2 has 10 per question)
        answers = Counter(Counter(q.answers).most_common(1)[0][0] for q in split.questions if q.answers)
        total = sum(answers.values())
        out["distinct_answers"] = len(answers)
        out["top_answers"] = {a: round(100 * c / total, 1) for a, c in answers.most_common(top)}
        types = Counter(q.answer_type for q in split.questions if q.answer_type)
        if types:
            out["answer_types"] = dict(types.most_common())
    return out


def dataset_stats(ds: Dataset) -> dict:
    """Per-split statistics, and the blind VQA baselines when there are questions to score.

    The baselines are fitted on every split but the one scored (train + val) and
    scored on test (or on val when there is no test split): they use no image,
    so this is no model selection.
    """
    out: dict = {"dataset": ds.name, "splits": {name: split_stats(s) for name, s in ds.splits.items()}, "info": ds.info}
    target = "test" if "test" in ds.splits else ("val" if "val" in ds.splits else None)
    if target and ds.splits[target].questions:
        from .baselines import majority_answer_accuracy, question_only_accuracy

        fit = [q for name, s in ds.splits.items() if name != target for q in s.questions]
        if fit:
            test = ds.splits[target].questions
            out["baselines"] = {
                "scored_on": target,
                "majority_answer": round(majority_answer_accuracy(fit, test), 1),
                "question_only": round(question_only_accuracy(fit, test), 1),
            }
    return out
