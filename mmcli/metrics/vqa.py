"""VQA accuracy exactly as the official GT-Vision-Lab/VQA ``vqaEval.py`` (HEAD a013f00).

See ``docs/metrics-spec.md`` section 7; every quirk listed there is reproduced.

Per question, with ground-truth answers ``a_1..a_n`` and a prediction ``p``:

1. Both sides: ``"\\n"`` and ``"\\t"`` become spaces, then ``strip()``.
2. Normalisation, by variant:

   * ``"official"`` (HEAD a013f00): only when the ground-truth answers are *not*
     all identical after step 1, every ground-truth answer and the prediction go
     through :func:`process_punctuation` then :func:`process_digit_article`.
     With unanimous ground truth nothing is normalised and the raw prediction
     must match exactly, case included (ten ``yes`` vs ``Yes`` scores 0).
   * ``"always"`` (MMF/EvalAI ``EvalAIAnswerProcessor``, as used by Pythia/MMF,
     LLaVA and lmms-eval): both sides are always normalised. Before the
     punctuation step the text is lowercased, ``,`` and ``?`` are deleted,
     ``'s`` becomes `` 's`` and the result is stripped; the punctuation step's
     digit-comma-digit test is ``(?<=\\d)(,)+(?=\\d)``.

3. Score. With ``n >= 2`` answers (VQA v2 has 10) the leave-one-out formula::

       acc = (1/n) * sum_k min(1, #{j != k : a_j == p} / 3)

   which gives 0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >=4 matches out of 10.
   With a single reference answer (plain ``{"qid": "answer"}`` data) leave-one-out
   would always give 0, so the score is exact match instead (1.0 or 0.0) after
   the same normalisation rules. Note that under ``"official"`` one answer is
   trivially unanimous, so it is compared raw (after step 1), case included;
   use ``"always"`` to normalise single-answer data.

Reporting follows the official code: ``overall = round(100 * mean(acc_q), 2)``
and the per-question-type / per-answer-type figures average the *unrounded*
per-question accuracies of their subset, then round. Questions without a
question type (answer type) are left out of that breakdown only.
The official evaluation requires the predicted question ids to equal the
reference ids exactly; so does :func:`vqa_accuracy`.

File formats read by :func:`load_vqa_predictions` and :func:`load_vqa_references`
are described in their docstrings. Ids are compared as strings (``42`` == ``"42"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmcli.errors import UserError, examples
from mmcli.metrics.jsonio import located_items, parse_id, read_json_or_jsonl

VARIANTS = ("official", "always")

# ---------------------------------------------------------------------------
# Normalisation tables (spec 7.2)
# ---------------------------------------------------------------------------

# The punctuation set, in the official order. No ' : . # $ % & * ^ | ~.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
               "_", "-", ">", "<", "@", "`", ",", "?", "!")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = ("a", "an", "the")

# Adds the missing apostrophe. Quirks kept on purpose: the keys "Id've", "I'dve",
# "Im" and "Ive" are upper-case and never match (the text is lowercased first),
# and "somebody'd" -> "somebodyd" removes an apostrophe.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# Official: digit-comma-digit anywhere. EvalAI: one or more commas between digits.
_COMMA_OFFICIAL = re.compile(r"(\d)(,)(\d)")
_COMMA_EVALAI = re.compile(r"(?<=\d)(,)+(?=\d)")
# Meant as "a period not preceded and not followed by a digit", but "(?!<=\d)" is a
# lookahead for the literal "<=" + digit, which never matches at a period; so
# "a.b" -> "ab" while "3.5" is kept. Verbatim from the official code.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official code passes re.UNICODE (== 32) where sub() takes its count.
_MAX_PERIODS_REMOVED = int(re.UNICODE)


def _punctuation(text: str, comma: re.Pattern[str]) -> str:
    delete_all = comma.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # tests look at the original text, replacements apply to the running one
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_punctuation(text: str) -> str:
    """Spec 7.2 (a): the official ``processPunctuation``."""
    return _punctuation(text, _COMMA_OFFICIAL)


def process_digit_article(text: str) -> str:
    """Spec 7.2 (b): lowercase, number words to digits, drop articles, contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _clean(text: str) -> str:
    """Spec 7.2 step 1, applied to every answer whatever the variant."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _evalai_normalize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _clean(text)
    return process_digit_article(_punctuation(text, _COMMA_EVALAI))


def normalize_answer(text: str, variant: str = "official") -> str:
    """The full normalisation of one answer under ``variant``.

    ``"official"``: step 1 then (a) and (b), i.e. what the official code does to
    both sides when the ground truth is not unanimous. ``"always"``: the EvalAI
    answer processor.
    """
    _check_variant(variant)
    if variant == "always":
        return _evalai_normalize(text)
    return process_digit_article(process_punctuation(_clean(text)))


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UserError(f"VQA normalisation variant {variant!r} is unknown "
                        f"(choose one of: {', '.join(VARIANTS)})")


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VQAReference:
    """The ground truth of one question: its answers (10 in VQA v2) and types."""

    answers: list[str]
    question_type: str | None = None
    answer_type: str | None = None


@dataclass
class VQAResult:
    """Percentages rounded to 2 decimals; ``per_question`` is unrounded, in 0..1."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[str, float]
    n_questions: int
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _processed(answers: list[str], prediction: str, variant: str) -> tuple[list[str], str]:
    if variant == "always":
        return [_evalai_normalize(a) for a in answers], _evalai_normalize(prediction)
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    return gts, pred


