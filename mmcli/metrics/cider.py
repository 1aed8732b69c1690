"""CIDEr-D exactly as pycocoevalcap's ``Cider`` computes it (metrics-spec §5).

TF-IDF vectors of raw n-gram counts, n = 1..4, with document frequencies taken
from the references of the images scored together and ``log(N)`` as the IDF
numerator; similarity clipped by ``min(w_h, w_r) * w_r``; a Gaussian penalty on
the difference in bigram counts (sigma = 6); mean over orders and references,
times 10. The score depends on the set of images scored together.
"""

from __future__ import annotations

import numpy as np

from .ngrams import CaptionCorpus, first_of_runs, lookup


def cider_d(cc: CaptionCorpus, n: int = 4, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """Corpus CIDEr-D and the per-image scores, shape (N,)."""
    N = cc.n_images
    R = cc.ref_image.size
    S = N + R
    log_n = np.log(float(N))
    # "length" is the number of bigrams (order index 1 in the reference code)
    length = np.maximum(cc.corpus.lengths - 1, 0)
    delta = (length[cc.ref_image] - length[N:]).astype(np.float64)  # (R,) candidate minus reference
    penalty = np.exp(-(delta**2) / (2 * sigma**2))
    per_ref = np.zeros(R)  # sum over orders of the penalised similarity, per reference
    for order in cc.corpus.orders[:n]:
        G = order.n_grams
        is_ref = order.sent >= N
        r_sent = order.sent[is_ref] - N
        # (gram, image) keys of reference rows: sorted, since rows are sorted by
        # (gram, sentence) and each image's references are consecutive sentences
        r_key = order.gram[is_ref] * N + cc.ref_image[r_sent]
        first = first_of_runs(r_key)
        # document frequency: in how many images' references each n-gram occurs
        df = np.bincount(order.gram[is_ref][first], minlength=G)
        idf = log_n - np.log(np.maximum(1.0, df))
        w = order.count * idf[order.gram]  # (K,) TF-IDF weight of every row
        norm = np.sqrt(np.bincount(order.sent, weights=w * w, minlength=S))  # (S,)
        # join each reference row with the candidate row of the same image and n-gram
        c_key = order.gram[~is_ref] * N + order.sent[~is_ref]  # sorted too
        w_r = w[is_ref]
        w_h = lookup(r_key, c_key, w[~is_ref])
        num = np.bincount(r_sent, weights=np.minimum(w_h, w_r) * w_r, minlength=R).astype(np.float64)
        denom = norm[cc.ref_image] * norm[N:]
        sim = np.divide(num, denom, out=num.copy(), where=denom != 0)
        per_ref += sim * penalty
    refs_per_image = np.diff(np.r_[cc.ref_start, R])
    per_image = np.add.reduceat(per_ref, cc.ref_start) / n / refs_per_image * 10.0
    return float(np.mean(per_image)), per_image
