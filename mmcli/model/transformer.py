"""Transformer pieces: attention (self or cross, with a KV cache), MLP, Block.

Pure PyTorch, no mmcli imports. Read it top to bottom:

1. ``attend``: the one function that computes attention, through
   ``F.scaled_dot_product_attention`` ("sdpa") or a plain matmul-softmax-matmul
   ("plain"); "auto" (the default) takes "plain" for bf16 training on a CPU, where
   SDPA's flash backward is slow (benchmarks/profile_caption_step.py: a Flickr8k
   captioning step 1.09 -> 0.90 s), and "sdpa" everywhere else.
2. The KV cache: ``LayerCache`` (one attention layer), ``BlockCache`` (the self-
   and cross-attention of one block), ``KVCache`` (a whole stack of blocks). A
   cross-attention cache holds the context's keys and values, or the context itself
   for the folded form (``Attention.folded_layers``).
3. ``Attention``, ``MLP`` and the pre-norm residual ``Block``. A cross-attention without a cache
   attends to its context without projecting the context's keys and values where that takes far
   fewer FLOPs (``Attention.fold_pays``: training at 197 image tokens and short captions).

Shapes: B batch, T sequence length, D model width, H heads, Dh = D // H head
width, Tq / Tk the number of queries / keys.

Masks are boolean, True where a query may attend to a key. Right-padded causal
text needs no padding mask: the pads come after every real token, so no real
token ever sees one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# attention, the function

ATTENTION_IMPLS = ("auto", "sdpa", "plain")
_default_impl = "auto"


def set_attention_impl(impl: str) -> None:
    """Choose how ``attend`` computes attention when no ``impl`` is given."""
    global _default_impl
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(ATTENTION_IMPLS)}")
    _default_impl = impl


def get_attention_impl() -> str:
    return _default_impl


def resolve_attention_impl(device_type: str, dtype: torch.dtype, impl: str | None = None) -> str:
    """"sdpa" or "plain" for attention in ``dtype`` on ``device_type`` (``impl`` None: the module
    default). "auto" takes "plain" for bf16 on a CPU, where SDPA's flash kernels are slower than the two
    matrix products and a softmax (its backward most of all; benchmarks/peer_hf.py and
    profile_caption_step.py), and "sdpa" everywhere else. The image tower applies the same rule to a
    timm ViT's attention."""
    impl = impl or _default_impl
    if impl == "auto":
        return "plain" if device_type == "cpu" and dtype == torch.bfloat16 else "sdpa"
    return impl


# a cross-attention without a cache is folded (Attention.fold_pays) only where that takes at most
# 1 / FOLD_MARGIN of the projected path's FLOPs (benchmarks/bench_fold.py: the break-even near 2-2.5x fewer)
FOLD_MARGIN = 3.0


def causal_mask(tq: int, tk: int, device: torch.device | None = None) -> torch.Tensor:
    """(Tq, Tk) bool: query i sits at position Tk - Tq + i and sees keys up to it.

    Bottom-right aligned, so with Tq < Tk (new tokens decoded against a cache)
    the queries are the last Tq positions of the sequence.
    """
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks, on a CPU, come from 15 random bits an element, four elements to one
    64-bit draw of the generator: ``bernoulli_`` draws a whole number for every element, and on a CPU
    other than Intel's (where it has no MKL path) took 8 ns an element here; paired steps of the
    Flickr8k recipe ran 3-4% faster with these masks (benchmarks/profile_caption_step.py --ablate,
    BENCHMARKS.md). An element is kept with probability 1 - round(p 2^15) / 2^15 (p = 0.2: 0.80000) and
    scaled by its inverse, so the expectation is unchanged; elsewhere (a GPU) torch's own dropout.
    Seeded by torch's generator as torch's is, but a different stream: a run's masks differ from
    ``nn.Dropout``'s."""

    fast_masks = True  # False: nn.Dropout's masks (the ablation of benchmarks/ablate.py fast_masks=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or not self.fast_masks or self.inplace:
            return super().forward(x)
        if self.p == 1:
            return x * 0
        return x * dropout_scale(x, self.p)


