"""The transformer core: attention impls agree, causality, cached decoding equals a
full forward pass, every parameter learns. Tiny fp32 models on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcli.model.transformer import (
    MLP,
    Attention,
    Block,
    KVCache,
    LayerCache,
    Rows,
    attend,
    causal_mask,
    get_attention_impl,
    set_attention_impl,
)

VOCAB, BOS, EOS = 13, 1, 2
FEAT = 6  # width of the random "image" features


# ---------------------------------------------------------------------------
# two tiny decoders built from Blocks; they also implement generate.Decoder


class _TinyLM(nn.Module):
    def __init__(self, dim=32, heads=4, layers=2, n_image=5, max_len=24, cross=True):
        super().__init__()
        self.n_image = n_image
        self.image_in = nn.Linear(FEAT, dim)
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, cross=cross) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)
        with torch.no_grad():
            # generation tests want peaked distributions (clear winners) that
            # depend on the image: a sharper head, a louder image, quieter text
            self.head.weight.mul_(8)
            self.image_in.weight.mul_(3)
            self.tok.weight.mul_(0.3)
            self.pos.weight.mul_(0.3)

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + tokens.shape[1])
        return self.tok(tokens) + self.pos(positions)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


class CrossLM(_TinyLM):
    """Causal text with cross-attention to the image in every block."""

    def __init__(self, **kw):
        super().__init__(cross=True, **kw)

    def forward(self, images, tokens):
        context = self.image_in(images)
        x = self.embed(tokens, 0)
        for block in self.blocks:
            x = block(x, context=context, is_causal=True)
        return self.logits(x)

    def start(self, images) -> KVCache:
        cache = KVCache.for_layers(len(self.blocks))
        context = self.image_in(images)
        for block, c in zip(self.blocks, cache.layers):
            block.cache_context(context, c)
        return cache

    def step(self, tokens, cache: KVCache):
        x = self.embed(tokens, cache.length)
        for block, c in zip(self.blocks, cache.layers):
            x = block(x, is_causal=True, cache=c)
        return self.logits(x)


def concat_mask(n_image: int, t: int) -> torch.Tensor:
    """(P + T, P + T): the prefix sees the prefix; text sees the prefix and earlier text."""
    mask = torch.zeros(n_image + t, n_image + t, dtype=torch.bool)
    mask[:, :n_image] = True
    mask[n_image:, n_image:] = torch.ones(t, t, dtype=torch.bool).tril()
    return mask


class ConcatLM(_TinyLM):
    """Image positions prepended to the text in one sequence."""

    def __init__(self, **kw):
        super().__init__(cross=False, **kw)

    def forward(self, images, tokens):
        x = torch.cat([self.image_in(images), self.embed(tokens, 0)], dim=1)
        mask = concat_mask(self.n_image, tokens.shape[1])
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.logits(x[:, self.n_image :])

    def start(self, images) -> KVCache:
        cache = KVCache.for_layers(len(self.blocks))
        x = self.image_in(images)
        for block, c in zip(self.blocks, cache.layers):
            x = block(x, cache=c)  # the prefix sees the whole prefix: no mask
        return cache

    def step(self, tokens, cache: KVCache):
        x = self.embed(tokens, cache.length - self.n_image)
        for block, c in zip(self.blocks, cache.layers):
            x = block(x, is_causal=True, cache=c)  # bottom-right aligned: sees the prefix and earlier text
        return self.logits(x)


STYLES = {"cross": CrossLM, "concat": ConcatLM}


def make(style: str, seed: int = 0, **kw) -> _TinyLM:
    torch.manual_seed(seed)
    return STYLES[style](**kw).eval()


def random_inputs(batch=3, t=9, n_image=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, n_image, FEAT, generator=g)
    tokens = torch.randint(0, VOCAB, (batch, t), generator=g)
    return images, tokens


@pytest.fixture(params=["sdpa", "plain"])
def impl(request):
    before = get_attention_impl()
    set_attention_impl(request.param)
    yield request.param
    set_attention_impl(before)


# ---------------------------------------------------------------------------
# attend


def _qkv(b=2, h=3, tq=5, tk=5, dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, dh, generator=g)
    return q, torch.randn(b, h, tk, dh, generator=g), torch.randn(b, h, tk, dh, generator=g)


def test_causal_mask_is_bottom_right_aligned():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())


@pytest.mark.parametrize("tq,tk", [(5, 5), (3, 7), (1, 6)])
def test_attend_sdpa_equals_plain(tq, tk):
    q, k, v = _qkv(tq=tq, tk=tk)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 1, tq, tk, generator=g) > 0.4
    mask[..., 0] = True  # every query sees at least one key
    for kw in [{}, {"mask": mask}, {"is_causal": True}, {"mask": mask, "is_causal": True}]:
        a = attend(q, k, v, impl="sdpa", **kw)
        b = attend(q, k, v, impl="plain", **kw)
        assert a.shape == (2, 3, tq, 8)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl_name", ["sdpa", "plain"])
def test_attend_causal_with_fewer_queries_means_the_last_positions(impl_name):
    q, k, v = _qkv(tq=7, tk=7)
    full = attend(q, k, v, is_causal=True, impl=impl_name)
    for tq in (1, 3):
        last = attend(q[:, :, -tq:], k, v, is_causal=True, impl=impl_name)
        torch.testing.assert_close(last, full[:, :, -tq:], atol=1e-6, rtol=1e-6)


def test_attend_plain_bf16_close_to_fp32():
    q, k, v = _qkv(tq=6, tk=6)
    ref = attend(q, k, v, is_causal=True, impl="sdpa")
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True, impl="plain")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_attention_impl_default_is_settable():
    before = get_attention_impl()
    try:
        set_attention_impl("plain")
        assert get_attention_impl() == "plain"
        with pytest.raises(ValueError):
            set_attention_impl("flash")
    finally:
        set_attention_impl(before)
    assert get_attention_impl() == before


def test_auto_attention_is_plain_for_bf16_on_cpu(monkeypatch):
    """"auto" (the default) takes the plain path exactly when it is the faster one: bf16 on a CPU,
    with or without gradients; fp32 goes through SDPA."""
    assert get_attention_impl() == "auto"
    from mmcli.model import transformer

    calls = []
    real = transformer.attention_probs
    monkeypatch.setattr(transformer, "attention_probs", lambda *a: calls.append(1) or real(*a))
    q, k, v = (torch.randn(2, 2, 5, 8, requires_grad=True) for _ in range(3))
    for dtype, grad, queries, plain in ((torch.bfloat16, True, 5, True), (torch.bfloat16, False, 5, True),
                                        (torch.bfloat16, False, 1, True), (torch.float32, True, 5, False),
                                        (torch.float32, False, 1, False)):
        calls.clear()
        with torch.set_grad_enabled(grad):
            attend(q[:, :, -queries:].to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
        assert bool(calls) == plain, (dtype, grad, queries)


# ---------------------------------------------------------------------------
# the model pieces


@pytest.mark.parametrize("style", ["cross", "concat"])
def test_changing_a_future_token_never_changes_earlier_outputs(style, impl):
    model = make(style)
    images, tokens = random_inputs()
    j = 5
    changed = tokens.clone()
    changed[:, j] = (changed[:, j] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(images, tokens), model(images, changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, j:], b[:, j:])  # the change is seen from position j on


@pytest.mark.parametrize("style", ["cross", "concat"])
@pytest.mark.parametrize("chunks", [[1] * 9, [3, 1, 4, 1]])
def test_cached_decoding_equals_full_forward(style, chunks, impl):
    model = make(style)
    images, tokens = random_inputs()
    with torch.no_grad():
        full = model(images, tokens)  # (B, T, V)
        cache = model.start(images)
        parts, at = [], 0
        for t in chunks:
            parts.append(model.step(tokens[:, at : at + t], cache))
            at += t
            assert cache.length == at + (model.n_image if style == "concat" else 0)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_select_reorders_and_expands_rows():
    model = make("cross")
    images, tokens = random_inputs()
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        full = model(images[index], tokens[index])
        cache = model.start(images)
        first = model.step(tokens[:, :4], cache)[index]
        cache.select(index)
        rest = model.step(tokens[index, 4:], cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_cross_attention_computes_the_context_once():
    torch.manual_seed(0)
    attn = Attention(16, 2, cross=True)
    calls = []
    attn.kv.register_forward_hook(lambda *_: calls.append(1))
    cache = KVCache.for_layers(1)[0].cross_attn
    x, context = torch.randn(2, 1, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        first = attn(x, context=context, cache=cache)
        again = attn(x, context=None, cache=cache)
    assert len(calls) == 1
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, attn(x, context=context).detach())


def test_every_parameter_of_a_block_gets_a_gradient():
    torch.manual_seed(0)
    block = Block(16, 2, cross=True, dropout=0.1).train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    context = torch.randn(2, 3, 16, requires_grad=True)
    out = block(x, context=context, is_causal=True)
    (out * torch.randn_like(out)).sum().backward()
    names = [name for name, _ in block.named_parameters()]
    assert any(n.startswith("cross_attn.") for n in names)
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad.abs().sum() > 0 and context.grad.abs().sum() > 0


def test_mlp_and_block_shapes():
    x = torch.randn(2, 5, 16)
    assert MLP(16, 40)(x).shape == (2, 5, 16)
    assert Block(16, 4, mlp_ratio=2.0)(x).shape == (2, 5, 16)
    with pytest.raises(ValueError):
        Attention(10, 3)


def test_grouped_cross_attention_cache_equals_one_copy_per_row():
    """Beam search's rows share their image's cached keys and values (group = beams): the outputs equal
    a cache holding a copy per row, after reordering beams within images and dropping an image."""
    torch.manual_seed(0)
    attn = Attention(16, 2, cross=True).eval()
    context = torch.randn(2, 7, 16)  # two images
    x = torch.randn(6, 1, 16)  # three beams each
    grouped, copied = LayerCache(), LayerCache()
    grouped.k, grouped.v = attn.context_kv(context, contiguous=True)
    k, v = attn.context_kv(context)
    copied.k, copied.v = k.repeat_interleave(3, 0), v.repeat_interleave(3, 0)
    grouped.group = 3
    with torch.no_grad():
        torch.testing.assert_close(attn(x, cache=grouped), attn(x, cache=copied))
        reorder = torch.tensor([2, 2, 0, 4, 3, 3])  # beams move within their image
        grouped.select(reorder), copied.select(reorder)
        assert grouped.k.shape[0] == 2  # nothing copied
        torch.testing.assert_close(attn(x, cache=grouped), attn(x, cache=copied))
        keep = torch.tensor([3, 5, 4])  # the first image finished: its block is dropped
        grouped.select(keep), copied.select(keep)
        assert grouped.k.shape[0] == 1
        torch.testing.assert_close(attn(x[3:], cache=grouped), attn(x[3:], cache=copied))


@pytest.mark.parametrize("rows", [1, 3])
def test_attention_pool_equals_the_attention_layer(rows):
    """Attention.pool (the key and value weights folded into the query and the output) gives the
    attention layer's output with the keys and values projected (fold_context off) and the same
    gradients, for one query shared by every context row or one query per row; recording attention
    weights takes the layer's own path."""
    torch.manual_seed(0)
    attn = Attention(32, 4, cross=True)
    attn.fold_context = False
    nn.init.normal_(attn.kv.bias)  # (a key bias must not change the pooling: the softmax ignores it)
    query = torch.randn(rows, 1, 32, requires_grad=True)
    context = torch.randn(3, 7, 32, requires_grad=True)
    params = [query, context, attn.q.weight, attn.q.bias, attn.kv.weight, attn.kv.bias, attn.proj.weight]
    plain = attn(query.expand(3, -1, -1), context=context)[:, 0]
    folded = attn.pool(query, context)
    assert folded.shape == (3, 32) and torch.allclose(folded, plain, atol=1e-5)
    for g_plain, g_folded in zip(torch.autograd.grad(plain.square().sum(), params),
                                 torch.autograd.grad(folded.square().sum(), params)):
        assert torch.allclose(g_folded, g_plain, atol=1e-5)
    attn.record = []
    try:
        assert torch.allclose(attn.pool(query, context), plain, atol=1e-6) and attn.record[0].shape == (3, 4, 1, 7)
    finally:
        attn.record = None