def question_accuracy(answers: list[str], prediction: str, variant: str = "official") -> float:
    """Accuracy of one prediction in 0..1 (leave-one-out, or exact match for one answer)."""
    _check_variant(variant)
    gts, pred = _processed(answers, prediction, variant)
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    matches = sum(1 for a in gts if a == pred)
    # leave out one *entry* k at a time, even when others hold the same string
    accs = [min(1.0, float(matches - (a == pred)) / 3) for a in gts]
    return float(sum(accs)) / len(accs)


def _percent(values: list[float]) -> float:
    return round(100 * float(sum(values)) / len(values), 2)


def _as_reference(qid: str, ref: Any) -> VQAReference:
    if isinstance(ref, str):
        ref = VQAReference([ref])
    elif isinstance(ref, (list, tuple)):
        ref = VQAReference(list(ref))
    elif not isinstance(ref, VQAReference):
        raise UserError(f"references: question {qid!r} is a {type(ref).__name__}, "
                        "expected a VQAReference, a list of answers or one answer")
    if not ref.answers:
        raise UserError(f"references: question {qid!r} has an empty list of answers")
    for a in ref.answers:
        if not isinstance(a, str):
            raise UserError(f"references: question {qid!r} has a non-string answer {a!r}")
    for name in ("question_type", "answer_type"):
        value = getattr(ref, name)
        if value is not None and not isinstance(value, str):
            raise UserError(f"references: question {qid!r} has a non-string {name} {value!r}")
    return ref


def _str_keys(mapping: Any, what: str) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise UserError(f"{what}: expected a mapping of question id to answer, "
                        f"got {type(mapping).__name__}")
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if str(key) in out:
            raise UserError(f"{what}: question id {str(key)!r} appears twice")
        out[str(key)] = value
    return out


def _check_ids(preds: dict[str, Any], refs: dict[str, Any]) -> None:
    unknown = [q for q in preds if q not in refs]
    if unknown:
        raise UserError(f"predictions: {len(unknown)} question id(s) not in the references: "
                        f"{examples(unknown)}")
    missing = [q for q in refs if q not in preds]
    if missing:
        raise UserError(f"predictions: {len(missing)} reference question(s) have no "
                        f"prediction: {examples(missing)} (every question must be answered)")


