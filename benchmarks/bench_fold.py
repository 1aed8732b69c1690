"""One cross-attention layer folded onto its context or projecting the context's keys and values.

    python benchmarks/bench_fold.py
    python benchmarks/bench_fold.py --precision fp32 --rounds 5
    python benchmarks/bench_fold.py --device cuda     # (mmcli folds on a CPU only: measured there)

For each shape below, one ``Attention(cross=True)`` layer's forward and backward (bf16 autocast by
default) on random inputs, with ``Attention.fold_context`` on and forced (``_folded_attend``: each
head's query taken into the context's space, the context averaged per query and head) and off (the
context's keys and values projected, then attention), alternating; the median of ``--steps`` calls a
variant, and of ``--rounds`` such pairs. Beside each speed-up: how many times fewer FLOPs the folded
path takes (``Attention.fold_flops``, the count ``fold_pays`` weighs) and whether mmcli folds there (``FOLD_MARGIN``).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (width, heads, context tokens, query rows, context rows, query tokens): the peer shape, longer
# queries, the Flickr8k recipe (five captions an image, so the folded path gathers the image per caption),
# and the base preset's width
SHAPES = [(256, 4, 197, 32, 32, 20), (256, 4, 197, 32, 32, 30), (256, 4, 197, 32, 32, 40), (256, 4, 197, 32, 32, 60),
          (256, 4, 197, 32, 32, 100),
          (256, 4, 64, 160, 32, 16), (256, 4, 64, 160, 32, 8), (512, 8, 197, 32, 32, 20), (512, 8, 197, 160, 32, 20)]


def median_time(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    a = ap.parse_args()
    from mmcli.model.transformer import Attention

    torch.manual_seed(0)
    device = torch.device(a.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if a.precision == "bf16" else nullcontext
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{a.precision}, {where}; forward and backward of one cross-attention layer")
    print(f"{'width':>5s} {'heads':>5s} {'tokens':>6s} {'rows':>5s} {'images':>6s} {'query':>5s} "
          f"{'FLOPs, projected / folded':>26s} {'folds':>5s}  speed-up folded (per round)")
    for d, h, n, rows, contexts, t in SHAPES:
        attn = Attention(d, h, cross=True).to(device)
        x = torch.randn(rows, t, d, device=device, requires_grad=True)
        context = torch.randn(contexts, n, d, device=device, requires_grad=True)
        index = None if rows == contexts else torch.arange(contexts, device=device).repeat_interleave(rows // contexts)
        folds = attn.fold_pays(rows, t, contexts, n, device.type)
        projected, folded = attn.fold_flops(rows, t, contexts, n)
        fewer = projected / folded

        def step(fold: bool) -> None:
            attn.fold_pays = lambda *_: fold  # (this instance: forced either way)
            with autocast():
                y = attn(x, context=context, context_index=index)
            y.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for fold in (False, True, False, True):  # warm-up
            step(fold)
        ratios = []
        for r in range(a.rounds):
            pair = {}
            for fold in (False, True) if r % 2 == 0 else (True, False):
                pair[fold] = median_time(lambda: step(fold), a.steps)
            ratios.append(pair[False] / pair[True])
        print(f"{d:5d} {h:5d} {n:6d} {rows:5d} {contexts:6d} {t:5d} {fewer:25.2f}x {'yes' if folds else 'no':>5s}  "
              f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