def test_folded_cross_attention_equals_cached_keys_and_values():
    """Decoding's folded cross-attention (the context cached itself: Attention.folded_layers) gives the
    outputs and recorded weights of cached keys and values, with non-zero biases, for one position and
    several; new weights are folded again; a context shared by layers stays shared when rows are
    selected; grouped rows (beam search) get the keys and values after all."""
    torch.manual_seed(0)
    attn = Attention(32, 4, cross=True).eval()
    for bias in (attn.q.bias, attn.kv.bias, attn.proj.bias):
        nn.init.normal_(bias)
    context = torch.randn(3, 7, 32)
    same = lambda m: m  # noqa: E731  (the folded layers as plain nn.Linear)

    def caches():
        plain, folded = LayerCache(), LayerCache()
        attn.cache_context(context, plain)
        attn.cache_context(context, folded, fold=same)
        return plain, folded

    with torch.no_grad():
        for t in (1, 2):
            x = torch.randn(3, t, 32)
            plain, folded = caches()
            assert folded.k is None and folded.context is context and plain.k is not None
            torch.testing.assert_close(attn(x, cache=folded), attn(x, cache=plain))
        attn.record = []
        try:
            attn(x, cache=folded), attn(x, cache=plain)
            assert attn.record[0].shape == (3, 4, 2, 7)
            torch.testing.assert_close(attn.record[0], attn.record[1])
        finally:
            attn.record = None
        attn.kv.weight.mul_(1.5)  # in place: the folded layers are made again
        attn.q.bias.add_(1.0)
        plain, folded = caches()
        torch.testing.assert_close(attn(x, cache=folded), attn(x, cache=plain))

        layers = KVCache.for_layers(2)
        for layer in layers:
            attn.cache_context(context, layer.cross_attn, fold=same)
        layers.select(torch.tensor([2, 0]))
        shared = layers[0].cross_attn.context
        assert shared is layers[1].cross_attn.context and torch.equal(shared, context[[2, 0]])

        plain, folded = caches()
        plain.group = folded.group = 2  # (two query rows per context row)
        x = torch.randn(6, 1, 32)
        torch.testing.assert_close(attn(x, cache=folded), attn(x, cache=plain))
        assert folded.context is None and folded.k is not None


