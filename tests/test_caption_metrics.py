"""BLEU, ROUGE-L and CIDEr-D: behaviour on small hand-checked cases."""

from __future__ import annotations

import math
import random

import pytest

from mmcli.errors import UserError
from mmcli.metrics.bleu import bleu
from mmcli.metrics.captions import score_captions
from mmcli.metrics.cider import cider_d
from mmcli.metrics.ngrams import build, encode
from mmcli.metrics.rouge import lcs_length, rouge_l_image


def dp_lcs(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 80))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 80))]
        assert lcs_length(a, b) == dp_lcs(a, b)


def test_ngram_counts_match_a_naive_count():
    sents = ["a b a b a", "b a", "", "c a b a b"]
    corpus = encode(sents, n=3)
    for k, order in enumerate(corpus.orders, 1):
        got = {}
        ids = {}
        for s, g, c in zip(order.sent, order.gram, order.count):
            got[(int(s), int(g))] = int(c)
        # map our ids back to n-gram tuples through a first occurrence
        for si, s in enumerate(sents):
            toks = s.split()
            for i in range(len(toks) - k + 1):
                ids.setdefault(tuple(toks[i : i + k]), None)
        expected = {}
        for si, s in enumerate(sents):
            toks = s.split()
            for i in range(len(toks) - k + 1):
                expected[(si, tuple(toks[i : i + k]))] = expected.get((si, tuple(toks[i : i + k])), 0) + 1
        assert sorted(got.values()) == sorted(expected.values())
        assert len(got) == len(expected)
        assert order.n_grams == len(ids)


def test_bleu_hand_computed():
    # one image: candidate "a b c d", reference "a b c e"
    cc = build(["a b c d"], [["a b c e"]])
    corpus, per = bleu(cc)
    p = [3 / 4, 2 / 3, 1 / 2, (0 + 1e-15) / (1 + 1e-9)]
    expect = [math.prod(p[: k + 1]) ** (1 / (k + 1)) for k in range(4)]
    assert corpus[:3] == pytest.approx(expect[:3], rel=1e-8)
    assert corpus[3] == pytest.approx(expect[3], rel=1e-6)
    assert per[:, 0].tolist() == pytest.approx(corpus, rel=1e-12)


def test_bleu_closest_reference_length_prefers_shorter_on_ties():
    # candidate of 4 tokens; references of 3 and 5 tokens: tie, the shorter (3) wins -> no penalty
    cc = build(["a b c d"], [["a b c d e", "a b c"]])
    from mmcli.metrics.bleu import closest_ref_len

    assert closest_ref_len(cc).tolist() == [3]


def test_exact_copy_and_empty_candidate():
    cc = build(["a b c d e", ""], [["a b c d e"], ["x y z w"]])
    _, per = bleu(cc)
    # an exact copy is not 1: the epsilons of pycocoevalcap, per order and in the brevity penalty
    L = 5
    expect = math.prod((L - k + 1e-15) / (L - k + 1e-9) for k in range(4)) ** 0.25 * math.exp(1 - (L + 1e-9) / (L + 1e-15))
    assert per[3, 0] == pytest.approx(expect, abs=1e-15) and per[3, 0] < 1
    assert per[3, 1] == 0.0  # empty candidate: exactly 0
    _, cider_per = cider_d(cc)
    assert cider_per[1] == 0.0


def test_cider_one_image_is_zero_and_score_depends_on_the_set():
    assert cider_d(build(["a dog"], [["a dog"]]))[0] == 0.0  # log(N) = 0
    cands = ["a dog runs", "a cat sleeps", "a red bus"]
    refs = [["a dog runs fast"], ["a cat sleeps all day"], ["a red bus on a road"]]
    full, per = cider_d(build(cands, refs))
    sub, _ = cider_d(build(cands[:2], refs[:2]))
    assert full > 0 and sub > 0 and full != pytest.approx(sub)
    assert full == pytest.approx(per.mean())


def test_cider_copy_of_only_reference_scores_10_without_shared_ngrams():
    # disjoint vocabularies across images: every n-gram has DF 1, so a copy is cosine 1 -> 10
    cands = ["p q r s", "t u v w"]
    refs = [["p q r s"], ["t u v w"]]
    score, per = cider_d(build(cands, refs))
    assert per.tolist() == pytest.approx([10.0, 10.0])


def test_rouge_l_uses_separate_max_precision_and_recall():
    # recall 1 comes from the short reference, precision 1 from the long one: no single
    # reference gives both, yet the maxima combine to 1 (rouge-score would keep the best F)
    assert rouge_l_image("a b c", ["a", "a b c d e f"]) == pytest.approx(1.0)
    p, r, beta = 2 / 3, 1.0, 1.2  # "a b c" vs "a b": P = 2/3, R = 1
    assert rouge_l_image("a b c", ["a b"]) == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p))
    assert rouge_l_image("", [""]) > 0  # ''.split(' ') is [''], as in pycocoevalcap
    assert rouge_l_image("x", ["y"]) == 0.0


def test_scores_invariant_to_image_order():
    cands = {"1": "a dog runs", "2": "a cat sleeps on a mat", "3": "a red bus"}
    refs = {"1": ["a dog runs fast", "the dog runs"], "2": ["a cat sleeps", "cat on a mat"], "3": ["a red bus on a road"]}
    a = score_captions(cands, refs, tokenize="none").scores
    rev = {k: refs[k] for k in reversed(list(refs))}
    b = score_captions(cands, rev, tokenize="none").scores
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize(
    "preds, refs, msg",
    [
        ({"1": "a"}, {}, "contains no images"),
        ({"1": "a", "9": "b"}, {"1": ["a"]}, "not in"),
        ({"1": ["a", "b"]}, {"1": ["a"]}, "more than one prediction"),
        ({"1": "a"}, {"1": ["a"], "2": ["b"]}, "have no prediction"),
        ({"1": "a"}, {"1": []}, "no reference captions"),
    ],
)
def test_alignment_errors(preds, refs, msg):
    with pytest.raises(UserError, match=msg):
        score_captions(preds, refs, tokenize="none")


def test_restrict_to_preds_and_empty_prediction_warning():
    res = score_captions({"1": "a b", "2": ""}, {"1": ["a b"], "2": ["c d"], "3": ["e"]}, tokenize="none", restrict_to_preds=True)
    assert res.image_ids == ["1", "2"]
    assert any("empty prediction" in w for w in res.warnings)
    assert any("only the 2 predicted" in w for w in res.warnings)


def test_library_metrics_are_named_separately():
    res = score_captions({"1": "A dog runs."}, {"1": ["A dog runs.", "The dog is running."]}, metrics=("sacrebleu", "rouge_score"))
    assert set(res.scores) == {"sacrebleu", "rouge_score_l"}
    assert res.scores["sacrebleu"] == pytest.approx(100.0)
    assert res.scores["rouge_score_l"] == pytest.approx(1.0)
    assert "sacrebleu:nrefs:2" in res.signature


def test_vectorised_rouge_equals_plain_python():
    from mmcli.metrics.rouge import rouge_l_corpus

    rng = random.Random(1)
    words = "a b c d e f".split()
    cands, refs = [], []
    for i in range(300):
        cands.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 70))))
        refs.append([" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(1, 4))])
    # irregular spacing and empty strings take the plain path; results must not change
    cands[0], refs[1][0], cands[2] = " a  b ", "", ""
    got = rouge_l_corpus(build(cands, refs), cands, refs)
    want = [rouge_l_image(c, rs) for c, rs in zip(cands, refs)]
    assert got == pytest.approx(want, rel=1e-15, abs=0)