def dropout_scale(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``x`` in its dtype: 0 for a dropped element, else the inverse of the keep
    probability (see :class:`Dropout`)."""
    cut = round(p * 32768)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
    bits = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF  # four 15-bit numbers from each draw
    # (p within 2^-16 of 1 keeps nothing: every element dropped, as at p = 1, and no division by zero)
    return (bits >= cut).to(x.dtype).mul_(32768 / (32768 - cut) if cut < 32768 else 0.0)


@dataclass
class Rows:
    """The real positions of a right-padded (B, T) batch, for layers that run on them alone: the
    row-wise work (norms, projections, MLP) sees only the ``index`` (n,) flat positions of real
    tokens, packed as (n, D), and attention puts them back in their (B, T) places around it. Made by
    :meth:`of_mask`."""

    index: torch.Tensor
    b: int
    t: int
    # by_context's layouts, made once for all the layers of one call (the context_index kept alive with its
    # layout, so that its id is not reused)
    _by_context: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of_mask(cls, valid: torch.Tensor, multiple: int = 1) -> "Rows":
        """The real positions, True in ``valid`` (B, T); with ``multiple``, as many pads besides as make
        their count a multiple of it (where the batch has them): the products then see a few row counts
        over and over instead of a new one nearly every batch, and oneDNN makes a kernel for each new
        shape (the pads' outputs are computed and read by nobody, as unpacked)."""
        flat = valid.flatten()
        index = flat.nonzero().squeeze(1)
        extra = min(-index.numel() % multiple, flat.numel() - index.numel())
        if extra:
            index = torch.cat([index, (~flat).nonzero().squeeze(1)[:extra]]).sort().values
        return cls(index, valid.shape[0], valid.shape[1])

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (n, C): the positions of ``index``."""
        return x.reshape(self.b * self.t, -1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) -> (B, T, C), zeros at the positions not in ``index``."""
        return x.new_zeros(self.b * self.t, x.shape[-1]).index_copy(0, self.index, x).view(self.b, self.t, -1)

    def by_context(self, context_index: torch.Tensor, contexts: int, multiple: int = 16) -> "Rows":
        """The same positions laid out by context row instead of by text row: row c of the (``contexts``,
        L) layout holds, in their packed order, the positions of every text row i with
        ``context_index[i] == c`` (an image's five captions one after the other), L the most any context
        row has, rounded up to a multiple of ``multiple`` (fewer new shapes of the attention products).
        Cross-attention of packed rows attends in this layout: each image's keys and values serve all its
        texts' queries at once, instead of being gathered to every text row (B copies of (N, D) each, and
        as many scattered back in the backward). Made once per ``context_index`` and kept."""
        key = (id(context_index), contexts, multiple)
        if key not in self._by_context:
            c = context_index[self.index // self.t]  # (n,) each packed position's context row
            order = torch.argsort(c, stable=True)  # grouped by context, in packed order within each
            counts = torch.bincount(c, minlength=contexts)
            starts = counts.cumsum(0) - counts
            slot = torch.empty_like(c)
            slot[order] = torch.arange(c.numel(), device=c.device) - starts[c[order]]
            t = -(-max(int(counts.max()), 1) // multiple) * multiple
            self._by_context[key] = (context_index, Rows(c * t + slot, contexts, t))
        return self._by_context[key][1]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    impl: str | None = None,
) -> torch.Tensor:
    """Attention of q (B, H, Tq, Dh) over k, v (B, H, Tk, Dh) -> (B, H, Tq, Dh).

    ``mask``: bool, True = may attend, broadcastable to (B, H, Tq, Tk), or None.
    ``is_causal``: query i is at position Tk - Tq + i and sees keys up to that
    position (bottom-right aligned); combined with ``mask`` when both are given.
    ``impl``: "sdpa", "plain" or "auto" ("plain" for bf16 on a CPU, else "sdpa";
    :func:`resolve_attention_impl`); None uses the module default (``set_attention_impl``).
    A query row that may see no key at all gives zeros with "sdpa" and the
    mean of v with "plain".
    """
    impl = resolve_attention_impl(q.device.type, q.dtype, impl)
    mask, is_causal = _with_causal(q, k, mask, is_causal, keep_fast_path=impl == "sdpa")
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    if impl != "plain":
        raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(ATTENTION_IMPLS)}")
    return attention_probs(q, k, mask).to(v.dtype) @ v  # (B, H, Tq, Dh)


def _with_causal(q, k, mask, is_causal: bool, keep_fast_path: bool):
    """(mask, is_causal) with the causal rule folded into the mask where it must be."""
    tq, tk = q.shape[-2], k.shape[-2]
    if is_causal and tq == 1:
        # a single query is the newest position: it sees every key, no mask needed
        is_causal = False
    if is_causal and (mask is not None or tq != tk or not keep_fast_path):
        # SDPA's own is_causal is top-left aligned and cannot be combined with a
        # mask, so build the small (Tq, Tk) mask here; SDPA keeps its fast path
        # (no mask tensor at all) for the common square, unmasked case
        causal = causal_mask(tq, tk, q.device)
        mask = causal if mask is None else mask & causal
        is_causal = False
    return mask, is_causal


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention weights (B, H, Tq, Tk), fp32, of q (B, H, Tq, Dh) over k (B, H, Tk, Dh)."""
    # scale q rather than the scores: Tq*Dh multiplications instead of Tq*Tk
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    if mask is not None:
        # the most negative finite number, not -inf: a fully masked row then
        # gives a uniform distribution instead of NaN
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # the softmax computed in fp32 (bf16 has too few mantissa bits for a stable exp-normalise), read
    # from the scores as they are: no fp32 copy of them first
    return scores.softmax(dim=-1, dtype=torch.float32)


# ---------------------------------------------------------------------------
# the KV cache


@dataclass
class LayerCache:
    """Keys and values of one attention layer, (B, H, T, Dh) each, or None.

    Self-attention appends the new positions at every step; cross-attention
    stores the context's keys and values once and reuses them. Meant for
    inference (under ``torch.no_grad``).

    ``group``: query rows per cached row. Beam search runs ``beam`` rows per image, which all attend
    to the same image: a cross-attention cache keeps each image's keys and values once (group =
    beam; rows i*beam .. i*beam + beam-1 read cached row i) instead of a copy per beam that every
    reordering of the beams would copy again.
    """

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    group: int = 1
    # a folded cross-attention (``Attention.cache_context(..., fold=...)``) keeps the context itself,
    # (B / group, N, D), one tensor shared by the layers, instead of keys and values
    context: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H, t, Dh) keys and values; return all of them cached so far."""
        # torch.cat copies the cache each step, but a caption is tens of tokens
        # and beam search copies it anyway when select() reorders the rows
        # (contiguous from the start: the keys are a strided view of the fused projection, which every
        # attention product would otherwise copy again at every step)
        self.k = k.contiguous() if self.k is None else torch.cat([self.k, k], dim=2)  # (B, H, T + t, Dh)
        self.v = v.contiguous() if self.v is None else torch.cat([self.v, v], dim=2)  # (B, H, T + t, Dh)
        return self.k, self.v

    def select(self, index: torch.Tensor, memo: dict | None = None) -> None:
        """Keep, reorder or repeat batch rows: row i becomes old row index[i]. A grouped cache moves
        whole groups only (beam search reorders beams within an image and drops finished images):
        it keeps the cached row of each group of ``index``, and copies nothing when that is every
        row in order. ``memo``: a context shared by several layers is selected once per call of
        :meth:`KVCache.select` (and stays shared)."""
        cached = self.k if self.context is None else self.context
        if cached is None:
            return
        if self.group > 1:
            index = index[:: self.group] // self.group  # (groups,): the old group of each new one
            if index.numel() == cached.shape[0] and bool((index == torch.arange(len(index), device=index.device)).all()):
                return
        if self.context is not None:
            memo = {} if memo is None else memo
            if id(self.context) not in memo:
                memo[id(self.context)] = self.context.index_select(0, index)
            self.context = memo[id(self.context)]
            return
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


@dataclass
class BlockCache:
    """The caches of one Block: its self-attention and its cross-attention."""

    self_attn: LayerCache = field(default_factory=LayerCache)
    cross_attn: LayerCache = field(default_factory=LayerCache)

    def select(self, index: torch.Tensor, memo: dict | None = None) -> None:
        self.self_attn.select(index)
        self.cross_attn.select(index, memo)

    def expand(self, k: int) -> None:
        """Every row becomes k rows (beam search's start): the self-attention cache repeats its rows;
        the cross-attention cache keeps its rows and serves each to k query rows (``group``)."""
        if self.self_attn.k is not None:
            self.self_attn.select(torch.arange(self.self_attn.k.shape[0], device=self.self_attn.k.device)
                                  .repeat_interleave(k))
        self.cross_attn.group *= k


class KVCache:
    """One BlockCache per layer: ``for block, c in zip(blocks, cache.layers)``."""

    def __init__(self, layers: list[BlockCache]):
        self.layers = layers

    @classmethod
    def for_layers(cls, n: int) -> "KVCache":
        return cls([BlockCache() for _ in range(n)])

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> BlockCache:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    @property
    def length(self) -> int:
        """Positions cached so far in the first layer's self-attention."""
        return self.layers[0].self_attn.length if self.layers else 0

    def select(self, index: torch.Tensor) -> None:
        """index_select every cached tensor along the batch dim (beam search reorders rows, or
        drops finished rows with it; greedy drops finished rows)."""
        memo = {}  # (a folded cross-attention's context, shared by the layers, is selected once)
        for layer in self.layers:
            layer.select(index, memo)

    def expand(self, k: int) -> None:
        """Every row becomes k consecutive rows (beam search: k beams per image); see BlockCache.expand."""
        for layer in self.layers:
            layer.expand(k)


# ---------------------------------------------------------------------------
# the modules


class Attention(nn.Module):
    """Multi-head self-attention, or cross-attention to a context (cross=True).

    ``record``: None, or a list to which every forward appends its attention weights
    (B, H, Tq, Tk), detached (``mmcli.explain`` draws them; training never sets it).
    """

    record: list | None = None

    def __init__(self, dim: int, heads: int, cross: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)  # applied to the context
        else:
            self.qkv = nn.Linear(dim, 3 * dim)  # one matmul instead of three
        self.proj = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def _split(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n * D) -> n tensors of (B, H, T, Dh)."""
        b, t, _ = x.shape
        x = x.view(b, t, n, self.heads, -1)  # (B, T, n, H, Dh)
        return x.permute(2, 0, 3, 1, 4).unbind(0)  # n x (B, H, T, Dh)

    def context_kv(self, context: torch.Tensor, contiguous: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of a (B, Tk, D) context, (B, H, Tk, Dh) each: strided views
        of one projection, or ``contiguous`` copies (for a cache that every decoding step reads: made
        once here instead of by each step's attention products)."""
        k, v = self._split(self.kv(context), 2)
        return (k.contiguous(), v.contiguous()) if contiguous else (k, v)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: LayerCache | None = None,
        context_index: torch.Tensor | None = None,
        rows: Rows | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D); with ``rows``, x (n, D) -> (n, D): the real positions of a
        padded batch (:class:`Rows`), projected alone and attending in their (B, T) places.

        Self-attention with a cache: x holds only the new positions; their keys
        and values are appended and the queries attend to every cached position.
        Cross-attention with a cache: the context's keys and values are computed
        on the first call and reused afterwards (context may then be None).
        ``context_index`` (B,) int64: row i of x attends to context row
        ``context_index[i]`` (context then has its own batch size, e.g. each image
        once for several captions or questions): the keys and values are computed
        once per context row and gathered, not once per row of x.
        ``context_kv``: the context's keys and values already projected (:meth:`context_kv`, one
        call's for several: a batch's captions in length buckets), in place of ``context``.
        """
        group = 1
        if rows is not None and cache is not None:
            raise ValueError("packed rows are for whole sequences, not cached decoding")
        if self.cross and cache is not None and cache.context is not None:
            if cache.group == 1:
                return self._folded_forward(x, cache)
            # several query rows per image (beam search): the folded layers, 4x the products of the
            # query and output projections for every row, cost more than the fold saves (0.9x measured,
            # benchmarks/profile_decode.py --beam 3 --compare-fold): the keys and values after all
            cache.k, cache.v = self.context_kv(cache.context, contiguous=True)
            cache.context = None
        y = self.q(x) if self.cross else self.qkv(x)  # (B, T, D or 3D), or (n, ...) for packed rows
        if (rows is not None and self.cross and context_index is not None and cache is None and self.record is None
                and self.attend_by_context and (context is not None or context_kv is not None)):
            # packed rows over shared contexts: the queries laid out by context row (Rows.by_context), so each
            # context's keys and values (or the folded form's context) serve its rows as they are, ungathered
            rows = rows.by_context(context_index, (context if context_kv is None else context_kv[0]).shape[0])
            context_index = None
        if rows is not None:
            y = rows.pad(y)
        b, t, _ = y.shape
        d = self.proj.in_features
        out = None
        if self.cross:
            (q,) = self._split(y, 1)
            if (cache is None and context_kv is None and context is not None and mask is None and not is_causal
                    and self.record is None
                    and self.fold_pays(b, t, context.shape[0], context.shape[1], context.device.type)):
                out = self._folded_attend(q, context, context_index)  # (B, H, T, Dh)
            elif cache is not None and cache.k is not None:
                k, v, group = cache.k, cache.v, cache.group  # the image, encoded once per generation
            else:
                if context is None and context_kv is None:
                    raise ValueError("cross-attention needs a context (or a filled cache)")
                k, v = context_kv if context_kv is not None else self.context_kv(context, contiguous=cache is not None)
                if context_index is not None:
                    k, v = k.index_select(0, context_index), v.index_select(0, context_index)
                if cache is not None:
                    cache.k, cache.v = k, v
        else:
            q, k, v = self._split(y, 3)
            if cache is not None:
                k, v = cache.append(k, v)
        if out is None:
            if group > 1 and self.record is not None:  # (recording wants one row per query row)
                k, v, group = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0), 1
            if group > 1:
                # the query rows of one image side by side: (B / g, H, g * t, Dh) against its one copy of the keys
                h, dh = q.shape[1], q.shape[3]
                q = q.reshape(b // group, group, h, t, dh).transpose(1, 2).reshape(b // group, h, group * t, dh)
            if self.record is not None:
                self.record.append(attention_probs(q, k, _with_causal(q, k, mask, is_causal, False)[0]).detach())
            out = attend(q, k, v, mask=mask, is_causal=is_causal)  # (B, H, T, Dh), or (B / g, H, g * T, Dh)
            if group > 1:
                out = out.reshape(b // group, h, group, t, dh).transpose(1, 2)  # (B / g, g, H, T, Dh): rows again
        out = out.transpose(-3, -2).reshape(b, t, d)  # (B, T, D): heads side by side again
        if rows is not None:
            out = rows.pack(out)
        return self.dropout(self.proj(out))

    # False: packed rows over shared contexts attend in their padded layout with the contexts gathered to every
    # row (the ablation of benchmarks/profile_caption_step.py --frozen and benchmarks/ablate.py attend_by_context=0)
    attend_by_context = True
    # False: a cross-attention without a cache always projects the context's keys and values (the ablation
    # of benchmarks/peer_hf.py --ablate-train-fold and benchmarks/ablate.py fold_context=0)
    fold_context = True

    def fold_pays(self, rows: int, t: int, contexts: int, n: int, device_type: str = "cpu") -> bool:
        """Whether :meth:`_folded_attend` is the faster path for ``rows`` query rows of ``t`` tokens over
        ``contexts`` context rows of ``n`` tokens: when it takes at most 1 / ``FOLD_MARGIN`` of the FLOPs of
        projecting the context's keys and values. Its products are smaller and it gathers the context per
        query row, so fewer FLOPs alone do not pay: one layer's forward and backward on this CPU
        (``python benchmarks/bench_fold.py``, bf16; BENCHMARKS.md) ran 1.76x faster folded with 5.0x fewer
        FLOPs, 1.26x with 3.4x, 1.08x with 2.6x, 0.91x with 1.8x. Folded at benchmarks/peer_hf.py's shape
        (32 captions of 20 tokens over 197 image tokens each, width 256, 4 heads: 5.0x fewer); not at the
        Flickr8k recipe's (five captions of about 16 tokens for each image of 64 tokens: 0.93x). On a
        CPU only: on a GPU the projected path's attention is SDPA's fused kernel, and the fold is not
        measured there yet."""
        if not self.fold_context or device_type != "cpu":
            return False
        projected, folded = self.fold_flops(rows, t, contexts, n)
        return folded * FOLD_MARGIN <= projected

    def fold_flops(self, rows: int, t: int, contexts: int, n: int) -> tuple[int, int]:
        """The multiply-adds that :meth:`fold_pays` weighs, (projected, folded), for ``rows`` query rows of
        ``t`` tokens over ``contexts`` context rows of ``n`` tokens: the context's keys and values and the
        two attention products, against the two products over the context, D wide a head, and the value
        weights applied to the averages."""
        d, h = self.proj.in_features, self.heads
        projected = contexts * n * 2 * d * d + rows * t * n * d
        folded = rows * h * t * n * d + rows * t * d * d
        return projected, folded

    def _folded_attend(self, q: torch.Tensor, context: torch.Tensor,
                       context_index: torch.Tensor | None = None) -> torch.Tensor:
        """What ``attend`` gives for queries q (B, H, T, Dh) over the context's keys and values, without
        projecting them (as :meth:`pool`, for T queries): each head's query goes into the context's space,
        s Wk_h^T q_h (the key bias adds q_h . bk_h to every score of a row, which the softmax ignores), the
        context (Bc, N, D) is averaged per query and head, and the value weights apply to the averages
        (sum_j p_j (Wv_h x_j + bv_h) = Wv_h sum_j p_j x_j + bv_h). Two products of H T rows over the
        context per image instead of its (Bc N, D) x (D, 2 D) projection: fewer FLOPs when H T is well
        under D (:meth:`fold_pays` decides)."""
        b, h, t, dh = q.shape
        d = h * dh
        if context_index is not None:
            context = context.index_select(0, context_index)
        w = self.kv.weight
        u = torch.einsum("bhte,hed->bhtd", q * dh**-0.5, w[:d].view(h, dh, d))  # (B, H, T, D)
        ctx = context.to(u.dtype)
        s = torch.bmm(u.reshape(b, h * t, d), ctx.transpose(1, 2))  # (B, H T, N): the scores
        p = s.softmax(-1, dtype=torch.promote_types(s.dtype, torch.float32))  # (in fp32 at least)
        avg = torch.bmm(p.to(ctx.dtype), ctx).view(b, h, t, d)  # the context averaged per query and head
        out = torch.einsum("bhtd,hed->bhte", avg, w[d:].view(h, dh, d))  # (B, H, T, Dh)
        if self.kv.bias is not None:
            out = out + self.kv.bias[d:].view(h, 1, dh).to(out.dtype)
        return out

    def cache_context(self, context: torch.Tensor, cache: LayerCache, fold=None) -> None:
        """Fill a cross-attention cache from a (B, Tk, D) context ahead of decoding: its keys and values,
        contiguous, or with ``fold`` the context itself, shared (:meth:`folded_layers`; ``fold`` wraps
        each folded ``nn.Linear``: mmcli's oneDNN ``PackedLinear``, or ``lambda m: m``)."""
        if fold is None:
            cache.k, cache.v = self.context_kv(context, contiguous=True)
        else:
            self.folded_layers(fold)
            cache.context = context

    def folded_layers(self, wrap) -> tuple[nn.Module, nn.Module]:
        """The layer's projections with the key and value weights folded in, as :meth:`pool` folds them,
        for any query: ``inward`` (D -> H D) takes a query row to each head's vector in the context's
        space, s Wk_h^T (Wq_h x + bq_h) (s = Dh^-0.5; the score of token j is its dot product with
        x_j, short of q_h . bk_h, the same for every j); ``outward`` (H D -> D) takes the context
        averaged per head by the attention weights to the output, sum_h Wo_h Wv_h a_h + Wo bv + bo.

        Decoding then reads one (B, N, D) context shared by every layer instead of each layer's keys and
        values (2 N D a row and layer), and nothing is projected at the start. Made again only when the
        weights change; kept with the layer, outside its parameters and state dict."""
        params = (self.q.weight, self.q.bias, self.kv.weight, self.kv.bias, self.proj.weight, self.proj.bias)
        key = (wrap, *((None if p is None else (p.data_ptr(), p.dtype, p.device, p._version)) for p in params))
        if getattr(self, "_folded", None) is None or self._folded[0] != key:
            w = self.q.weight
            d, h = w.shape[1], self.heads
            dh = d // h
            with torch.inference_mode(False), torch.no_grad():  # (plain tensors: PackedLinear checks versions)
                f = [None if p is None else p.detach().double() for p in params]
                wq, bq, wkv, bkv, wo, bo = f
                wk, wv = wkv[:d].view(h, dh, d), wkv[d:].view(h, dh, d)
                w_in = torch.einsum("hed,hef->hdf", wk, wq.view(h, dh, d)).reshape(h * d, d) * dh**-0.5
                b_in = None if bq is None else torch.einsum("hed,he->hd", wk, bq.view(h, dh)).reshape(h * d) * dh**-0.5
                w_out = torch.einsum("ohe,hed->ohd", wo.view(d, h, dh), wv).reshape(d, h * d)
                b_out = (wo @ bkv[d:] if bkv is not None else torch.zeros_like(wo[:, 0])) + (0 if bo is None else bo)
                layers = []
                for weight, bias in ((w_in, b_in), (w_out, b_out)):
                    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
                    lin.weight = nn.Parameter(weight.to(w.dtype), requires_grad=False)
                    if bias is not None:
                        lin.bias = nn.Parameter(bias.to(w.dtype), requires_grad=False)
                    layers.append(wrap(lin))
            self._folded = (key, *layers)
        return self._folded[1], self._folded[2]

    def _folded_forward(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Cross-attention of x (B, T, D) over the cache's context (B, N, D) through
        :meth:`folded_layers` (made by :meth:`cache_context`)."""
        b, t, d = x.shape
        h = self.heads
        ctx = cache.context
        _, inward, outward = self._folded
        u = inward(x).view(b, t * h, d)  # each query row's heads in the context's space
        p = torch.bmm(ctx, u.transpose(1, 2)).softmax(dim=1, dtype=torch.float32).to(ctx.dtype)  # (B, N, T H)
        if self.record is not None:
            self.record.append(p.transpose(1, 2).reshape(b, t, h, -1).transpose(1, 2).detach())  # (B, H, T, N)
        avg = torch.bmm(p.transpose(1, 2), ctx)  # (B, T H, D): the context averaged per query and head
        return self.dropout(outward(avg.reshape(b, t, h * d)))

    def pool(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One query (1 or B, 1, D) over each row of a (B, N, D) context -> (B, D): ``self(query,
        context=context)[:, 0]`` without projecting the N keys and values.

        Each head's score of token j is q_h . (Wk_h x_j + bk_h) = (Wk_h^T q_h) . x_j plus a term that is
        the same for every j, which the softmax ignores; and sum_j p_j (Wv_h x_j + bv_h) = Wv_h (sum_j
        p_j x_j) + bv_h. So the query goes into the context's space once, the context is averaged once
        per head, and the value weights apply to that average: a D-wide product per image instead of
        the (B N, D) x (D, 2D) projection and its gradient (an attention pool over image tokens:
        ``python benchmarks/bench_vqa_step.py --compare pool``): :meth:`_folded_attend` for one query."""
        if not self.cross:
            raise ValueError("pool is an attention over a context: it needs a cross-attention layer")
        if self.record is not None:  # (recording wants the plain path's weights)
            return self(query.expand(context.shape[0], -1, -1), context=context)[:, 0]
        b, _, d = context.shape
        q = self.q(query).reshape(-1, self.heads, 1, d // self.heads)  # (1 or B, H, 1, Dh)
        out = self._folded_attend(q.expand(b, -1, -1, -1), context)  # (B, H, 1, Dh): the fold for one query
        return self.dropout(self.proj(out.reshape(b, d)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or 4 * dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm residual block: self-attention, cross-attention (if cross), MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cross: bool = False, dropout: float = 0.0):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout=dropout)
        if cross:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads, cross=True, dropout=dropout)
        else:
            self.norm_cross = self.cross_attn = None
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def cache_context(self, context: torch.Tensor, cache: BlockCache, fold=None) -> None:
        """Fill the cross-attention cache from a (B, Tk, D) context ahead of decoding, so that the
        generation state needs only the KV cache (``fold``: :meth:`Attention.cache_context`)."""
        if self.cross_attn is not None:
            self.cross_attn.cache_context(context, cache.cross_attn, fold)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: BlockCache | None = None,
        context_index: torch.Tensor | None = None,
        rows: Rows | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), context (B, Tk, D) for cross-attention -> (B, T, D); with ``rows`` (:class:`Rows`)
        x (n, D) -> (n, D), the real positions alone (the padded ones cost nothing).

        ``mask`` and ``is_causal`` apply to the self-attention; cross-attention
        sees the whole context (row ``context_index[i]`` of it, when given; see
        :meth:`Attention.forward`), or takes its keys and values as ``context_kv``.
        """
        self_cache = cache.self_attn if cache is not None else None
        x = x + self.self_attn(self.norm_self(x), mask=mask, is_causal=is_causal, cache=self_cache, rows=rows)
        if self.cross_attn is not None:
            cross_cache = cache.cross_attn if cache is not None else None
            x = x + self.cross_attn(self.norm_cross(x), context=context, cache=cross_cache,
                                    context_index=context_index, rows=rows, context_kv=context_kv)
        return x + self.mlp(self.norm_mlp(x))
