"""Text generation over a KV cache: greedy, beam search and sampling.

The model implements ``Decoder``: ``start`` encodes the images once and returns
a state holding the KV cache; ``step`` feeds new tokens and returns their
logits. Every step here feeds only the newest token, never the whole prefix.

All three functions return one list of token ids per image, without bos and
eos. ``max_len`` is the most tokens a result holds (eos not counted);
``min_len`` forbids eos until that many tokens are out. Rows that finish are
dropped from the batch (``state.select`` with the rows still running), so a
batch costs what its longest caption costs, and greedy and beam results do not
depend on which other images share the batch.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

NEG_INF = float("-inf")


class State(Protocol):
    def select(self, index: torch.Tensor) -> None:
        """Keep, reorder or repeat batch rows in place: row i becomes old row index[i]."""

    def expand(self, k: int) -> None:
        """Every row becomes k consecutive rows (row i: rows i*k .. i*k + k-1); beam search then
        reorders rows within those blocks and drops whole blocks only."""


class Decoder(Protocol):
    def start(self, images: torch.Tensor) -> State:
        """Encode the images once; the state holds the KV cache, one row per image."""

    def step(self, tokens: torch.Tensor, state: State) -> torch.Tensor:
        """Append tokens (B, t) to every row; return their logits (B, t, V)."""


# ---------------------------------------------------------------------------
# greedy and sampling: one token per row per step


@torch.no_grad()
def greedy(
    decoder: Decoder, images: torch.Tensor, bos_id: int, eos_id: int, max_len: int, min_len: int = 0
) -> list[list[int]]:
    """The most likely token at every step."""
    return _decode(decoder, images, (bos_id, eos_id), (max_len, min_len), lambda logits: logits.argmax(-1))


@torch.no_grad()
def sample(
    decoder: Decoder,
    images: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    min_len: int = 0,
) -> list[list[int]]:
    """Draw each token from the softmax of logits / temperature, restricted to
    the top_k most likely tokens (0: all) and to the smallest set of tokens whose
    probability reaches top_p (1.0: all). temperature <= 0 is greedy. The
    generator, if given, must be on the images' device; the same seed then gives
    the same captions for the same batch."""

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _decode(decoder, images, (bos_id, eos_id), (max_len, min_len), pick)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with the tokens outside top-k / the top-p nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the more likely tokens already reach top_p; the most
        # likely token always stays (the mass before it is 0)
        drop = probs.cumsum(-1) - probs >= top_p
        drop = drop.scatter(-1, order, drop)  # back to vocabulary order
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def _decode(
    decoder: Decoder,
    images: torch.Tensor,
    ids: tuple[int, int],
    lengths: tuple[int, int],
    pick: Callable[[torch.Tensor], torch.Tensor],
) -> list[list[int]]:
    """Greedy or sampled decoding: pick maps (rows, V) fp32 logits to (rows,) tokens."""
    (bos_id, eos_id), (max_len, min_len) = ids, lengths
    n = images.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    if max_len <= 0 or n == 0:
        return out
    state = decoder.start(images)
    rows = list(range(n))  # the image of each row still in the batch
    tokens = torch.full((n, 1), bos_id, dtype=torch.long, device=images.device)  # (rows, 1)
    for t in range(max_len):
        logits = decoder.step(tokens, state)[:, -1].float()  # (rows, V): only the new position
        if t < min_len:
            logits = _forbid_eos(logits, eos_id)
        new = pick(logits)  # (rows,)
        keep = []
        for r, token in enumerate(new.tolist()):
            if token != eos_id:
                out[rows[r]].append(token)
                keep.append(r)
        if not keep or t == max_len - 1:
            break
        if len(keep) < len(rows):
            # drop the finished rows: the rest of the batch runs without them
            index = torch.tensor(keep, device=new.device)
            state.select(index)
            new = new[index]
            rows = [rows[r] for r in keep]
        tokens = new[:, None]  # (rows, 1)
    return out


# ---------------------------------------------------------------------------
# beam search


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    images: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    *,
    beam: int = 3,
    length_penalty: float = 1.0,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
) -> list[list[int]]:
    """Batched beam search: ``beam`` rows per image, all images in one pass.

    A finished hypothesis scores sum(log p) / len ** length_penalty, len
    counting its tokens and its eos, as in fairseq (0 ranks by total
    log-probability, 1 by the mean per token, more favours longer captions). As in fairseq,
    eos is accepted only among an image's ``beam`` best candidates of a step,
    and an image stops when it has ``beam`` finished hypotheses; at ``max_len``
    the live beams count as finished. ``no_repeat_ngram`` n > 0 forbids any
    n-gram of generated tokens to occur twice in a hypothesis. The result of an
    image is its best finished hypothesis.
    """
    n = images.shape[0]
    if max_len <= 0 or n == 0:
        return [[] for _ in range(n)]
    device = images.device
    state = decoder.start(images)
    # image i owns rows i*beam .. i*beam + beam-1
    state.expand(beam)
    search = _Beams(n, beam, eos_id, length_penalty, device)
    tokens = torch.full((n * beam, 1), bos_id, dtype=torch.long, device=device)  # (rows, 1)
    for t in range(max_len):
        logp = decoder.step(tokens, state)[:, -1].float().log_softmax(-1)  # (rows, V)
        logp = _forbid(logp, search.seqs, t < min_len, eos_id, no_repeat_ngram)
        index = search.advance(logp)
        if index is None:  # every image has its hypotheses
            break
        if t < max_len - 1:
            state.select(index)
            tokens = search.seqs[:, -1:]  # (rows, 1): the newest token of each beam
    return search.results()


class _Beams:
    """The bookkeeping of beam search: live beams, their scores, finished hypotheses."""

    def __init__(self, n: int, beam: int, eos_id: int, length_penalty: float, device: torch.device):
        self.beam, self.eos_id, self.alpha = beam, eos_id, length_penalty
        self.images = list(range(n))  # the images still searching, in row-block order
        self.finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        self.scores = torch.zeros(n, beam, device=device)  # (images, beam): sum of log p of each live beam
        # the beams of an image start identical: only the first may expand, or
        # the first step would fill the beam with copies of one hypothesis
        self.scores[:, 1:] = NEG_INF
        self.seqs = torch.empty(n * beam, 0, dtype=torch.long, device=device)  # (rows, t) generated tokens

    def advance(self, logp: torch.Tensor) -> torch.Tensor | None:
        """Extend the beams by one token from (rows, V) log-probs; return the
        rows the new beams continue (for state.select), or None when all done."""
        k, vocab = self.beam, logp.shape[-1]
        total = (self.scores.view(-1, 1) + logp).view(len(self.images), k * vocab)  # (images, beam * V)
        # 2 * beam candidates: at most beam of them end in eos, so beam others remain
        top_scores, top_ids = total.topk(min(2 * k, k * vocab), dim=-1)  # (images, 2 * beam)
        rows, tokens, scores, still = [], [], [], []
        prefixes = self.seqs.tolist()  # one copy to the host per step, not one per finished hypothesis
        candidates = zip(top_scores.tolist(), top_ids.tolist())
        for i, (image, (cand_scores, cand_ids)) in enumerate(zip(self.images, candidates)):
            chosen = self._choose(image, i, (cand_scores, cand_ids), prefixes, vocab)
            if chosen:
                still.append(image)
                scores += [score for score, _, _ in chosen]
                rows += [row for _, row, _ in chosen]
                tokens += [token for _, _, token in chosen]
        if not still:
            self.images = []
            return None
        index = torch.tensor(rows, device=logp.device)
        new = torch.tensor(tokens, device=logp.device)[:, None]
        self.seqs = torch.cat([self.seqs[index], new], dim=1)  # (rows, t + 1)
        self.scores = torch.tensor(scores, device=logp.device).view(len(still), k)
        self.images = still
        return index

    def _choose(self, image: int, i: int, candidates, prefixes, vocab: int) -> list[tuple[float, int, int]]:
        """The next beams of the i-th searching image as (score, row, token); [] when it is done.

        candidates: its 2 * beam best (scores, ids into beam * V), best first;
        prefixes: the tokens of every row so far."""
        k = self.beam
        beams = []
        for rank, (score, cand) in enumerate(zip(*candidates)):
            if score == NEG_INF or len(beams) == k:  # sorted: nothing possible below
                break
            row, token = i * k + cand // vocab, cand % vocab
            if token == self.eos_id:
                if rank < k:  # eos counts only among the beam best, as in fairseq
                    self._finish(image, score, prefixes[row], len(prefixes[row]) + 1)
            else:
                beams.append((score, row, token))
        if len(self.finished[image]) >= k or not beams:
            return []
        # too few possible tokens (a tiny vocabulary, n-gram blocking): pad with
        # impossible copies so every image keeps exactly beam rows
        beams += [(NEG_INF, beams[0][1], beams[0][2])] * (k - len(beams))
        return beams

    def _finish(self, image: int, score: float, tokens: list[int], length: int) -> None:
        self.finished[image].append((score / length**self.alpha, tokens))

    def results(self) -> list[list[int]]:
        """The best hypothesis of every image; live beams (max_len reached) count as finished."""
        live, scores = self.seqs.tolist(), self.scores.tolist()
        for i, image in enumerate(self.images):
            for j, score in enumerate(scores[i]):
                if score != NEG_INF:
                    tokens = live[i * self.beam + j]
                    self._finish(image, score, tokens, len(tokens))
        return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in self.finished]


def _forbid_eos(logits: torch.Tensor, eos_id: int) -> torch.Tensor:
    # out of place: logits may be a view of what the decoder returned
    return logits.index_fill(1, torch.tensor([eos_id], device=logits.device), NEG_INF)


def _forbid(logp: torch.Tensor, seqs: torch.Tensor, too_short: bool, eos_id: int, ngram: int) -> torch.Tensor:
    """Set to -inf: eos while a hypothesis is shorter than min_len, and every
    token that would repeat an n-gram of the hypothesis (ngram > 0)."""
    if too_short:
        logp = _forbid_eos(logp, eos_id)
    t = seqs.shape[1]
    if ngram <= 0 or t < ngram:
        return logp
    seqs = seqs.to(logp.device)
    grams = seqs.unfold(1, ngram, 1)  # (rows, t - n + 1, n): every n-gram so far
    # an n-gram whose first n-1 tokens equal the last n-1 tokens would be repeated
    # by its last token
    repeats = (grams[:, :, :-1] == seqs[:, None, t - ngram + 1 :]).all(-1)  # (rows, t - n + 1)
    vocab = logp.shape[-1]
    # scatter into an extra column for the n-grams that do not match, then drop it
    targets = torch.where(repeats, grams[:, :, -1], vocab)  # (rows, t - n + 1)
    banned = torch.zeros(logp.shape[0], vocab + 1, dtype=torch.bool, device=logp.device)
    banned.scatter_(1, targets, True)
    return logp.masked_fill(banned[:, :vocab], NEG_INF)