@pytest.mark.parametrize("causal", [False, True])
def test_a_block_on_packed_rows_equals_the_padded_block(causal):
    """Block(x, rows=Rows) on the real positions alone (packed as (n, D)) gives the padded block's outputs
    and gradients at those positions, with self-attention (key mask or causal) and cross-attention."""
    from mmcli.model.transformer import Rows

    torch.manual_seed(0)
    block = Block(16, 4, cross=True)
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 16, requires_grad=True)
    context = torch.randn(3, 6, 16)
    valid = torch.arange(5)[None, :] < lengths[:, None]
    mask = None if causal else valid[:, None, None, :]
    rows = Rows.of_mask(valid)
    padded = block(x, context=context, mask=mask, is_causal=causal)[valid]
    packed = block(rows.pack(x), context=context, mask=mask, is_causal=causal, rows=rows)
    assert packed.shape == (int(lengths.sum()), 16)
    torch.testing.assert_close(packed, padded)
    assert torch.equal(rows.pad(packed)[valid], packed) and not rows.pad(packed)[~valid].any()
    params = [x, *block.parameters()]
    for g_packed, g_padded in zip(torch.autograd.grad(packed.square().sum(), params),
                                  torch.autograd.grad(padded.square().sum(), params)):
        torch.testing.assert_close(g_packed, g_padded)
    # rounded up to a multiple: the real positions and as many pads as it takes (where there are any)
    assert Rows.of_mask(valid, multiple=4).index.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]
    assert len(Rows.of_mask(valid, multiple=64).index) == 15
    rounded = Rows.of_mask(valid, multiple=4)
    out = rounded.pad(block(rounded.pack(x), context=context, mask=mask, is_causal=causal, rows=rounded))
    torch.testing.assert_close(out[valid], padded)
    with pytest.raises(ValueError, match="packed rows"):
        block(rows.pack(x), is_causal=True, rows=rows, context=context, cache=KVCache.for_layers(1)[0])


