"""An mmcli command on a shapes set widened with what easy-VQA shows and the built-in set does not.

    python benchmarks/wide_shapes.py finetune --task vqa --data shapes:8000:64 --preset small \\
        --fusion late --model drop_stages=2,text_layers=1,image_size=64 --batch-size 16 \\
        --max-steps 3000 --eval-every 1000 --seed 0 --out runs/wide-shapes-vqa-s0

An experiment for the frozen-backbone question of RESULTS.md ("A frozen backbone with cached
features"): the frozen easy-VQA runs from a VQA run on the shapes set mistake rectangles for circles
and gray for black, which the shapes set never shows (no rectangle; no teal, brown, gray or black).
Does a pretraining set that shows them close the gap to the full fine-tuning? This script runs the
given mmcli command with the shapes set's kinds and colours widened in memory: a rectangle (twice as
wide as it is tall) and the four colours. Its images go under ``<cache root>/wide-shapes/`` (the
built-in set's cache folder names do not tell the two apart), where ``<cache root>`` is
``$MMCLI_CACHE`` or ``~/.cache/mmcli``. The easy-VQA fine-tuning from the run is plain ``mmcli
finetune --task vqa --init runs/wide-shapes-vqa-s0 ...``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDER_COLORS = {"gray": (128, 128, 128), "black": (30, 30, 30), "teal": (20, 130, 130), "brown": (135, 85, 40)}


def widen() -> None:
    """Add the rectangle and the four colours to :mod:`mmcli.data.shapes` (its module globals, which
    its scene, text and drawing functions read at each call)."""
    from mmcli.data import images, shapes

    os.environ["MMCLI_CACHE"] = str(images.cache_root() / "wide-shapes")
    shapes.KINDS = shapes.KINDS + ("rectangle",)
    shapes.COLORS = {**shapes.COLORS, **WIDER_COLORS}
    shapes.COLOR_NAMES = tuple(shapes.COLORS)
    outline = shapes._outline

    def wider_outline(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
        if kind != "rectangle":
            return outline(kind, cx, cy, r)
        w, h = r, 0.55 * r
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]

    shapes._outline = wider_outline


if __name__ == "__main__":
    widen()
    from mmcli.cli import main

    sys.exit(main(sys.argv[1:]))
