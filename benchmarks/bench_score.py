"""Speed of `mmcli score` against pycocoevalcap on the 5000-image COCO Karpathy test files.

One interleaved run: every round times each contender once, so the machine's
slow and fast phases hit both alike; the report gives medians and the median of
the per-round ratios. Needs ../shared/data/coco-captions, pycocoevalcap and Java
(pip install -e '.[bench]').

    python benchmarks/bench_score.py --rounds 5

Contenders (the same input text on both sides):
  cider      pycocoevalcap Cider().compute_score  vs  mmcli n-gram counting + cider_d
  bleu       pycocoevalcap Bleu(4).compute_score  vs  mmcli n-gram counting + bleu
  rouge      pycocoevalcap Rouge().compute_score  vs  mmcli n-gram counting (token ids) + rouge_l
  (all three on the PTB-tokenized files)
  whole      pycocoevalcap PTBTokenizer on refs + preds (two JVM runs, tokenization alone)
             vs  the whole `mmcli score PREDS REFS` command in a fresh process (start-up,
             file reading, tokenization, BLEU, ROUGE-L, CIDEr-D)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco-captions"
sys.path.insert(0, str(ROOT))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its children)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preds", default="karpathy_test5k_pred_wi2_merge")
    ap.add_argument("--refs", default="karpathy_test5k_refs")
    ap.add_argument("--json", type=Path, help="also write the raw timings here")
    args = ap.parse_args()

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from mmcli.metrics.bleu import bleu
    from mmcli.metrics.cider import cider_d
    from mmcli.metrics.ngrams import build
    from mmcli.metrics.rouge import rouge_l

    refs_tok = json.loads((DATA / "ptb" / f"{args.refs}.ptb.json").read_text())
    preds_tok = json.loads((DATA / "ptb" / f"{args.preds}.ptb.json").read_text())
    ids = list(refs_tok)
    res = {k: (preds_tok[k] if isinstance(preds_tok[k], list) else [preds_tok[k]]) for k in ids}
    cands, refs = [res[k][0] for k in ids], [refs_tok[k] for k in ids]
    raw_refs = json.loads((DATA / f"{args.refs}.json").read_text())
    raw_preds = json.loads((DATA / f"{args.preds}.json").read_text())
    tok_in_refs = {k: [{"caption": c} for c in v] for k, v in raw_refs.items()}
    tok_in_preds = {k: [{"caption": raw_preds[k]}] for k in raw_refs}
    cli = [sys.executable, "-m", "mmcli", "score", str(DATA / f"{args.preds}.json"), str(DATA / f"{args.refs}.json"), "--json"]

    contenders = {
        "cider": (lambda: Cider().compute_score(refs_tok, res), lambda: cider_d(build(cands, refs))),
        "bleu": (lambda: Bleu(4).compute_score(refs_tok, res, verbose=0), lambda: bleu(build(cands, refs))),
        "rouge": (lambda: Rouge().compute_score(refs_tok, res), lambda: rouge_l(cands, refs, build(cands, refs))),
        "whole": (
            lambda: (PTBTokenizer().tokenize(tok_in_refs), PTBTokenizer().tokenize(tok_in_preds)),
            lambda: subprocess.run(cli, check=True, capture_output=True),
        ),
    }
    times = {name: ([], []) for name in contenders}
    others = []  # CPU seconds used by other processes during each round
    for r in range(args.rounds):
        busy0, own0 = cpu_seconds()
        for name, (theirs, ours) in contenders.items():
            # alternate who goes first, so neither always gets the warmer caches
            order = [(0, theirs), (1, ours)] if r % 2 == 0 else [(1, ours), (0, theirs)]
            for side, fn in order:
                times[name][side].append(timed(fn))
        busy1, own1 = cpu_seconds()
        others.append(max(0.0, (busy1 - busy0) - (own1 - own0)))
        print(f"round {r + 1}/{args.rounds} done (other processes: {others[-1]:.2f} CPU s)", file=sys.stderr)

    print(f"\n{len(ids)} images, {sum(map(len, refs))} references; {args.rounds} interleaved rounds")
    print("| contender | pycocoevalcap (median s) | mmcli (median s) | speed-up (median of per-round ratios) |")
    print("|---|---|---|---|")
    labels = {
        "cider": "CIDEr-D scorer",
        "bleu": "BLEU-1..4 scorer",
        "rouge": "ROUGE-L scorer",
        "whole": "tokenization alone (theirs) vs whole `mmcli score` (ours)",
    }
    report = {}
    for name, (theirs, ours) in times.items():
        ratio = statistics.median(t / o for t, o in zip(theirs, ours))
        report[name] = {"pycocoevalcap": theirs, "mmcli": ours, "ratio_median": ratio}
        print(f"| {labels[name]} | {statistics.median(theirs):.3f} | {statistics.median(ours):.3f} | {ratio:.1f}x |")
    print(f"\nCPU seconds used by other processes in each round: {', '.join(f'{x:.2f}' for x in others)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
