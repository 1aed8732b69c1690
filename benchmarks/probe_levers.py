"""Levers probed for the two targets of benchmarks/peer_hf.py that this CPU misses (bf16 training at
1.4x Hugging Face's speed, fp32 greedy generation at 1.5x), all but one not kept: each probe times a
lever against what mmcli does now, interleaved, at the peer shape (image 224, patch 16, width 256,
4 + 4 layers, 4 heads, vocabulary 8,000, 20 tokens, batch 32; random weights, nothing downloaded).
BENCHMARKS.md, "Levers probed and not kept", has the results and why each was left.

* ``decode_softmax``: fp32 greedy decoding (the image encoded once beforehand, as
  ``profile_decode.py``), the folded cross-attention's scores laid out (B, T H, N), the softmax along
  contiguous memory, against mmcli's (B, N, T H) with the softmax along the middle dimension
  (``Attention._folded_forward``): scores as ``bmm(u, ctx^T)``, or mmcli's product then a transposed copy;
* ``decode_halves``: the same decoding as two half batches in two threads of one intra-op thread each;
* ``decode_chunks``: the same decoding with the folded cross-attention's two products over the image
  run 8 images at a time, so that the second finds its images in the cache (one read of the image a
  layer instead of two);
* ``bf16_stream``: a bf16 training step with the residual stream in bf16 (every block's input cast,
  as Megatron's default) against autocast's fp32 stream; ``--compile`` also both with the layers compiled;
* ``whole_compile``: the caption loss compiled as one function against ``VLM.compile_layers``
  (each block and the image tower compiled on its own);
* ``ce_compile``: the LM loss's cross-entropy over (640, 8000) bf16 logits, forward and backward,
  compiled against eager, and against ``mmcli.losses.token_cross_entropy`` (chunked, its gradient made
  in the forward pass: the one lever here that mmcli kept, for the trainer's LM loss on a CPU);
* ``bias_linear``: the encoder's bf16 linear layers with their bias added inside oneDNN's product
  (``mkldnn._linear_pointwise``) against ``F.linear`` (an ``addmm``), forward only;
* ``linear_bias_train``: the bf16 training step with the image encoder's linear layers through oneDNN's
  product with the bias inside it, against ``F.linear``'s ``addmm``, which first copies the bias into
  its output;
* ``attention_pad``: the encoder's bf16 attention products at 197 tokens against 208, and its fp32
  SDPA at 197 against 192 and 208;
* ``patch_linear``: the fp32 patch embedding for inference as oneDNN's prepacked linear over the
  patches against the convolution;
* ``encoder_chunks``: the fp32 image encoder for inference over the 32 images at once against chunks
  of 16, 8 and 4 images.

    python benchmarks/probe_levers.py                          # every probe
    python benchmarks/probe_levers.py --probes bf16_stream --compile --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_hf  # noqa: E402  (the peer shape's model, batch, training step and CPU share)
from profile_caption_step import interleaved  # noqa: E402

PROBES = ("decode_softmax", "decode_halves", "decode_chunks", "bf16_stream", "whole_compile", "ce_compile",
          "bias_linear", "linear_bias_train", "attention_pad", "patch_linear", "encoder_chunks")
BF16 = torch.bfloat16


def shape() -> SimpleNamespace:
    return SimpleNamespace(image_size=224, patch=16, dim=256, enc_layers=4, dec_layers=4, heads=4, mlp_ratio=4.0,
                           vocab=8000, text_len=20, batch=32, pack=True, phases=[], compile=False)


def repeat(fn, n: int):
    """fn run n times: one timed call of a micro probe."""
    def run():
        for _ in range(n):
            fn()
    return run


def report(title: str, times: dict, base: str, share: float | None, unit: float = 1.0, note: str = "") -> None:
    """Each variant's median time (ms, per ``unit`` calls) and its speed against ``base``: the median of the
    per-round ratios base / variant (above 1: the variant is faster), min-max."""
    print(f"\n{title}{note}  (other CPU {100 * (share or 0):.1f}%)")
    for k, ts in times.items():
        line = f"  {k:34s} {1e3 * statistics.median(ts) / unit:9.2f} ms"
        if k != base:
            r = [a / b for a, b in zip(times[base], ts)]
            line += f"   {statistics.median(r):.3f}x of {base} ({min(r):.3f}-{max(r):.3f})"
        print(line)


def timed(fns: dict, rounds: int) -> tuple[dict, float | None]:
    cpu = peer_hf.CpuShare()
    cpu.start()
    times = interleaved(fns, rounds)
    cpu.stop()
    return times, cpu.share


# ============================================================================ generation


def inference_model():
    """The peer shape's fp32 inference model as ``mmcli.load`` makes it, and the batch's 32 images."""
    a = shape()
    torch.manual_seed(0)
    model = peer_hf.inference_copy(a, peer_hf.mmcli_model(a), torch.float32, torch.device("cpu"))
    return model, peer_hf.make_batch(a, torch.device("cpu")).images


def decoding_model():
    """:func:`inference_model`, its image encoded once, and the greedy decoding of 20 tokens for the batch."""
    from mmcli.model.generate import greedy

    model, images = inference_model()
    with torch.no_grad():
        img = model.encode_image(images)
    model.encode_image = lambda x: img[: len(x)]  # the steps alone: the image comes encoded
    n = shape().text_len
    return model, images, lambda imgs: greedy(model, imgs, 1, 2, n, min_len=n)


def folded_forward_with(average):
    """``Attention._folded_forward`` with its average of the context replaced by ``average(u, ctx)``: u (B, T H, D)
    each query row's heads in the context's space, ctx (B, N, D) -> (B, T H, D)."""
    def forward(self, x, cache):
        b, t, d = x.shape
        _, inward, outward = self._folded
        avg = average(inward(x).view(b, t * self.heads, d), cache.context)
        return self.dropout(outward(avg.reshape(b, t, self.heads * d)))
    return forward


def _tokens_last(u, ctx):
    """The scores as bmm(u, ctx^T): (B, T H, N), the softmax along the last dimension."""
    p = torch.bmm(u, ctx.transpose(1, 2)).softmax(dim=-1, dtype=torch.float32).to(ctx.dtype)
    return torch.bmm(p, ctx)


def _transposed_softmax(u, ctx):
    """mmcli's product, then the scores copied to (B, T H, N)."""
    s = torch.bmm(ctx, u.transpose(1, 2)).transpose(1, 2).contiguous()
    return torch.bmm(s.softmax(dim=-1, dtype=torch.float32).to(ctx.dtype), ctx)


