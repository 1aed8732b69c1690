"""Blind VQA baselines: how far the answer prior alone (no image) gets.

Both fit on ``train`` questions and return an accuracy in percent on ``test``.
A question's label is its most common reference answer (its only one for
easy-VQA and JSONL data); a prediction is scored with the VQA metric
(:func:`mmcli.metrics.vqa.question_accuracy`: exact match with one answer,
the official leave-one-out formula with several). Ties between answers are
broken by the overall answer frequency in ``train``, then alphabetically, so
the result does not depend on record order.

On easy-VQA, fitted on the package's whole train set (our train + val) and
scored on its test set: majority answer 37.3 ("yes"), question only 67.0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from ..metrics.vqa import question_accuracy
from .records import VQARecord


def _label(q: VQARecord) -> str:
    return Counter(q.answers).most_common(1)[0][0]


def _best(counts: Counter, prior: Counter) -> str:
    return min(counts, key=lambda a: (-counts[a], -prior[a], a))


def _accuracy(test: Sequence[VQARecord], predict) -> float:
    if not test:
        return 0.0
    return 100 * sum(question_accuracy(list(q.answers), predict(q)) for q in test) / len(test)


def majority_answer_accuracy(train: Sequence[VQARecord], test: Sequence[VQARecord]) -> float:
    """Accuracy (%) of predicting the most common train answer for every test question."""
    prior = Counter(_label(q) for q in train if q.answers)
    top = _best(prior, prior) if prior else ""
    return _accuracy(test, lambda q: top)


def question_only_accuracy(train: Sequence[VQARecord], test: Sequence[VQARecord]) -> float:
    """Accuracy (%) of predicting, per exact question text, its most common train answer
    (the overall majority answer for a question never seen in train)."""
    prior = Counter()
    by_question: dict[str, Counter] = defaultdict(Counter)
    for q in train:
        if q.answers:
            label = _label(q)
            prior[label] += 1
            by_question[q.question][label] += 1
    top = _best(prior, prior) if prior else ""
    answer = {text: _best(counts, prior) for text, counts in by_question.items()}
    return _accuracy(test, lambda q: answer.get(q.question, top))
