"""How close `mmcli score` is to pycocoevalcap on the shared COCO caption files.

For each of the 7 evaluations in ../shared/data/coco-captions: the largest absolute
difference over BLEU-1..4, ROUGE-L and CIDEr-D between mmcli and pycocoevalcap 1.2,
(a) on the pre-tokenized ptb/ files with --tokenize none, (b) on the raw files, with
mmcli's tokenizer against pycocoevalcap's Java tokenizer; and how many captions mmcli's
tokenizer renders differently from the Java one. Needs pycocoevalcap and Java.

    python benchmarks/parity_score.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco-captions"
sys.path.insert(0, str(ROOT))

STEMS = [f"thumb500_pred_{m}" for m in ("updown", "unifiedvlp", "vinvl_base", "vinvl_large", "wi2_merge")] + [
    f"karpathy_test5k_pred_wi2_{m}" for m in ("merge", "init")
]
KEYS = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"]


def lists(d: dict) -> dict:
    return {k: (v if isinstance(v, list) else [v]) for k, v in d.items()}


def pycoco(gts: dict, res: dict) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return dict(zip(KEYS, [*b, Rouge().compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]]))


def java_tokenize(d: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in d.items()})


def main() -> None:
    from mmcli.metrics.captions import score_captions
    from mmcli.metrics.tokenize import ptb_tokenize_batch

    print("| evaluation | images | max diff, ptb/ text, --tokenize none | max diff, raw text | captions tokenized differently |")
    print("|---|---|---|---|---|")
    for stem in STEMS:
        refs_stem = "thumb500_refs" if stem.startswith("thumb500") else "karpathy_test5k_refs"
        refs_ptb = json.loads((DATA / "ptb" / f"{refs_stem}.ptb.json").read_text())
        preds_ptb = lists(json.loads((DATA / "ptb" / f"{stem}.ptb.json").read_text()))
        refs = json.loads((DATA / f"{refs_stem}.json").read_text())
        preds = lists(json.loads((DATA / f"{stem}.json").read_text()))
        ours = score_captions(preds_ptb, refs_ptb, tokenize="none").scores
        theirs = pycoco(refs_ptb, {k: preds_ptb[k] for k in refs_ptb})
        d_pre = max(abs(ours[k] - theirs[k]) for k in KEYS)
        ours = score_captions(preds, refs).scores
        jr, jp = java_tokenize(refs), java_tokenize({k: preds[k] for k in refs})
        theirs = pycoco(jr, jp)
        d_raw = max(abs(ours[k] - theirs[k]) for k in KEYS)
        ids = list(refs)
        mine_p = ptb_tokenize_batch([preds[k][0] for k in ids])
        mine_r = ptb_tokenize_batch([c for k in ids for c in refs[k]])
        java_p = [jp[k][0] for k in ids]
        java_r = [c for k in ids for c in jr[k]]
        diff = sum(a != b for a, b in zip(mine_p + mine_r, java_p + java_r))
        print(f"| {stem} | {len(ids)} | {d_pre:.1e} | {d_raw:.1e} | {diff} of {len(java_p) + len(java_r)} |")


if __name__ == "__main__":
    main()
