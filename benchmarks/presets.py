"""Parameter counts and forward FLOPs per sample of each model preset and fusion mode.

    python benchmarks/presets.py

FLOPs are counted by torch's FlopCounterMode on one sample at full text length
(captioning: image + 32 text tokens through the LM path; VQA for late fusion).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from mmcli.config import PRESETS, preset
    from mmcli.model.vlm import VLM, count_parameters, flops_per_sample

    torch.manual_seed(0)
    print("| preset | backbone | image px | width | fusion | parameters (M) | backbone (M) | GFLOPs / sample |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cfg in PRESETS.items():
        for fusion in ("late", "concat", "cross"):
            model = VLM(preset(name, fusion=fusion, n_answers=100 if fusion == "late" else 0)).eval()
            task = "vqa" if fusion == "late" else "caption"
            total = count_parameters(model) / 1e6
            backbone = count_parameters(model.vision.backbone) / 1e6
            gflops = flops_per_sample(model, task) / 1e9
            print(f"| {name} | {cfg.backbone} | {cfg.image_size} | {cfg.dim} | {fusion} ({task}) | {total:.1f} | {backbone:.1f} | {gflops:.2f} |")


if __name__ == "__main__":
    main()
