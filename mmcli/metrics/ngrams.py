"""Vectorised n-gram counting shared by BLEU and CIDEr-D.

The reference scorers (pycocoevalcap) build a Python dict of n-gram tuples per
sentence; at 30,000 sentences that costs seconds. Here every token becomes an
integer, every n-gram an integer id, and every (sentence, n-gram) count one row
of three parallel numpy arrays, so the metrics become sorts, joins and
bincounts over flat arrays.

Tokens are whatever ``str.split()`` gives, which is how both BLEU and CIDEr-D in
pycocoevalcap split the PTB-tokenized text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NgramCounts:
    """The n-grams of one order, for every sentence.

    Rows are unique and sorted by (gram, sentence): ``sent[k]`` holds n-gram
    ``gram[k]`` exactly ``count[k]`` times. ``n_grams`` is the number of
    distinct n-grams of this order over all sentences (ids ``0..n_grams-1``).
    """

    sent: np.ndarray  # int64 (K,)
    gram: np.ndarray  # int64 (K,)
    count: np.ndarray  # int64 (K,)
    n_grams: int


@dataclass(frozen=True)
class Corpus:
    """Sentences as token ids plus their n-gram counts for orders 1..n."""

    lengths: np.ndarray  # int64 (S,): tokens per sentence
    orders: list[NgramCounts]  # orders[k] holds the (k+1)-grams
    tok: np.ndarray  # int64 (T,): token ids, sentence after sentence (equal ids = equal tokens)


def _token_ids(sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of all sentences, one after another, and tokens per sentence.

    Equal tokens get equal ids; ids are below the number of tokens (numbered by
    first occurrence, not dense). One ``split()`` of the joined text is much
    faster than one per sentence; a NUL token marks the sentence boundaries.
    """
    vocab: dict[str, int] = {}
    flat = " \x00 ".join(sentences).split()
    ids = np.fromiter(map(vocab.setdefault, flat, range(len(flat))), dtype=np.int64, count=len(flat))
    sep_id = vocab.get("\x00", -1)
    sep = np.flatnonzero(ids == sep_id)
    if sep.size == max(len(sentences) - 1, 0):
        lengths = np.diff(np.concatenate([[-1], sep, [ids.size]])) - 1 if sentences else np.zeros(0, np.int64)
        return ids[ids != sep_id], lengths.astype(np.int64)
    # some sentence holds a lone NUL token itself: split sentence by sentence
    split = [s.split() for s in sentences]
    vocab = {}
    n_tok = sum(map(len, split))
    ids = np.fromiter(map(vocab.setdefault, itertools.chain.from_iterable(split), range(n_tok)), np.int64, n_tok)
    return ids, np.fromiter(map(len, split), dtype=np.int64, count=len(split))


