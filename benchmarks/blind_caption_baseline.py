"""The blind captioning baseline: the single training caption that scores best on a split when
it is given as the caption of every image (CIDEr-D as pycocoevalcap, PTB tokenizer).

    python benchmarks/blind_caption_baseline.py --data flickr8k:../shared/data/flickr8k --split val

A model that does not look at its image cannot beat this number by much. Every distinct
training caption gets a cheap linear estimate of its CIDEr-D (the TF-IDF dot product with
all the split's references, without CIDEr-D's clipping and length penalty); the --shortlist
best of them are then scored exactly with mmcli's CIDEr-D (equal to pycocoevalcap's to
1e-9), and the best is reported with its BLEU-4 and ROUGE-L. The search is heuristic
in its shortlist, so the number is a lower bound of the true best single caption.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset spec with captions, as for mmcli finetune")
    ap.add_argument("--split", default="val", help="the split to score on (default val)")
    ap.add_argument("--shortlist", type=int, default=300, help="candidates scored exactly")
    a = ap.parse_args()

    from mmcli.data.spec import load_dataset
    from mmcli.metrics.captions import score_captions
    from mmcli.metrics.tokenize import ptb_tokenize_batch

    t0 = time.perf_counter()
    ds = load_dataset(a.data)
    train, split = ds.split("train"), ds.split(a.split)
    refs = {r.image_id: list(r.captions) for r in split.captions}
    ref_tok = {k: ptb_tokenize_batch(v) for k, v in refs.items()}
    cands = sorted(set(ptb_tokenize_batch([c for r in train.captions for c in r.captions])) - {""})

    # the linear estimate: per order n, W[g] = sum over references r of idf(g) * tf_r(g) * idf(g) / |v_r| / |refs of r's image|
    n_images = len(ref_tok)
    W = [defaultdict(float) for _ in range(4)]
    IDF = []
    for n in range(1, 5):
        df = Counter(g for rs in ref_tok.values() for g in set().union(*(ngrams(r.split(), n) for r in rs)))
        idf = {g: math.log(n_images) - math.log(max(1.0, d)) for g, d in df.items()}
        for rs in ref_tok.values():
            for r in rs:
                tf = ngrams(r.split(), n)
                norm = math.sqrt(sum((c * idf[g]) ** 2 for g, c in tf.items())) or 1.0
                for g, c in tf.items():
                    W[n - 1][g] += idf[g] * c * idf[g] / norm / len(rs)
        IDF.append(idf)  # for the candidates' norms

    def estimate(c: str) -> float:
        toks, total = c.split(), 0.0
        for n in range(1, 5):
            idf = IDF[n - 1]
            tf = ngrams(toks, n)
            norm = math.sqrt(sum((k * idf.get(g, math.log(n_images))) ** 2 for g, k in tf.items())) or 1.0
            total += sum(k * W[n - 1].get(g, 0.0) for g, k in tf.items()) / norm
        return total

    short = sorted(cands, key=estimate, reverse=True)[: a.shortlist]
    best, best_score = None, -1.0
    ids = list(ref_tok)
    for c in short:
        s = score_captions({k: c for k in ids}, {k: ref_tok[k] for k in ids}, metrics=("cider_d",),
                           tokenize="none").scores["cider_d"]
        if s > best_score:
            best, best_score = c, s
    full = score_captions({k: best for k in ids}, {k: ref_tok[k] for k in ids},
                          metrics=("bleu", "rouge_l", "cider_d"), tokenize="none").scores
    print(json.dumps({"data": a.data, "split": a.split, "images": n_images, "train_captions": len(cands),
                      "shortlist": len(short), "caption": best, "seconds": round(time.perf_counter() - t0, 1),
                      **{k: round(v, 4) for k, v in full.items()}}))


if __name__ == "__main__":
    main()
