"""mmcli's caption metrics against pycocoevalcap itself, on real COCO captions.

Needs ../shared/data/coco-captions; the raw-text comparison also needs Java
(pycocoevalcap's tokenizer is a Java program). Each skips with the reason.
"""

from __future__ import annotations

import json

import pytest

from mmcli.metrics.captions import score_captions

SMALL = [f"thumb500_pred_{m}" for m in ("updown", "unifiedvlp", "vinvl_base", "vinvl_large", "wi2_merge")]
LARGE = [f"karpathy_test5k_pred_wi2_{m}" for m in ("merge", "init")]
KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]


def refs_for(stem: str) -> str:
    return "thumb500_refs" if stem.startswith("thumb500") else "karpathy_test5k_refs"


def as_lists(d: dict) -> dict:
    return {k: (v if isinstance(v, list) else [v]) for k, v in d.items()}


def pycoco_scores(gts: dict, res: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    r, _ = Rouge().compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    return dict(zip(KEYS, [*b, r, c]))


def pycoco_tokenize(d: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in d.items()})


def check_pretokenized(coco_dir, stem):
    pytest.importorskip("pycocoevalcap")
    refs = json.loads((coco_dir / "ptb" / f"{refs_for(stem)}.ptb.json").read_text())
    preds = as_lists(json.loads((coco_dir / "ptb" / f"{stem}.ptb.json").read_text()))
    ours = score_captions(preds, refs, tokenize="none").scores
    theirs = pycoco_scores(refs, {k: preds[k] for k in refs})
    for k in KEYS:
        assert abs(ours[k] - theirs[k]) <= 1e-9, (stem, k, ours[k], theirs[k])


def check_raw(coco_dir, stem):
    refs = json.loads((coco_dir / f"{refs_for(stem)}.json").read_text())
    preds = as_lists(json.loads((coco_dir / f"{stem}.json").read_text()))
    ours = score_captions(preds, refs, tokenize="ptb").scores
    theirs = pycoco_scores(pycoco_tokenize(refs), pycoco_tokenize({k: preds[k] for k in refs}))
    for k in KEYS:
        # the tokenizer reproduces the Java output on these files, so the bound is the same 1e-9
        assert abs(ours[k] - theirs[k]) <= 1e-9, (stem, k, ours[k], theirs[k])


@pytest.mark.parametrize("stem", SMALL)
def test_pretokenized_matches_pycocoevalcap_500(coco_dir, stem):
    check_pretokenized(coco_dir, stem)


@pytest.mark.parametrize("stem", SMALL)
def test_raw_text_matches_pycocoevalcap_500(coco_dir, java, stem):
    check_raw(coco_dir, stem)


@pytest.mark.slow
@pytest.mark.parametrize("stem", LARGE)
def test_pretokenized_matches_pycocoevalcap_5000(coco_dir, stem):
    check_pretokenized(coco_dir, stem)


@pytest.mark.slow
@pytest.mark.parametrize("stem", LARGE)
def test_raw_text_matches_pycocoevalcap_5000(coco_dir, java, stem):
    check_raw(coco_dir, stem)


@pytest.mark.parametrize("stem", SMALL + LARGE)
def test_against_published_oracle_values(coco_dir, stem):
    """The spec's table of pycocoevalcap 1.2 results (6 decimals), without running it."""
    oracle = {
        "karpathy_test5k_pred_wi2_merge": [0.677800, 0.499844, 0.359592, 0.258215, 0.491666, 0.779771],
        "karpathy_test5k_pred_wi2_init": [0.677701, 0.500496, 0.366817, 0.270478, 0.497808, 0.811724],
        "thumb500_pred_updown": [0.746813, 0.585030, 0.448932, 0.342393, 0.552047, 1.144394],
        "thumb500_pred_unifiedvlp": [0.803294, 0.649241, 0.500852, 0.378916, 0.591231, 1.332674],
        "thumb500_pred_vinvl_base": [0.810300, 0.655106, 0.510359, 0.388201, 0.596536, 1.433489],
        "thumb500_pred_vinvl_large": [0.814874, 0.662182, 0.515659, 0.392094, 0.598577, 1.459537],
        "thumb500_pred_wi2_merge": [0.671016, 0.494067, 0.351894, 0.250820, 0.488602, 0.809865],
    }[stem]
    refs = json.loads((coco_dir / f"{refs_for(stem)}.json").read_text())
    preds = json.loads((coco_dir / f"{stem}.json").read_text())
    ours = score_captions(preds, refs).scores
    assert [ours[k] for k in KEYS] == pytest.approx(oracle, abs=1.5e-6)