def encode(sentences: list[str], n: int = 4) -> Corpus:
    """Count the 1..n-grams of every sentence (tokens = ``s.split()``).

    One sort per order: the n-gram starting positions are sorted by (n-gram,
    position), which gives dense n-gram ids (runs of equal n-grams), the counts
    (runs of equal n-gram and sentence, since positions run sentence by
    sentence) and rows already grouped the way BLEU and CIDEr-D join them.
    """
    tok, lengths = _token_ids(sentences)
    n_tok = tok.size
    sent = np.repeat(np.arange(len(sentences), dtype=np.int64), lengths)  # (T,)
    # rem[i]: tokens from position i to the end of its sentence, i included;
    # a k-gram starts at i only if rem[i] >= k.
    rem = np.repeat(np.cumsum(lengths), lengths) - np.arange(n_tok, dtype=np.int64)
    pos_bits = max(n_tok.bit_length(), 1)
    orders: list[NgramCounts] = []
    prev = tok  # (T,) id of the (k-1)-gram starting at each position
    key_bound = n_tok  # every key of this order is below this
    for k in range(1, n + 1):
        pos = np.flatnonzero(rem >= k)  # positions where a k-gram starts
        if pos.size == 0:  # no sentence is this long
            empty = np.zeros(0, dtype=np.int64)
            orders.append(NgramCounts(empty, empty, empty, 0))
            continue
        if k == 1:
            key = tok[pos]
        else:  # the k-gram at i is the (k-1)-gram at i followed by the unigram at i+k-1
            key = prev[pos] * n_uni + unigram[pos + (k - 1)]
        if key_bound.bit_length() + pos_bits <= 62:
            # key and position packed in one int64: a plain sort, faster than argsort
            packed = np.sort((key << pos_bits) | pos)
            s_pos, s_key = packed & ((1 << pos_bits) - 1), packed >> pos_bits
        else:  # a huge corpus: stable argsort keeps positions in order within a key
            o = np.argsort(key, kind="stable")
            s_pos, s_key = pos[o], key[o]
        s_sent = sent[s_pos]
        new_gram = first_of_runs(s_key)
        dense = np.cumsum(new_gram) - 1  # (P,) dense id of the k-gram, in sorted order
        n_grams = int(dense[-1]) + 1
        prev = np.empty(n_tok, dtype=np.int64)
        prev[s_pos] = dense  # back to position order, for the next order
        if k == 1:
            unigram, n_uni = prev, n_grams
        key_bound = n_grams * n_uni
        new_row = new_gram | first_of_runs(s_sent)  # a new (gram, sentence) pair
        starts = np.flatnonzero(new_row)
        count = np.diff(np.append(starts, s_key.size))
        orders.append(NgramCounts(s_sent[starts], dense[starts], count, n_grams))
    return Corpus(lengths=lengths, orders=orders, tok=tok)


def first_of_runs(a: np.ndarray) -> np.ndarray:
    """Boolean mask of the elements that differ from their predecessor (runs of a sorted array)."""
    mask = np.empty(a.size, dtype=bool)
    mask[:1] = True
    np.not_equal(a[1:], a[:-1], out=mask[1:])
    return mask


def lookup(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray) -> np.ndarray:
    """``table_values`` at ``keys`` in the sorted ``table_keys``; 0 where absent."""
    if table_keys.size == 0:
        return np.zeros(keys.shape, dtype=table_values.dtype)
    pos = np.searchsorted(table_keys, keys)
    pos = np.minimum(pos, table_keys.size - 1)
    found = table_keys[pos] == keys
    return np.where(found, table_values[pos], 0)


@dataclass(frozen=True)
class CaptionCorpus:
    """One candidate per image and its references, counted once for every metric.

    Sentence ``i < n_images`` is the candidate of image ``i``; sentence
    ``n_images + r`` is reference ``r``, of image ``ref_image[r]``. The
    references of an image are contiguous, images in order, starting at
    ``ref_start[i]``.
    """

    n_images: int
    ref_image: np.ndarray  # int64 (R,)
    ref_start: np.ndarray  # int64 (N,)
    corpus: Corpus

    @property
    def cand_len(self) -> np.ndarray:
        return self.corpus.lengths[: self.n_images]

    @property
    def ref_len(self) -> np.ndarray:
        return self.corpus.lengths[self.n_images :]


def build(cands: list[str], refs: list[list[str]], n: int = 4) -> CaptionCorpus:
    """Count the n-grams of ``cands[i]`` and ``refs[i]`` (tokens = ``split()``)."""
    if len(cands) != len(refs):
        raise ValueError("one candidate per image is needed")
    per_image = np.fromiter((len(r) for r in refs), dtype=np.int64, count=len(refs))
    if (per_image == 0).any():
        raise ValueError("every image needs at least one reference")
    flat = [r for rs in refs for r in rs]
    starts = np.concatenate([[0], np.cumsum(per_image)[:-1]]).astype(np.int64)
    return CaptionCorpus(
        n_images=len(cands),
        ref_image=np.repeat(np.arange(len(cands), dtype=np.int64), per_image),
        ref_start=starts,
        corpus=encode(list(cands) + flat, n),
    )
