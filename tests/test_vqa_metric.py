"""VQA accuracy: the official vqaEval.py (HEAD a013f00) behaviour, metrics-spec section 7."""

from __future__ import annotations

import json

import pytest

from mmcli.errors import UserError
from mmcli.metrics.vqa import (
    CONTRACTIONS,
    VQAReference,
    load_vqa_predictions,
    load_vqa_references,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
)

# --- spec 7.2 example table: answer, after (a), after (a)+(b) -------------------

TABLE = [
    ("Yes", "Yes", "yes"),
    ("yes.", "yes", "yes"),
    ("yes!", "yes ", "yes"),
    ("(yes)", " yes ", "yes"),
    ("Two", "Two", "2"),
    ("ten", "ten", "10"),
    ("eleven", "eleven", "eleven"),
    ("none", "none", "0"),
    ("a red and white bus", "a red and white bus", "red and white bus"),
    ("dont know", "dont know", "don't know"),
    ("isnt", "isnt", "isn't"),
    ("Im", "Im", "im"),
    ("somebody'd", "somebody'd", "somebodyd"),
    ("1,000", "1000", "1000"),
    ("1, 2", "1 2", "1 2"),
    ("3.5", "3.5", "3.5"),
    ("3.", "3", "3"),
    ("mr. smith", "mr smith", "mr smith"),
    ("e-mail", "e mail", "e mail"),
    ("t-shirt", "t shirt", "t shirt"),
    ("hot - dog", "hot  dog", "hot dog"),
    ("red/white", "red white", "red white"),
    ("50%", "50%", "50%"),
    ("2:30", "2:30", "2:30"),
    ("girl's", "girl's", "girl's"),
    ("$5", "$5", "$5"),
    ("#1", "#1", "#1"),
]


@pytest.mark.parametrize("answer,after_a,after_ab", TABLE)
def test_spec_table(answer, after_a, after_ab):
    assert process_punctuation(answer) == after_a
    assert process_digit_article(process_punctuation(answer)) == after_ab


def test_punctuation_rule_looks_at_the_original_text():
    # "1,2" anywhere deletes every punctuation mark, not only the comma
    assert process_punctuation("a-b 1,2") == "ab 12"
    # "- " present: dashes deleted; "/" has no neighbouring space: replaced
    assert process_punctuation("x- y/z") == "x y z"
    # ")" became a space before "-" is looked at, but the test uses the original text
    assert process_punctuation("(a)-b") == " a  b"
    assert process_punctuation("(a-)b") == " a  b"
    assert process_punctuation("a.b") == "ab"  # the lookahead quirk: not a decimal
    # the official comma test needs digit-comma-digit: "1,,2" does not trigger it
    assert process_punctuation("(1,,2)") == " 1  2 "
    assert process_punctuation("(1,2)") == "12"


def test_at_most_32_periods_are_removed():
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("x." * 32 + "y.") == "x" * 32 + "y."


def test_digit_article_details():
    assert process_digit_article("the the") == ""
    assert process_digit_article("A  Dog   ran") == "dog ran"
    assert process_digit_article("ive") == "ive"  # the upper-case keys never match
    assert process_digit_article("twas oclock") == "'twas o'clock"
    assert process_digit_article("yall youre") == "y'all you're"


def test_contraction_table_quirks():
    assert CONTRACTIONS["somebody'd"] == "somebodyd"
    for key in ("Im", "Ive", "Id've", "I'dve"):
        assert key in CONTRACTIONS and key != key.lower()
    assert len(CONTRACTIONS) > 110


@pytest.mark.parametrize("variant", ["official", "always"])
@pytest.mark.parametrize("text", ["Yes.", "a red and white bus", "dont know", "hot - dog",
                                  "1,000 (approx)", "It's two o'clock", "the the", "3..5"])
def test_normalisation_is_idempotent(text, variant):
    once = normalize_answer(text, variant)
    assert normalize_answer(once, variant) == once