@pytest.mark.parametrize("fold", [False, True])
def test_packed_rows_attend_by_context_as_with_gathered_contexts(fold, monkeypatch):
    """Packed rows over shared contexts (context_index) attend laid out by context (Rows.by_context:
    each context's texts side by side against its one copy of the keys and values, or of the folded
    form's context): the outputs and gradients of the padded block whose context rows are gathered to
    every text row."""
    torch.manual_seed(0)
    monkeypatch.setattr(Attention, "fold_pays", lambda self, *a: fold)
    block = Block(16, 4, cross=True)
    lengths = torch.tensor([5, 2, 4, 3, 1])
    context_index = torch.tensor([1, 0, 1, 1, 0])  # two contexts, three and two texts
    x = torch.randn(5, 5, 16, requires_grad=True)
    context = torch.randn(2, 6, 16, requires_grad=True)
    valid = torch.arange(5)[None, :] < lengths[:, None]
    rows = Rows.of_mask(valid)
    by = rows.by_context(context_index, 2, multiple=4)
    assert (by.b, by.t) == (2, 12)  # context 1: 5 + 4 + 3 = 12 positions (a multiple of 4); context 0: 2 + 1
    padded = block(x, context=context.index_select(0, context_index), is_causal=True)[valid]
    packed = block(rows.pack(x), context=context, is_causal=True, context_index=context_index, rows=rows)
    torch.testing.assert_close(packed, padded)
    params = [x, context, *block.parameters()]
    for g_packed, g_padded in zip(torch.autograd.grad(packed.square().sum(), params),
                                  torch.autograd.grad(padded.square().sum(), params)):
        torch.testing.assert_close(g_packed, g_padded)


