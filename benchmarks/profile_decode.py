"""Where generation time goes after the image is encoded: the decoding steps alone, timed and profiled.

    python benchmarks/profile_decode.py --precision bf16 --beam 1     # greedy, bf16 weights
    python benchmarks/profile_decode.py --precision fp32 --beam 3 --attention sdpa --profile
    python benchmarks/profile_decode.py --precision fp32 --profile --shapes   # by input shape
    python benchmarks/profile_decode.py --precision fp32 --compare-absorbed 12   # an idea not kept

The model is benchmarks/peer_hf.py's mmcli side as ``mmcli.load`` makes it (prepacked linear layers) (ViT 224/16 width 256, 4 cross-attention decoder layers,
vocabulary 8,000; random weights, nothing downloaded), batch 32, 20 tokens with end-of-sequence disabled.
The images are encoded once before the timing; each timed call runs ``start`` (filling the caches
from the encoded image) and the 20 steps. Median of ``--repeats`` calls; ``--profile`` adds
torch.profiler's most expensive ops.

``--compare-absorbed ROUNDS`` times greedy decoding against a variant of the cross-attention that was
not kept: the key and value projections folded into the query and the output side
(q Wk_h . x_j instead of q . (Wk_h x_j), and sum_j p_j (Wv_h x_j) = Wv_h sum_j p_j x_j), so that every
layer reads the one encoded image (B, 197, 256), 6.4 MB in fp32, instead of its own cached keys and
values (13 MB a layer, 52 MB in all): no projections at ``start``, a quarter of the cached bytes. The
fold is ``Attention.pool``'s (mmcli keeps it for the image's attention pool, one learned query);
greedy decoding, one position a step, has one query per image too. Both run in one process,
alternating, and must emit the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--attention", choices=("auto", "sdpa", "plain"), default="auto")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--shapes", action="store_true", help="With --profile: the ops grouped by their input shapes.")
    ap.add_argument("--no-pack", dest="pack", action="store_false", help="Without oneDNN's prepacked linear layers.")
    ap.add_argument("--compare-absorbed", type=int, default=0, metavar="ROUNDS",
                    help="Greedy: time the folded cross-attention (see above) against mmcli's, ROUNDS pairs.")
    a = ap.parse_args()
    if a.compare_absorbed and a.beam != 1:
        ap.error("--compare-absorbed times greedy decoding: leave --beam out")

    import peer_hf
    from mmcli.model.generate import beam_search, greedy
    from mmcli.model.transformer import set_attention_impl

    shape = SimpleNamespace(image_size=224, patch=16, dim=256, enc_layers=4, dec_layers=4, heads=4, mlp_ratio=4.0,
                            vocab=8000, text_len=20, batch=a.batch)
    set_attention_impl(a.attention)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    shape.pack = a.pack
    model = peer_hf.inference_copy(shape, peer_hf.mmcli_model(shape), dtype, torch.device("cpu"))
    images = peer_hf.make_batch(shape, torch.device("cpu")).images.to(dtype)
    with torch.no_grad():
        img = model.encode_image(images)
    model.encode_image = lambda _: img  # the steps alone: the image comes encoded
    n = shape.text_len
    if a.beam == 1:
        run = lambda: greedy(model, images, 1, 2, n, min_len=n)  # noqa: E731
    else:
        run = lambda: beam_search(model, images, 1, 2, n, beam=a.beam, min_len=n)  # noqa: E731
    if a.compare_absorbed:
        return compare_absorbed(model, run, a.compare_absorbed, a.precision)
    for _ in range(2):
        run()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{a.precision}, beam {a.beam}, attention {a.attention}, batch {a.batch}: decoding {n} tokens "
          f"{med:.3f} s ({1e3 * med / n:.1f} ms a step; median of {a.repeats}), {torch.get_num_threads()} threads")
    if a.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
            run()
        table = prof.key_averages(group_by_input_shape=a.shapes)
        print(table.table(sort_by="self_cpu_time_total", row_limit=20 if a.shapes else 15,
                          max_name_column_width=40, max_shapes_column_width=80))


def compare_absorbed(model, run, rounds: int, precision: str) -> None:
    """Greedy decoding with mmcli's cross-attention caches and with the folded form, interleaved."""
    from mmcli.model import transformer

    plain_forward, plain_cache = transformer.Attention.forward, transformer.Block.cache_context
    folded = [False]

    def cache_context(blk, context, cache):
        if not folded[0] or blk.cross_attn is None:
            return plain_cache(blk, context, cache)
        cache.cross_attn.k, cache.cross_attn.v = context, None  # the image itself, shared by the layers

    def forward(attn, x, context=None, mask=None, is_causal=False, cache=None, context_index=None):
        if attn.cross and cache is not None and cache.k is not None and cache.v is None:
            # (greedy feeds one position a step: the one query per image that Attention.pool folds)
            return attn.pool(x, cache.k).unsqueeze(1)
        return plain_forward(attn, x, context, mask, is_causal, cache, context_index)

    transformer.Attention.forward, transformer.Block.cache_context = forward, cache_context
    times = {False: [], True: []}
    tokens = {}
    for r in range(rounds + 2):
        for f in (False, True) if r % 2 == 0 else (True, False):
            folded[0] = f
            t0 = time.perf_counter()
            tokens[f] = run()
            if r >= 2:  # two warm-up rounds
                times[f].append(time.perf_counter() - t0)
    ratios = [p / q for p, q in zip(times[False], times[True])]
    print(f"{precision} greedy, start + 20 steps, batch {len(tokens[False])}, {rounds} rounds: cached keys and "
          f"values {statistics.median(times[False]):.3f} s, folded {statistics.median(times[True]):.3f} s; "
          f"speed-up {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"same tokens: {tokens[False] == tokens[True]}")
    for f, ops in ((False, ("aten::_scaled_dot_product_flash_attention_for_cpu",)), (True, ("aten::bmm",))):
        folded[0] = f
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        table = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in table) / 1e3
        for e in table:
            if e.key in ops:
                print(f"{'folded' if f else 'cached'}: {e.key} {e.self_cpu_time_total / 1e3:.1f} ms in {e.count} "
                      f"calls, of {total:.1f} ms profiled")


if __name__ == "__main__":
    main()
