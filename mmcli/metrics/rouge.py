"""ROUGE-L exactly as pycocoevalcap's ``Rouge`` computes it (metrics-spec §4).

Tokens come from ``s.split(" ")``; per reference the longest common subsequence
gives a precision and a recall; precision and recall are maximised separately
over the references and combined with beta = 1.2; the corpus score is the mean
over images.
"""

from __future__ import annotations

BETA = 1.2


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison-Dix / Hyyro): one machine-word-like operation per
    token of ``b`` instead of a row of the dynamic-programming table; Python's
    big integers hold any length.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # zero bits mark the positions of a that end a match so far
    get = masks.get
    for tok in b:
        u = v & get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_image(cand: str, refs: list[str], beta: float = BETA) -> float:
    """ROUGE-L of one candidate against its references (pycocoevalcap's calc_score)."""
    tc = cand.split(" ")
    prec, rec = [], []
    for ref in refs:
        tr = ref.split(" ")
        lcs = lcs_length(tc, tr)
        prec.append(lcs / float(len(tc)))
        rec.append(lcs / float(len(tr)))
    p, r = max(prec), max(rec)
    if p != 0 and r != 0:
        return ((1 + beta**2) * p * r) / float(r + beta**2 * p)
    return 0.0


def rouge_l(cands: list[str], refs: list[list[str]]) -> tuple[float, list[float]]:
    """Corpus ROUGE-L (mean over images) and the per-image scores."""
    per_image = [rouge_l_image(c, rs) for c, rs in zip(cands, refs)]
    return (sum(per_image) / len(per_image) if per_image else 0.0), per_image
