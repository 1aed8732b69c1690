"""ROUGE-L exactly as pycocoevalcap's ``Rouge`` computes it (metrics-spec §4).

Tokens come from ``s.split(" ")``; per reference the longest common subsequence
gives a precision and a recall; precision and recall are maximised separately
over the references and combined with beta = 1.2; the corpus score is the mean
over images.

The LCS is bit-parallel (Allison-Dix / Hyyro): the candidate's positions are
bits of a word, and each reference token costs a few word operations instead
of a row of the dynamic-programming table. :func:`rouge_l_corpus` runs that
loop for all (candidate, reference) pairs at once in numpy (candidates of up to
64 tokens); :func:`rouge_l_image` is the plain-Python version for one image.
"""

from __future__ import annotations

import numpy as np

from .ngrams import CaptionCorpus

BETA = 1.2


def _masks(tokens: list[str]) -> dict[str, int]:
    """For each distinct token, a bit mask of the positions where it occurs."""
    masks: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[str, int], n_a: int, b: list[str]) -> int:
    """LCS length of a (given as its ``_masks`` and length) and b."""
    full = (1 << n_a) - 1
    v = full  # zero bits mark positions of a that end a match so far
    get = masks.get
    for tok in b:
        u = v & get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return n_a - v.bit_count()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    return _lcs(_masks(a), len(a), b)


def _f_score(prec, rec, beta: float = BETA):
    return ((1 + beta**2) * prec * rec) / (rec + beta**2 * prec)


def rouge_l_image(cand: str, refs: list[str], beta: float = BETA) -> float:
    """ROUGE-L of one candidate against its references (pycocoevalcap's calc_score)."""
    tc = cand.split(" ")  # never empty: "".split(" ") == [""]
    masks, n_c = _masks(tc), len(tc)
    prec, rec = 0.0, 0.0
    for ref in refs:
        tr = ref.split(" ")
        lcs = _lcs(masks, n_c, tr)
        # the maxima of precision and recall are taken separately, over all references
        prec = max(prec, lcs / float(n_c))
        rec = max(rec, lcs / float(len(tr)))
    return _f_score(prec, rec, beta) if prec != 0 and rec != 0 else 0.0


def rouge_l(cands: list[str], refs: list[list[str]], cc: CaptionCorpus | None = None) -> tuple[float, list[float]]:
    """Corpus ROUGE-L (mean over images) and the per-image scores.

    With ``cc`` (the same text counted by :func:`ngrams.build`) the vectorised
    path scores every image whose text is plainly spaced; the rest, and
    everything without ``cc``, go through :func:`rouge_l_image`.
    """
    if cc is None:
        per_image = [rouge_l_image(c, rs) for c, rs in zip(cands, refs)]
    else:
        per_image = rouge_l_corpus(cc, cands, refs)
    return (sum(per_image) / len(per_image) if per_image else 0.0), per_image


def rouge_l_corpus(cc: CaptionCorpus, cands: list[str], refs: list[list[str]]) -> list[float]:
    """Per-image ROUGE-L of all images at once, from the token ids in ``cc``."""
    N, R = cc.n_images, cc.ref_image.size
    lengths, tok = cc.corpus.lengths, cc.corpus.tok
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (S,) first token of each sentence
    # split() and split(" ") agree only for non-empty, singly spaced text without
    # other whitespace (tabs, NBSP, ...; all non-printable); other images (and
    # candidates over 64 tokens, one bit per position) use plain Python
    plain = np.fromiter(
        (bool(s) and s[0] != " " and s[-1] != " " and "  " not in s and (s.isprintable() or s.split() == s.split(" "))
         for s in (*cands, *(r for rs in refs for r in rs))),
        dtype=bool,
        count=lengths.size,
    )
    ok_img = plain[:N] & (lengths[:N] <= 64)
    ok_img &= np.logical_and.reduceat(plain[N:], cc.ref_start)

    # bit mask of candidate positions for every (image, token id): OR over positions
    c_pos = np.arange(int(lengths[:N].sum()), dtype=np.int64) - np.repeat(start[:N], lengths[:N])  # (Tc,)
    c_img = np.repeat(np.arange(N, dtype=np.int64), lengths[:N])
    width = int(tok.max(initial=0)) + 1
    c_key = c_img * width + tok[: c_pos.size]
    bits = np.left_shift(np.uint64(1), np.minimum(c_pos, 63).astype(np.uint64))
    srt = np.argsort(c_key, kind="stable")
    c_key, bits = c_key[srt], bits[srt]
    first = np.flatnonzero(np.r_[True, c_key[1:] != c_key[:-1]]) if c_key.size else np.zeros(0, np.int64)
    mask_key, mask_val = c_key[first], np.bitwise_or.reduceat(bits, first) if first.size else bits

    # the mask of every reference token: where it occurs in its image's candidate
    r_len = lengths[N:]
    r_tok = tok[c_pos.size :]
    r_img = np.repeat(cc.ref_image, r_len)
    key = r_img * width + r_tok
    pos = np.minimum(np.searchsorted(mask_key, key), max(mask_key.size - 1, 0))
    m = np.zeros(key.size, dtype=np.uint64)
    if mask_key.size:
        hit = mask_key[pos] == key
        m[hit] = mask_val[pos[hit]]

    # run the bit-parallel recurrence for all references together, longest first,
    # so that the references still running at step t are a prefix of the order
    order = np.argsort(-r_len, kind="stable")
    r_start = np.concatenate([[0], np.cumsum(r_len)[:-1]])[order]
    n_c = lengths[:N][cc.ref_image][order]
    full = np.where(n_c >= 64, np.uint64(2**64 - 1), (np.uint64(1) << np.minimum(n_c, 63).astype(np.uint64)) - np.uint64(1))
    v = full.copy()
    still = np.searchsorted(-r_len[order], -np.arange(int(r_len.max(initial=0))), side="left")  # refs longer than t
    for t, n_t in enumerate(still):
        u = v[:n_t] & m[r_start[:n_t] + t]
        v[:n_t] = ((v[:n_t] + u) | (v[:n_t] - u)) & full[:n_t]
    lcs_sorted = n_c - np.bitwise_count(v).astype(np.int64)
    lcs = np.empty(R, dtype=np.int64)
    lcs[order] = lcs_sorted

    with np.errstate(divide="ignore", invalid="ignore"):  # empty texts: redone in Python below
        prec = np.maximum.reduceat(lcs / lengths[:N][cc.ref_image].astype(np.float64), cc.ref_start)
        rec = np.maximum.reduceat(lcs / r_len.astype(np.float64), cc.ref_start)
        f = np.where((prec != 0) & (rec != 0), _f_score(prec, rec), 0.0)
    out = f.tolist()
    for i in np.flatnonzero(~ok_img).tolist():
        out[i] = rouge_l_image(cands[i], refs[i])
    return out