def test_by_context_lays_each_context_s_positions_out_in_order():
    valid = torch.arange(4)[None, :] < torch.tensor([3, 1, 4])[:, None]  # 8 positions
    rows = Rows.of_mask(valid)
    context_index = torch.tensor([2, 0, 2])
    by = rows.by_context(context_index, 3, multiple=4)
    assert (by.b, by.t) == (3, 8)  # context 2 holds rows 0 and 2: 3 + 4 positions, rounded up to 8
    # rows.index is [0, 1, 2, 4, 8, 9, 10, 11]: row 1's one position goes to context 0, slot 0; rows 0 and 2
    # to context 2's slots 0-6 in their packed order; context 1 holds none
    assert by.index.tolist() == [16, 17, 18, 0, 19, 20, 21, 22]
    assert rows.by_context(context_index, 3, multiple=4) is by  # made once for the layers of a call
    x = torch.arange(8.0)[:, None]
    assert torch.equal(by.pack(by.pad(x)), x)


def test_dropout_masks_keep_the_expectation(monkeypatch):
    """transformer.Dropout on a CPU (masks from 15 random bits an element): about p of the elements
    dropped, the rest scaled by the inverse of the keep probability, the gradient the same mask; the same
    seed gives the same mask; no dropout in eval mode or at p = 0; nn.Dropout's masks where switched off."""
    from mmcli.model.transformer import Dropout

    d = Dropout(0.2).train()
    x = torch.ones(500, 400, requires_grad=True)
    torch.manual_seed(0)
    y = d(x)
    dropped = (y == 0).float().mean().item()
    assert 0.195 < dropped < 0.205
    assert y.unique().tolist() == [0.0, pytest.approx(32768 / (32768 - 6554))]
    assert abs(y.mean().item() - 1) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())
    torch.manual_seed(0)
    assert torch.equal(d(x), y)
    assert d(torch.ones(7, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(d.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    for p in (1.0, 0.99999):  # (0.99999 rounds to 2^15 of 2^15: nothing kept, no division by zero)
        assert torch.equal(Dropout(p).train()(x), torch.zeros_like(x))
    monkeypatch.setattr(Dropout, "fast_masks", False)
    torch.manual_seed(0)
    ref = nn.functional.dropout(x, 0.2, True)
    torch.manual_seed(0)
    assert torch.equal(d.train()(x), ref)


@pytest.mark.parametrize("case", ["rows", "context_index", "packed"])
def test_cross_attention_folded_without_a_cache_gives_the_projected_outputs_and_gradients(case, monkeypatch):
    """A cross-attention without a cache, folded (Attention._folded_attend, where Attention.fold_pays),
    attends without projecting the context's keys and values: the outputs and gradients of the projected
    path, non-zero biases included, with each query row's context picked by context_index, and on packed
    rows (Rows). The key bias gets a zero gradient: it adds the same number to every score of a row,
    which the softmax ignores."""
    torch.manual_seed(0)
    attn = Attention(32, 4, cross=True).double()
    for bias in (attn.q.bias, attn.kv.bias, attn.proj.bias):
        nn.init.normal_(bias)
    x = torch.randn(3, 5, 32, dtype=torch.double, requires_grad=True)
    context = torch.randn(2 if case == "context_index" else 3, 7, 32, dtype=torch.double, requires_grad=True)
    index = torch.tensor([1, 0, 1]) if case == "context_index" else None
    rows = Rows.of_mask(torch.arange(5) < torch.tensor([[5], [3], [2]])) if case == "packed" else None
    weights = torch.randn(3, 5, 32, dtype=torch.double)
    params = [x, context, *attn.parameters()]
    folded_calls = []
    real = attn._folded_attend
    monkeypatch.setattr(attn, "_folded_attend", lambda *a: folded_calls.append(1) or real(*a))

    def run(fold: bool):
        monkeypatch.setattr(attn, "fold_pays", lambda *_: fold)
        out = attn(x if rows is None else rows.pack(x), context=context, context_index=index, rows=rows)
        out = out if rows is None else rows.pad(out)
        return out, torch.autograd.grad((out * weights).sum(), params)

    folded, g_folded = run(True)
    assert folded_calls == [1]
    projected, g_projected = run(False)
    assert folded_calls == [1]
    torch.testing.assert_close(folded, projected, rtol=0, atol=1e-12)
    for a, b in zip(g_folded, g_projected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    key_bias_grad = next(g for p, g in zip(params, g_folded) if p is attn.kv.bias)[:32]
    assert key_bias_grad.abs().max() == 0


def test_fold_pays_where_it_takes_a_third_of_the_flops():
    """A cross-attention without a cache folds where that takes at most a third of the FLOPs of projecting
    the keys and values (FOLD_MARGIN; benchmarks/bench_fold.py): at benchmarks/peer_hf.py's shape (32
    captions of 20 tokens over 197 image tokens, width 256, 4 heads: 5x fewer), not at the Flickr8k
    recipe's (five captions of about 16 tokens for each image of 64 tokens), nor with queries of 40 tokens
    (2.6x fewer, about break-even); on a CPU only (not measured on a GPU), and never with fold_context off."""
    attn = Attention(256, 4, cross=True)
    assert attn.fold_pays(32, 20, 32, 197) and attn.fold_pays(32, 30, 32, 197)
    assert not attn.fold_pays(32, 20, 32, 197, "cuda")
    assert not attn.fold_pays(160, 16, 32, 64)
    assert not attn.fold_pays(32, 40, 32, 197)
    attn.fold_context = False
    assert not attn.fold_pays(32, 20, 32, 197)
