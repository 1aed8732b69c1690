"""AdamW step time: torch's fused kernel against its default (foreach) implementation, interleaved.

    python benchmarks/bench_optim.py --rounds 20

The parameters are those of two mmcli models (random weights, random gradients): the Flickr8k captioning
recipe's (small preset, resnet18 cut after stage 3, 1 text + 3 fusion layers, 2,500 pieces) and the
benchmarks/peer_hf.py shape (ViT 224/16 width 256, 4 + 4 layers, vocabulary 8,000). Each round times
one step of each implementation, the order alternating; the report gives the medians and the median
of the per-round ratios. mmcli's trainer takes the fused kernel (mmcli.train.make_optimizer).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def models():
    from mmcli.config import preset
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)
    yield "flickr8k recipe (small)", VLM(preset("small", drop_stages=1, text_layers=1, fusion_layers=3, vocab_size=2500))
    vit = {"embed_dim": 256, "depth": 4, "num_heads": 4}
    yield "peer_hf shape", VLM(preset("small", backbone="vit_base_patch16_224", backbone_args=vit, image_size=224,
                                      text_layers=0, fusion_layers=4, vocab_size=8000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    from mmcli.train import param_groups

    for name, model in models():
        opts = {}
        for impl in ("foreach", "fused"):
            opts[impl] = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, **{impl: True})
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        times = {k: [] for k in opts}
        for r in range(a.rounds + 2):
            for impl in (list(opts) if r % 2 == 0 else list(opts)[::-1]):
                t0 = time.perf_counter()
                opts[impl].step()
                if r >= 2:
                    times[impl].append(time.perf_counter() - t0)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        ratio = statistics.median(f / u for f, u in zip(times["foreach"], times["fused"]))
        print(f"{name} ({n:.1f}M parameters): foreach {1e3 * statistics.median(times['foreach']):.1f} ms, "
              f"fused {1e3 * statistics.median(times['fused']):.1f} ms; fused is {ratio:.2f}x faster "
              f"(median of {a.rounds} rounds, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
