"""Where generation time goes after the image is encoded: the decoding steps alone, timed and profiled.

    python benchmarks/profile_decode.py --precision bf16 --beam 1     # greedy, bf16 weights
    python benchmarks/profile_decode.py --precision fp32 --beam 3 --attention sdpa --profile
    python benchmarks/profile_decode.py --precision fp32 --profile --shapes   # by input shape
    python benchmarks/profile_decode.py --precision fp32 --compare-fold 12         # folded or not
    python benchmarks/profile_decode.py --precision fp32 --beam 3 --compare-fold 12

The model is benchmarks/peer_hf.py's mmcli side as ``mmcli.load`` makes it (prepacked linear layers) (ViT 224/16 width 256, 4 cross-attention decoder layers,
vocabulary 8,000; random weights, nothing downloaded), batch 32, 20 tokens with end-of-sequence disabled.
The images are encoded once before the timing; each timed call runs ``start`` (filling the caches
from the encoded image) and the 20 steps. Median of ``--repeats`` calls; ``--profile`` adds
torch.profiler's most expensive ops.

``--compare-fold ROUNDS`` times decoding with the cross-attention folded onto the image (mmcli's way
for fp32 on a CPU: ``Attention.folded_layers``, the key and value weights folded into the query and
output layers, so that every layer reads the one encoded image, (B, 197, 256), 6.4 MB in fp32, and
``start`` projects nothing) against each layer's keys and values of the image cached (13 MB a
layer, 52 MB in all; ``VLM.fold_cross_attention = False``). Both run in one process, alternating,
and should emit the same tokens.
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
    ap.add_argument("--no-fold", dest="fold", action="store_false",
                    help="Cache each layer's keys and values of the image (VLM.fold_cross_attention = False).")
    ap.add_argument("--compare-fold", type=int, default=0, metavar="ROUNDS",
                    help="Time the folded cross-attention (see above) against cached keys and values, ROUNDS pairs.")
    a = ap.parse_args()

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
    model.fold_cross_attention = a.fold
    n = shape.text_len
    if a.beam == 1:
        run = lambda: greedy(model, images, 1, 2, n, min_len=n)  # noqa: E731
    else:
        run = lambda: beam_search(model, images, 1, 2, n, beam=a.beam, min_len=n)  # noqa: E731
    if a.compare_fold:
        return compare_fold(model, img, run, a.compare_fold, a.precision, a.beam)
    for _ in range(2):
        run()
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    folded = "folded" if model._cross_fold(img) and a.beam == 1 else "keys and values cached"
    print(f"{a.precision}, beam {a.beam}, attention {a.attention}, cross-attention {folded}, batch {a.batch}: decoding {n} tokens "
          f"{med:.3f} s ({1e3 * med / n:.1f} ms a step; median of {a.repeats}), {torch.get_num_threads()} threads")
    if a.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
            run()
        table = prof.key_averages(group_by_input_shape=a.shapes)
        print(table.table(sort_by="self_cpu_time_total", row_limit=20 if a.shapes else 15,
                          max_name_column_width=40, max_shapes_column_width=80))


def compare_fold(model, img, run, rounds: int, precision: str, beam: int) -> None:
    """Decoding with the cross-attention folded onto the image and with each layer's keys and values
    of the image cached (``VLM.fold_cross_attention``), interleaved."""
    times = {False: [], True: []}
    tokens = {}
    for r in range(rounds + 2):
        for f in (False, True) if r % 2 == 0 else (True, False):
            model.fold_cross_attention = f
            t0 = time.perf_counter()
            tokens[f] = run()
            if r >= 2:  # two warm-up rounds
                times[f].append(time.perf_counter() - t0)
    ratios = [p / q for p, q in zip(times[False], times[True])]
    model.fold_cross_attention = True
    print(f"{precision} {'greedy' if beam == 1 else f'beam {beam}'}, start + 20 steps, batch {len(tokens[False])}, "
          f"{rounds} rounds: keys and values cached {statistics.median(times[False]):.3f} s, folded "
          f"{statistics.median(times[True]):.3f} s; speed-up {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); same tokens: {tokens[False] == tokens[True]}"
          f"{'' if model._cross_fold(img) else ' (the fold does not apply here: only to fp32 with packed layers)'}")


if __name__ == "__main__":
    main()