def _signature(variant: str, refs: dict[str, VQAReference]) -> str:
    counts = sorted({len(r.answers) for r in refs.values()})
    loo = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"vqa-acc|norm:{variant}|loo:{loo}"


def vqa_accuracy(predictions: Mapping[str, str], references: Mapping[str, Any],
                 variant: str = "official") -> VQAResult:
    """Score ``predictions`` (qid -> answer) against ``references`` (qid -> VQAReference).

    A reference may also be given as a list of answers or a single answer string.
    The question-id sets must be equal. The signature names the variant and the
    number of answers per question (``loo:10``; ``loo:1`` means exact match;
    ``loo:1-10`` when the count varies).
    """
    _check_variant(variant)
    preds = _str_keys(predictions, "predictions")
    refs = {q: _as_reference(q, r) for q, r in _str_keys(references, "references").items()}
    if not refs:
        raise UserError("references: no questions to score")
    _check_ids(preds, refs)
    bad = [q for q, p in preds.items() if not isinstance(p, str)]
    if bad:
        raise UserError(f"predictions: answer for question {bad[0]!r} is a "
                        f"{type(preds[bad[0]]).__name__}, not a string")

    per_question: dict[str, float] = {}
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    for qid, ref in refs.items():  # the reference order, like the official loop
        acc = question_accuracy(ref.answers, preds[qid], variant)
        per_question[qid] = acc
        if ref.question_type is not None:
            by_qtype.setdefault(ref.question_type, []).append(acc)
        if ref.answer_type is not None:
            by_atype.setdefault(ref.answer_type, []).append(acc)
    return VQAResult(
        overall=_percent(list(per_question.values())),
        per_answer_type={t: _percent(v) for t, v in by_atype.items()},
        per_question_type={t: _percent(v) for t, v in by_qtype.items()},
        per_question=per_question,
        n_questions=len(per_question),
        signature=_signature(variant, refs),
    )


# ---------------------------------------------------------------------------
# File loading
# ---------------------------------------------------------------------------


def _field(record: Any, key: str, name: str, where: str, expected: str) -> Any:
    if not isinstance(record, dict):
        raise UserError(f"{name}: {where}: expected an object with {expected}, "
                        f"got {type(record).__name__}")
    if key not in record:
        raise UserError(f"{name}: {where}: missing {key!r} (expected an object with {expected})")
    return record[key]


def _add(out: dict[str, Any], qid: str, value: Any, name: str, where: str) -> None:
    if qid in out:
        raise UserError(f"{name}: {where}: question {qid!r} appears twice")
    out[qid] = value


