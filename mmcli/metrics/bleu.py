"""BLEU-1..4 exactly as pycocoevalcap's ``Bleu(4)`` computes it (metrics-spec §3).

Corpus BLEU from summed clipped matches, guesses and lengths, with the
"closest" reference length (ties go to the shorter reference), the epsilons
``tiny = 1e-15`` and ``small = 1e-9``, and one brevity penalty for every order.
Per-image scores use the same formula on one sentence's statistics.
"""

from __future__ import annotations

import math

import numpy as np

from .ngrams import CaptionCorpus, first_of_runs, lookup

TINY = 1e-15
SMALL = 1e-9


def closest_ref_len(cc: CaptionCorpus) -> np.ndarray:
    """Per image, the reference length closest to the candidate's; the shorter on ties."""
    ref_len = cc.ref_len
    diff = np.abs(ref_len - cc.cand_len[cc.ref_image])
    big = int(ref_len.max(initial=0)) + 1
    # min over (|diff|, length) pairs, as one integer per reference
    key = diff * big + ref_len
    return np.minimum.reduceat(key, cc.ref_start) % big


def bleu(cc: CaptionCorpus, n: int = 4) -> tuple[list[float], np.ndarray]:
    """Corpus BLEU-1..n and the per-image scores, shape (n, N)."""
    N = cc.n_images
    test_len = cc.cand_len
    ref_len = closest_ref_len(cc)
    correct = np.zeros((n, N), dtype=np.int64)
    guess = np.maximum(0, test_len[None, :] - np.arange(n)[:, None])  # (n, N): L - k + 1
    for k, order in enumerate(cc.corpus.orders[:n]):
        is_ref = order.sent >= N
        # rows are sorted by (gram, sentence), so (gram, image) keys of the
        # references come sorted, each image's references next to each other
        r_key = order.gram[is_ref] * N + cc.ref_image[order.sent[is_ref] - N]
        starts = np.flatnonzero(first_of_runs(r_key))
        max_key = r_key[starts]
        # the most times each n-gram occurs in any one reference of the image
        max_cnt = np.maximum.reduceat(order.count[is_ref], starts) if starts.size else starts
        c_sent = order.sent[~is_ref]  # candidate rows: sentence index == image index
        clipped = np.minimum(order.count[~is_ref], lookup(order.gram[~is_ref] * N + c_sent, max_key, max_cnt))
        correct[k] = np.bincount(c_sent, weights=clipped, minlength=N).astype(np.int64)

    # corpus score: Python floats in the reference implementation's order of operations
    c_tot, g_tot = correct.sum(axis=1), guess.sum(axis=1)
    testlen, reflen = int(test_len.sum()), int(ref_len.sum())
    scores, b = [], 1.0
    for k in range(n):
        b *= float(int(c_tot[k]) + TINY) / (int(g_tot[k]) + SMALL)
        scores.append(b ** (1.0 / (k + 1)))
    ratio = (testlen + TINY) / (reflen + SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]

    # per-image scores, the same formula on each image's own statistics
    prec = np.cumprod((correct + TINY) / (guess + SMALL), axis=0)
    per_image = prec ** (1.0 / np.arange(1, n + 1))[:, None]
    ratio_i = (test_len + TINY) / (ref_len + SMALL)
    with np.errstate(over="ignore"):  # an empty candidate: exp(-1e16) underflows to 0
        bp = np.where(ratio_i < 1, np.exp(1 - 1 / ratio_i), 1.0)
    return scores, per_image * bp[None, :]