def _in_chunks(u, ctx, k: int = 8):
    """mmcli's two products over the image run ``k`` images at a time."""
    avg = torch.empty_like(u)
    for c in range(0, len(u), k):
        p = torch.bmm(ctx[c:c + k], u[c:c + k].transpose(1, 2)).softmax(dim=1, dtype=torch.float32).to(ctx.dtype)
        torch.bmm(p.transpose(1, 2), ctx[c:c + k], out=avg[c:c + k])
    return avg


def compare_folded_forward(a, title: str, impls: dict) -> None:
    """fp32 greedy decoding with each cross-attention layer's ``_folded_forward`` replaced by each of
    ``impls`` (name -> an average for :func:`folded_forward_with`; None: mmcli's), interleaved; checks that the
    tokens are the same."""
    from mmcli.model.transformer import Attention

    model, images, run = decoding_model()
    layers = [m for m in model.modules() if isinstance(m, Attention) and m.cross]
    tokens = {}

    def variant(name, impl):
        def go():
            for m in layers:  # (an instance attribute shadows the class's method; None: the class's)
                if impl is None:
                    m.__dict__.pop("_folded_forward", None)
                else:
                    m._folded_forward = MethodType(folded_forward_with(impl), m)
            tokens[name] = run(images)
        return go

    times, share = timed({name: variant(name, impl) for name, impl in impls.items()}, a.rounds)
    variant("mmcli", None)
    same = all(t == tokens[next(iter(impls))] for t in tokens.values())
    report(f"{title}: fp32 greedy decoding, 20 tokens, batch 32", times, next(iter(impls)), share,
           note=f"; the same tokens: {same}")