def _answer_str(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{name}: {where}: answer must be a string, got {json.dumps(value)[:40]}")
    return value


def load_vqa_predictions(path: str | Path) -> dict[str, str]:
    """Read predictions as ``{question_id: answer}``.

    Accepted: the VQA results format ``[{"question_id": 1, "answer": "yes"}, ...]``,
    a plain mapping ``{"1": "yes", ...}``, or JSONL with one
    ``{"question_id": ..., "answer": ...}`` per line. A question id may appear once.
    """
    name = str(path)
    data, where = read_json_or_jsonl(path)
    if isinstance(data, dict) and "question_id" in data:
        data, where = [data], None  # a one-line JSONL file
    if isinstance(data, dict) and "annotations" in data:
        raise UserError(f"{name}: this looks like a VQA annotations (references) file, "
                        "not predictions")
    out: dict[str, str] = {}
    expected = "'question_id' and 'answer'"
    if isinstance(data, list):
        for loc, rec in located_items(data, where):
            raw_id = _field(rec, "question_id", name, loc, expected)
            qid = parse_id(raw_id, name, loc, "question_id")
            answer = _answer_str(_field(rec, "answer", name, loc, expected), name, loc)
            _add(out, qid, answer, name, loc)
    elif isinstance(data, dict):
        for qid, answer in data.items():
            loc = f"question {qid!r}"
            _add(out, qid, _answer_str(answer, name, loc), name, loc)
    else:
        raise UserError(f"{name}: expected a list of {{question_id, answer}} objects or a "
                        f"{{question_id: answer}} mapping, got {type(data).__name__}")
    if not out:
        raise UserError(f"{name}: no predictions")
    return out


def _answer_list(value: Any, name: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise UserError(f"{name}: {where}: answers must be a list, got {type(value).__name__}")
    if not value:
        raise UserError(f"{name}: {where}: empty list of answers")
    out = []
    for item in value:
        if isinstance(item, dict):  # VQA v2: {"answer": ..., "answer_id": ..., ...}
            if "answer" not in item:
                raise UserError(f"{name}: {where}: an answers entry has no 'answer' field")
            item = item["answer"]
        out.append(_answer_str(item, name, where))
    return out


def _optional_str(record: dict[str, Any], key: str, name: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{name}: {where}: {key} must be a string, got {json.dumps(value)[:40]}")
    return value


def _reference_record(rec: Any, name: str, where: str) -> tuple[str, VQAReference]:
    expected = "'question_id' and 'answers' (or 'answer')"
    qid = parse_id(_field(rec, "question_id", name, where, expected), name, where, "question_id")
    where = f"{where} (question {qid!r})"
    if "answers" in rec:
        answers = _answer_list(rec["answers"], name, where)
    elif "answer" in rec:
        answers = [_answer_str(rec["answer"], name, where)]
    else:
        raise UserError(f"{name}: {where}: missing 'answers' (expected an object with {expected})")
    return qid, VQAReference(answers, _optional_str(rec, "question_type", name, where),
                             _optional_str(rec, "answer_type", name, where))


def _reference_records(data: Any, name: str) -> tuple[Any, list[str] | None]:
    """The list of annotation records inside a references JSON value, if it has one."""
    if isinstance(data, dict) and "annotations" in data:
        if not isinstance(data["annotations"], list):
            raise UserError(f"{name}: 'annotations' must be a list, "
                            f"got {type(data['annotations']).__name__}")
        return data["annotations"], None
    if isinstance(data, dict) and "question_id" in data:
        return [data], None
    if isinstance(data, dict) and "questions" in data:
        raise UserError(f"{name}: this looks like a VQA questions file; "
                        "pass the annotations file (with 'annotations') instead")
    return data, None


def load_vqa_references(path: str | Path) -> dict[str, VQAReference]:
    """Read ground truth as ``{question_id: VQAReference}``.

    Accepted: a VQA v2 annotations file ``{"annotations": [{"question_id": 1,
    "answers": [{"answer": "yes", ...}, ...], "question_type": "is the",
    "answer_type": "yes/no", ...}]}`` or a bare list of such annotations; a plain
    mapping ``{"1": "yes"}`` or ``{"1": ["yes", ..., "no"]}``; or JSONL with one
    ``{"question_id": ..., "answers": [...]}`` or ``{"question_id": ..., "answer": ...}``
    per line (types optional). A question id may appear once.
    """
    name = str(path)
    data, where = read_json_or_jsonl(path)
    if where is None:
        data, where = _reference_records(data, name)
    out: dict[str, VQAReference] = {}
    if isinstance(data, list):
        for loc, rec in located_items(data, where):
            qid, ref = _reference_record(rec, name, loc)
            _add(out, qid, ref, name, loc)
    elif isinstance(data, dict):
        for qid, value in data.items():
            loc = f"question {qid!r}"
            _add(out, qid, VQAReference(_answer_list(value, name, loc)), name, loc)
    else:
        raise UserError(f"{name}: expected VQA annotations, a list of {{question_id, answers}} "
                        "objects or a {question_id: answers} mapping, "
                        f"got {type(data).__name__}")
    if not out:
        raise UserError(f"{name}: no questions")
    return out