def test_always_variant_pre_steps():
    assert normalize_answer("Is it Red?", "always") == "is it red"
    assert normalize_answer("the girl's hat", "always") == "girl 's hat"
    assert normalize_answer("1,,000", "always") == "1000"
    assert normalize_answer("Two Dogs!", "always") == "2 dogs"


# --- spec 7.3 score -------------------------------------------------------------


@pytest.mark.parametrize("m,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                         (10, 1.0)])
def test_leave_one_out_values(m, expected):
    answers = ["yes"] * m + ["no", "maybe"] * ((10 - m) // 2) + ["no"] * ((10 - m) % 2)
    assert len(answers) == 10
    assert question_accuracy(answers, "yes") == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_for_other_counts():
    # n = 5, m = 2: leaving out one of the 2 matches leaves 1 (1/3), leaving out
    # one of the 3 others leaves 2 (2/3)
    assert question_accuracy(["x", "x", "y", "y", "y"], "x") == pytest.approx(
        (2 * (1 / 3) + 3 * (2 / 3)) / 5)
    # the same string twice: leaving out one entry removes only that entry
    assert question_accuracy(["x", "x", "x", "y"], "x") == pytest.approx((3 * (2 / 3) + 1) / 4)


def test_per_type_rounding_averages_unrounded_values():
    # n = 3, m = 1: subsets score 0, 1/3, 1/3 -> 2/9 per question
    refs = {
        "1": VQAReference(["a", "b", "c"], "what", "other"),
        "2": VQAReference(["a", "b", "c"], "what", "other"),
        "3": VQAReference(["x"] * 10, "is the", "yes/no"),
    }
    res = vqa_accuracy({"1": "a", "2": "a", "3": "x"}, refs)
    assert res.per_question["1"] == pytest.approx(2 / 9)
    assert res.per_question_type == {"what": 22.22, "is the": 100.0}
    assert res.per_answer_type == {"other": 22.22, "yes/no": 100.0}
    assert res.overall == 48.15
    assert res.n_questions == 3


def test_rounding_averages_before_rounding():
    # n = 2, m = 1 gives 1/6 = 16.666..%: rounded per question it is 16.67, and
    # averaging rounded values with a 0 would give 8.34 instead of the official 8.33
    refs = {"1": VQAReference(["a", "b"], "t", "other"),
            "2": VQAReference(["c", "d"], "t", "other")}
    res = vqa_accuracy({"1": "a", "2": "z"}, refs)
    assert res.per_question["1"] == pytest.approx(1 / 6)
    assert res.overall == 8.33
    assert res.per_question_type == {"t": 8.33} and res.per_answer_type == {"other": 8.33}
    assert round((round(100 / 6, 2) + 0) / 2, 2) == 8.34  # what the wrong order gives
    mixed = vqa_accuracy({"1": "a", "2": "z", "3": "a"},
                         {"1": ["a", "b"], "2": ["c", "d"], "3": ["a", "a", "a", "b"]})
    assert mixed.signature == "vqa-acc|norm:official|loo:2-4"


def test_single_answer_exact_match():
    refs = {"1": VQAReference(["red"]), "2": VQAReference(["2"]), "3": VQAReference(["cat"])}
    preds = {"1": "red", "2": "two", "3": "Cat."}
    off = vqa_accuracy(preds, refs)
    assert off.per_question == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert off.signature == "vqa-acc|norm:official|loo:1"
    alw = vqa_accuracy(preds, refs, variant="always")
    assert alw.per_question == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert alw.overall == 100.0


def test_signature_and_types_absent():
    res = vqa_accuracy({"1": "yes"}, {"1": ["yes"] * 10})
    assert res.signature == "vqa-acc|norm:official|loo:10"
    assert res.per_answer_type == {} and res.per_question_type == {}
    assert vqa_accuracy({"1": "yes"}, {"1": ["yes"] * 10}, "always").signature == (
        "vqa-acc|norm:always|loo:10")


# --- errors -------------------------------------------------------------------


def test_error_prediction_for_unknown_question():
    with pytest.raises(UserError, match=r"not in the references: '9'"):
        vqa_accuracy({"1": "a", "9": "b"}, {"1": ["a"]})


def test_error_question_without_prediction():
    refs = {str(i): ["a"] for i in range(6)}
    with pytest.raises(UserError, match=r"5 reference question\(s\) have no prediction: "
                                        r"'1', '2', '3' and 2 more"):
        vqa_accuracy({"0": "a"}, refs)


def test_error_non_string_answers():
    with pytest.raises(UserError, match="not a string"):
        vqa_accuracy({"1": 3}, {"1": ["3"]})
    with pytest.raises(UserError, match="non-string answer"):
        vqa_accuracy({"1": "3"}, {"1": VQAReference(["3", 3])})


def test_error_empty_reference_answers():
    with pytest.raises(UserError, match="empty list of answers"):
        vqa_accuracy({"1": "a"}, {"1": VQAReference([])})


def test_error_bad_variant_and_empty():
    with pytest.raises(UserError, match="variant 'strict' is unknown"):
        vqa_accuracy({"1": "a"}, {"1": ["a"]}, variant="strict")
    with pytest.raises(UserError, match="no questions"):
        vqa_accuracy({}, {})


# --- loading ------------------------------------------------------------------


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    return path


def test_load_predictions_all_formats(tmp_path):
    want = {"1": "yes", "2": "two"}
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": "2", "answer": "two"}]
    assert load_vqa_predictions(_write(tmp_path, "r.json", results)) == want
    assert load_vqa_predictions(_write(tmp_path, "m.json", want)) == want
    lines = "\n".join(json.dumps(r) for r in results) + "\n\n"
    assert load_vqa_predictions(_write(tmp_path, "r.jsonl", lines)) == want
    # JSON lines in a .json file are recognised too, and a one-line file
    assert load_vqa_predictions(_write(tmp_path, "l.json", lines)) == want
    assert load_vqa_predictions(_write(tmp_path, "one.jsonl", json.dumps(results[0]))) == {
        "1": "yes"}


def test_load_references_all_formats(tmp_path):
    answers = ["yes"] * 9 + ["no"]
    ann = {"annotations": [{"question_id": 5, "question_type": "is the", "answer_type": "yes/no",
                            "multiple_choice_answer": "yes",
                            "answers": [{"answer": a, "answer_id": i + 1,
                                         "answer_confidence": "yes"}
                                        for i, a in enumerate(answers)]}]}
    want = {"5": VQAReference(answers, "is the", "yes/no")}
    assert load_vqa_references(_write(tmp_path, "a.json", ann)) == want
    assert load_vqa_references(_write(tmp_path, "b.json", ann["annotations"])) == want
    assert load_vqa_references(_write(tmp_path, "c.json", {"5": answers})) == {
        "5": VQAReference(answers)}
    assert load_vqa_references(_write(tmp_path, "d.json", {"5": "yes"})) == {
        "5": VQAReference(["yes"])}
    lines = (json.dumps({"question_id": 5, "answers": answers}) + "\n"
             + json.dumps({"question_id": 6, "answer": "red"}) + "\n")
    assert load_vqa_references(_write(tmp_path, "e.jsonl", lines)) == {
        "5": VQAReference(answers), "6": VQAReference(["red"])}


def test_load_and_score_end_to_end(tmp_path):
    refs = load_vqa_references(_write(tmp_path, "refs.json", {"annotations": [
        {"question_id": 1, "answers": [{"answer": "2"}] * 3 + [{"answer": "3"}] * 7,
         "question_type": "how many", "answer_type": "number"}]}))
    preds = load_vqa_predictions(_write(tmp_path, "preds.json",
                                        [{"question_id": 1, "answer": "Two"}]))
    res = vqa_accuracy(preds, refs)
    assert res.overall == 90.0 and res.per_answer_type == {"number": 90.0}


@pytest.mark.parametrize("loader", [load_vqa_predictions, load_vqa_references])
def test_load_errors_common(tmp_path, loader):
    with pytest.raises(UserError, match=r"missing\.json: file not found"):
        loader(tmp_path / "missing.json")
    bad = _write(tmp_path, "refs.json", '{\n  "1": "a"\n    "2": "b"\n}')
    with pytest.raises(UserError) as err:
        loader(bad)
    assert str(err.value) == f"{bad}: invalid JSON at line 3 column 5 (Expecting ',' delimiter)"
    with pytest.raises(UserError, match="file is empty"):
        loader(_write(tmp_path, "empty.json", "  \n"))
    with pytest.raises(UserError, match=r"line 2 column 1"):
        loader(_write(tmp_path, "x.jsonl", '{"question_id": 1, "answer": "a"}\n}\n'))
    with pytest.raises(UserError, match="is a directory"):
        loader(tmp_path)
    with pytest.raises(UserError, match="got int"):
        loader(_write(tmp_path, "int.json", "3"))
    with pytest.raises(UserError, match=r"entry 2: missing 'question_id'"):
        loader(_write(tmp_path, "noid.json", [{"question_id": 1, "answer": "a"}, {"answer": "b"}]))
    with pytest.raises(UserError, match=r"entry 1: expected an object"):
        loader(_write(tmp_path, "notobj.json", [["1", "a"]]))
    with pytest.raises(UserError, match=r"line 2: question '1' appears twice"):
        loader(_write(tmp_path, "dup.jsonl", '{"question_id": 1, "answer": "a"}\n'
                                             '{"question_id": "1", "answer": "b"}\n'))
    with pytest.raises(UserError, match=r"key '1' appears twice"):
        loader(_write(tmp_path, "dupkey.json", '{"1": "a", "1": "b"}'))
    with pytest.raises(UserError, match="question_id must be an integer or a string"):
        loader(_write(tmp_path, "fid.json", [{"question_id": 1.5, "answer": "a"}]))
    with pytest.raises(UserError, match="no "):
        loader(_write(tmp_path, "none.json", []))


def test_load_prediction_errors(tmp_path):
    with pytest.raises(UserError, match=r"entry 1: missing 'answer'"):
        load_vqa_predictions(_write(tmp_path, "p.json", [{"question_id": 1}]))
    with pytest.raises(UserError, match="answer must be a string"):
        load_vqa_predictions(_write(tmp_path, "p.json", {"1": ["a"]}))
    with pytest.raises(UserError, match="annotations"):
        load_vqa_predictions(_write(tmp_path, "p.json", {"annotations": []}))


def test_load_reference_errors(tmp_path):
    with pytest.raises(UserError, match="empty list of answers"):
        load_vqa_references(_write(tmp_path, "r.json", {"1": []}))
    with pytest.raises(UserError, match="answer must be a string"):
        load_vqa_references(_write(tmp_path, "r.json", {"1": ["a", 2]}))
    with pytest.raises(UserError, match="answers must be a list, got dict"):
        load_vqa_references(_write(tmp_path, "r.json", {"1": {"answer": "a"}}))
    with pytest.raises(UserError, match="'annotations' must be a list"):
        load_vqa_references(_write(tmp_path, "r.json", {"annotations": {}}))
    with pytest.raises(UserError, match="questions file"):
        load_vqa_references(_write(tmp_path, "r.json", {"questions": [{"question_id": 1}]}))
    with pytest.raises(UserError, match="no 'answer' field"):
        load_vqa_references(_write(tmp_path, "r.json", [{"question_id": 1,
                                                         "answers": [{"text": "a"}]}]))
    with pytest.raises(UserError, match="missing 'answers'"):
        load_vqa_references(_write(tmp_path, "r.json", [{"question_id": 1}]))
    with pytest.raises(UserError, match="answer_type must be a string"):
        load_vqa_references(_write(tmp_path, "r.json", [{"question_id": 1, "answer": "a",
                                                         "answer_type": 3}]))