def decode_softmax(a) -> None:
    compare_folded_forward(a, "decode_softmax", {"mmcli (B, N, T H)": None, "scores (B, T H, N)": _tokens_last,
                                                 "mmcli's product, transposed copy": _transposed_softmax})


def decode_chunks(a) -> None:
    compare_folded_forward(a, "decode_chunks", {"mmcli (the batch at once)": None, "8 images at a time": _in_chunks})


def decode_halves(a) -> None:
    model, images, run = decoding_model()
    threads = torch.get_num_threads()
    half = len(images) // 2

    def halves():
        torch.set_num_threads(1)
        try:
            ts = [threading.Thread(target=run, args=(images[i * half:(i + 1) * half],)) for i in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        finally:
            torch.set_num_threads(threads)

    times, share = timed({f"the batch, {threads} threads": lambda: run(images),
                          "two halves in two threads, 1 each": halves}, a.rounds)
    report("decode_halves: fp32 greedy decoding, 20 tokens, batch 32", times, f"the batch, {threads} threads", share)


def patch_linear(a) -> None:
    x = torch.randn(32, 3, 224, 224)
    w, b = torch.randn(256, 3, 16, 16) * 0.02, torch.zeros(256)
    packed = torch.ops.mkldnn._reorder_linear_weight(w.reshape(256, -1).contiguous(), 32 * 196)

    def conv():
        return F.conv2d(x, w, b, stride=16).flatten(2).transpose(1, 2)

    def linear():
        patches = x.view(32, 3, 14, 16, 14, 16).permute(0, 2, 4, 1, 3, 5).reshape(32 * 196, 768)
        return torch.ops.mkldnn._linear_pointwise(patches, packed, b, "none", [], "").view(32, 196, 256)

    with torch.no_grad():
        err = (conv() - linear()).abs().max().item()
        times, share = timed({"convolution": repeat(conv, 5), "prepacked linear": repeat(linear, 5)}, a.rounds)
    report("patch_linear: fp32 patch embedding, 32 images", times, "convolution", share, 5,
           f"; largest difference {err:.1e}")


def encoder_chunks(a) -> None:
    """The fp32 inference model's image encoder (the 0.29 s of a 0.47 s greedy batch) over the 32 images at once
    and in chunks of 16, 8 and 4 images, whose layers' outputs (6.4 MB instead of 26 MB for the MLP's hidden
    layer) can stay in cache and in memory already mapped."""
    model, images = inference_model()

    def encode(k):
        return lambda: torch.cat([model.encode_image(c) for c in images.split(k)])

    fns = {f"{k} images a call": encode(k) for k in (32, 16, 8, 4)}
    with torch.no_grad():
        err = (fns["8 images a call"]() - fns["32 images a call"]()).abs().max().item()
        times, share = timed(fns, a.rounds)
    report("encoder_chunks: the fp32 image encoder for inference, 32 images", times, "32 images a call", share,
           note=f"; largest difference {err:.1e}")


# ============================================================================ training


def training(compiled: bool = False):
    a = shape()
    torch.manual_seed(0)
    model = peer_hf.as_mmcli_runs_it(a, peer_hf.mmcli_model(a), torch.device("cpu"))
    model.train()
    if compiled:
        model.compile_layers()
    return model, peer_hf.make_batch(a, torch.device("cpu"))


def step_of(model, batch):
    opt = peer_hf.optimizer(model, torch.device("cpu"), True)
    return lambda: peer_hf.mmcli_train_step(model, opt, batch, BF16)


def bf16_stream_hooks(model) -> None:
    """Every block's input (the image tower's and the decoder's) cast to bf16 under autocast: the residual
    stream then stays bf16 (norms, adds and the products' inputs), as Megatron's default."""
    from mmcli.model.transformer import Block

    def cast(_, args, kwargs):
        if torch.is_autocast_enabled("cpu") and args and args[0].dtype == torch.float32:
            return (args[0].to(BF16), *args[1:]), kwargs
        return None

    for blk in [*model.vision.backbone.blocks, *(m for m in model.modules() if isinstance(m, Block))]:
        blk.register_forward_pre_hook(cast, with_kwargs=True)


def bf16_stream(a) -> None:
    for compiled in (False, True) if a.compile else (False,):
        model, batch = training()
        other = copy.deepcopy(model)
        bf16_stream_hooks(other)
        if compiled:
            model.compile_layers()
            other.compile_layers()
        fns = {"fp32 stream (autocast)": step_of(model, batch), "bf16 stream": step_of(other, batch)}
        for f in fns.values():  # (warm-up: the compiles)
            f()
        times, share = timed(fns, a.rounds)
        report(f"bf16_stream: bf16 training step{', layers compiled' if compiled else ''}", times,
               "fp32 stream (autocast)", share)


def whole_compile(a) -> None:
    from mmcli.train import caption_loss

    model, batch = training(compiled=True)
    other, _ = training()
    other._layers_compiled = True  # (the path compiled layers take: length buckets, no packed rows)
    session = SimpleNamespace(autocast=lambda: torch.autocast("cpu", dtype=BF16))

    def loss_of(m, images, text, text_len):
        b = SimpleNamespace(images=images, text=text, ids=text, text_len=text_len, text_image=None)
        return caption_loss(m, b, session)

    whole = torch.compile(loss_of)
    opt = peer_hf.optimizer(other, torch.device("cpu"), True)

    def whole_step():
        whole(other, batch.images, batch.text, batch.text_len).backward()
        torch.nn.utils.clip_grad_norm_(other.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    fns = {"VLM.compile_layers": step_of(model, batch), "the loss compiled whole": whole_step}
    for f in fns.values():
        f()
    times, share = timed(fns, a.rounds)
    report("whole_compile: bf16 training step", times, "VLM.compile_layers", share)


def ce_compile(a) -> None:
    from mmcli import losses
    from mmcli.losses import token_cross_entropy

    logits = torch.randn(640, 8000, dtype=BF16, requires_grad=True)
    targets = torch.randint(0, 8000, (640,))

    def ce(x, y):
        return F.cross_entropy(x.float(), y, reduction="sum")

    def of(fn):
        def run():
            logits.grad = None
            fn(logits, targets).backward()
        return run

    compiled = torch.compile(ce)
    of(compiled)()

    def chunked(rows):  # token_cross_entropy with chunks of other sizes than losses.CE_ROWS
        def run(x, y):
            before, losses.CE_ROWS = losses.CE_ROWS, rows
            try:
                return token_cross_entropy(x, y)
            finally:
                losses.CE_ROWS = before
        return run

    fns = {"eager": repeat(of(ce), 5), "compiled": repeat(of(compiled), 5),
           f"mmcli's (kept), {losses.CE_ROWS} rows a chunk": repeat(of(token_cross_entropy), 5)}
    fns.update({f"mmcli's, {r} rows a chunk": repeat(of(chunked(r)), 5) for r in (64, 256)})
    times, share = timed(fns, a.rounds)
    report("ce_compile: cross-entropy of (640, 8000) bf16 logits, forward and backward", times, "eager", share, 5)


def bias_linear(a) -> None:
    fns = {}
    for m, k, n in ((6304, 256, 768), (6304, 256, 1024), (6304, 1024, 256), (6304, 256, 256)):
        x, w, b = torch.randn(m, k, dtype=BF16), torch.randn(n, k, dtype=BF16), torch.randn(n, dtype=BF16)
        fns[f"F.linear {k}->{n}"] = repeat(lambda x=x, w=w, b=b: F.linear(x, w, b), 5)
        fns[f"oneDNN {k}->{n}"] = repeat(lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(
            x, w, b, "none", [], ""), 5)
    times, share = timed(fns, a.rounds)
    print("\nbias_linear: the encoder's bf16 linear layers with their bias, 6,304 rows, forward "
          f"(other CPU {100 * (share or 0):.1f}%)")
    total = {"F.linear": 0.0, "oneDNN": 0.0}
    for name in [k for k in fns if k.startswith("F.linear")]:
        mine = name.replace("F.linear", "oneDNN")
        r = [p / q for p, q in zip(times[name], times[mine])]
        f_ms, o_ms = (1e3 * statistics.median(times[k]) / 5 for k in (name, mine))
        total["F.linear"], total["oneDNN"] = total["F.linear"] + f_ms, total["oneDNN"] + o_ms
        print(f"  {name[9:]:12s} F.linear {f_ms:6.2f} ms, oneDNN {o_ms:6.2f} ms: "
              f"{statistics.median(r):.3f}x ({min(r):.3f}-{max(r):.3f})")
    print(f"  one of each: F.linear {total['F.linear']:.2f} ms, oneDNN {total['oneDNN']:.2f} ms")


def linear_bias_train(a) -> None:
    """The bf16 training step with the linear layers of 4,096 rows or more (the image encoder's) through fp32
    training's oneDNN layer (``packed._OneDNNLinear``: the bias inside oneDNN's product, no broadcast copy of it
    into the output first as ``addmm`` makes) on the bf16 casts autocast would make, against ``F.linear``."""
    from mmcli.model import packed

    model, batch = training()
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, packed.PackedLinear):
            def forward(x, m=m, plain=m.forward):
                if (torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()
                        and x.numel() >= packed.MIN_TRAIN_ROWS * x.shape[-1]):
                    b = None if m.bias is None else m.bias.to(BF16)
                    return m._activate(packed._OneDNNLinear.apply(x.to(BF16), m.weight.to(BF16), b))
                return plain(x)
            m.forward = forward
    fns = {"F.linear (addmm)": step_of(model, batch), "oneDNN, bias inside": step_of(other, batch)}
    for f in fns.values():
        f()
    times, share = timed(fns, a.rounds)
    report("linear_bias_train: bf16 training step", times, "F.linear (addmm)", share)


def attention_pad(a) -> None:
    fns = {}
    for n in (197, 208):
        q, k = torch.randn(128, n, 64, dtype=BF16), torch.randn(128, n, 64, dtype=BF16)
        p = torch.randn(128, n, n, dtype=BF16)

        def products(q=q, k=k, p=p):  # the forward's two and the backward's four products' forms
            torch.bmm(q, k.transpose(1, 2))
            torch.bmm(p, q)
            torch.bmm(p.transpose(1, 2), q)
            torch.bmm(q, k.transpose(1, 2))
            torch.bmm(p.transpose(1, 2), k)
            torch.bmm(p, k)

        fns[f"bf16 products, {n} tokens"] = repeat(products, 3)
    for n in (197, 192, 208):
        q, k, v = (torch.randn(32, 4, n, 64) for _ in range(3))
        fns[f"fp32 SDPA, {n} tokens"] = repeat(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), 3)
    with torch.no_grad():
        times, share = timed(fns, a.rounds)
    bf = {k: v for k, v in times.items() if k.startswith("bf16")}
    sd = {k: v for k, v in times.items() if k.startswith("fp32")}
    report("attention_pad: one layer's six bf16 attention products (128 heads of 64)", bf,
           "bf16 products, 197 tokens", share, 3)
    report("attention_pad: one layer's fp32 SDPA (32 x 4 heads of 64)", sd, "fp32 SDPA, 197 tokens", share, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probes", default=",".join(PROBES), help=f"Comma-separated, from {', '.join(PROBES)}.")
    ap.add_argument("--rounds", type=int, default=8, help="Timed rounds (after one warm-up round).")
    ap.add_argument("--compile", action="store_true", help="bf16_stream: also with the layers compiled.")
    a = ap.parse_args()
    probes = [p.strip() for p in a.probes.split(",") if p.strip()]
    unknown = [p for p in probes if p not in PROBES]
    if unknown or a.rounds < 1:
        ap.error(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}" if unknown
                 else "--rounds must be at least 1")
    print(f"{peer_hf._cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{a.rounds} rounds after one warm-up round")
    for p in probes:
        globals()[p](a)


if __name__ == "__main__":
    main()
