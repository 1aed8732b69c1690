"""How well a run's backbone features tell easy-VQA's shapes apart: small classifiers (probes) fitted
on the frozen features of the train images, scored on the validation and test images.

The frozen-backbone recipe (examples/easyvqa_frozen.sh) stays 0.2-0.55 points below full fine-tuning,
and its wrong answers are mostly circles and rectangles taken for each other
(benchmarks/vqa_errors.py). This asks whether that is in the features themselves: each probe sees
only the backbone's tokens (B, N, C) of one image, as the feature cache stores them, and must name
the image's one shape (circle, rectangle or triangle; the label comes from the image's "what shape
..." question, which 2,704 of the 3,600 train images and 651 of the 1,000 test images have). The
probes, from weakest to strongest:

- ``linear-mean``: a linear classifier on the tokens' mean;
- ``linear-mean+max``: a linear classifier on the tokens' mean and maximum side by side;
- ``mlp-tokens-max``: a two-layer MLP on every token, their maximum, a two-layer MLP on that.

Each has fixed settings and seed (no choice made on the scores). Compare a run whose backbone saw
easy-VQA's images in training (a full fine-tuning) with one whose backbone did not (the shapes run a
frozen recipe starts from):

    python benchmarks/probe_features.py runs/shapes-vqa-s0 runs/easyvqa-full-b32-s0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ("circle", "rectangle", "triangle")


def shape_labels(split) -> dict[str, int]:
    """image path -> index in SHAPES, from the split's "what shape ..." questions."""
    out = {}
    for q in split.questions:
        if q.question.startswith("what shape"):
            out[q.image] = SHAPES.index(q.answers[0])
    return out


def features(model, paths: list[str], batch: int = 250) -> torch.Tensor:
    """The backbone's tokens (B, N, C) of the images, fp32, under the run's eval transform."""
    from mmcli.data.images import load_image

    vlm = model.vlm
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([model.transform(load_image(p)) for p in paths[i:i + batch]]).to(model.device)
            out.append(vlm.vision.features(x.to(next(vlm.parameters()).dtype)).float().cpu())
    return torch.cat(out)


class Probe(nn.Module):
    def __init__(self, kind: str, channels: int, hidden: int = 256):
        super().__init__()
        self.kind = kind
        if kind == "linear-mean":
            self.head = nn.Linear(channels, len(SHAPES))
        elif kind == "linear-mean+max":
            self.head = nn.Linear(2 * channels, len(SHAPES))
        elif kind == "mlp-tokens-max":
            self.tokens = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, len(SHAPES)))
        else:
            raise ValueError(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, 3)
        if self.kind == "linear-mean":
            return self.head(x.mean(1))
        if self.kind == "linear-mean+max":
            return self.head(torch.cat([x.mean(1), x.amax(1)], dim=1))
        return self.head(self.tokens(x).amax(1))


def fit(kind: str, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int) -> Probe:
    torch.manual_seed(seed)
    probe = Probe(kind, x.shape[-1])
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(probe(x[idx]), y[idx]).backward()
            opt.step()
    return probe.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="mmcli run (or checkpoint) directories with an image backbone")
    ap.add_argument("--probes", default="linear-mean,linear-mean+max,mlp-tokens-max")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import mmcli
    from mmcli.data.easyvqa import load_easyvqa

    data = load_easyvqa()
    labels = {s: shape_labels(data.splits[s]) for s in ("train", "val", "test")}
    print(f"easy-VQA images with a shape question: train {len(labels['train'])}, val {len(labels['val'])}, "
          f"test {len(labels['test'])}; probes fitted on train, {a.epochs} epochs, seed {a.seed}")
    print(f"{'run':40s} {'probe':18s} {'train':>8s} {'val':>16s} {'test':>16s}")
    for run in a.runs:
        model = mmcli.load(run, device="cpu", precision="fp32")
        xs, ys = {}, {}
        for s, lab in labels.items():
            paths = sorted(lab)
            xs[s], ys[s] = features(model, paths), torch.tensor([lab[p] for p in paths])
        mu, sd = xs["train"].mean((0, 1)), xs["train"].std((0, 1)) + 1e-5  # per channel, from train
        xs = {s: (x - mu) / sd for s, x in xs.items()}
        for kind in a.probes.split(","):
            probe = fit(kind, xs["train"], ys["train"], a.seed, a.epochs)
            cells = []
            with torch.no_grad():
                for s in ("train", "val", "test"):
                    wrong = int((probe(xs[s]).argmax(1) != ys[s]).sum())
                    cell = f"{100 * (1 - wrong / len(ys[s])):6.2f}%"
                    cells.append(cell if s == "train" else f"{cell} ({wrong:2d} wrong)")
            print(f"{run:40s} {kind:18s} {cells[0]:>8s} {cells[1]:>16s} {cells[2]:>16s}")


if __name__ == "__main__":
    main()
