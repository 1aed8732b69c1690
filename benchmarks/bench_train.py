"""Training and generation speed, model FLOP utilisation and peak memory of mmcli's presets.

    python benchmarks/bench_train.py --preset small                      # one preset: samples/s, MFU
    python benchmarks/bench_train.py --preset base --device cuda         # on a GPU
    python benchmarks/bench_train.py --memory                            # every preset in its own process:
                                                                         #   peak RSS of training and generation
    python benchmarks/bench_train.py --preset small --frozen-compare     # full vs frozen backbone vs frozen +
                                                                         #   cached features, interleaved
    python benchmarks/bench_train.py --preset base --precision fp32 --pack-compare
                                                                         # F.linear vs oneDNN's linear layers

A training step is what ``mmcli finetune --task caption`` runs: ``mmcli.train.caption_loss``
(cross-attention fusion), backward, gradient clipping, the trainer's AdamW, and on a CPU oneDNN's
linear layers as the trainer swaps them in (mmcli/model/packed.py). The batch is synthetic:
``--batch`` images at the preset's size with one caption of ``--text-len`` tokens each (random
weights and pixels: speed does not depend on them; nothing is downloaded). FLOPs are counted by
torch's FlopCounterMode over one real step (forward and backward: a frozen backbone has no
backward); MFU is that over the step time, against the best matmul rate (2048^3) in the same
precision measured between the steps. Generation is greedy decoding of ``--text-len`` tokens for
the batch (end-of-sequence disabled) with the weights in the chosen precision, as ``mmcli
caption --precision`` runs it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
# the CUDA-synchronised wall time of one call, the matmul ceiling, and the caption training step
from peer_hf import as_mmcli_runs_it, matmul_ceiling, mmcli_train_step, timed  # noqa: E402


def build(a, device):
    from mmcli.config import preset
    from mmcli.model.vlm import VLM
    from mmcli.train import make_optimizer

    torch.manual_seed(0)
    size = {"image_size": a.image_size} if a.image_size else {}
    model = VLM(preset(a.preset, fusion="cross", vocab_size=a.vocab, max_text_len=a.text_len + 1,
                       freeze_backbone=a.mode != "full", **size)).to(device)
    as_mmcli_runs_it(a, model, device)  # on a CPU, oneDNN's linear layers, as the trainer swaps them in
    model.train()
    opt = make_optimizer(model, 1e-4, 0.05, device)
    g = torch.Generator().manual_seed(0)
    S = model.cfg.image_size
    images = torch.randn(a.batch, 3, S, S, generator=g).to(device)
    ids = torch.randint(3, a.vocab, (a.batch, a.text_len + 1), generator=g).to(device)
    ids[:, 0] = 1
    return model, opt, SimpleNamespace(images=images, text=ids, text_len=torch.full_like(ids[:, 0], ids.shape[1]),
                                       text_image=None)


def features_of(model, images, dtype) -> torch.Tensor:
    """What a feature cache holds for these images: the frozen backbone's tokens (stored in bf16)."""
    with torch.no_grad(), _autocast(images.device, dtype):
        return model.vision.features(images).to(torch.bfloat16).float()


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def step_flops(model, opt, batch, dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        mmcli_train_step(model, opt, batch, dtype)
    return int(counter.get_total_flops())


@torch.no_grad()
def generate(model, images, n: int) -> None:
    from mmcli.model.generate import greedy

    out = greedy(model, images, 1, 2, max_len=n, min_len=n)
    assert all(len(x) == n for x in out)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(a) -> dict:
    """One preset and mode: training samples/s and MFU (median of the steps), generation images/s."""
    from mmcli.device import resolve_precision

    device = torch.device(a.device)
    dtype = resolve_precision(a.precision, device)
    model, opt, batch = build(a, device)
    if a.mode == "cached":
        batch.images = features_of(model, batch.images, dtype)
    for _ in range(a.warmup):
        mmcli_train_step(model, opt, batch, dtype)
    flops = step_flops(model, opt, batch, dtype)
    times, ceils = [], []
    for _ in range(a.steps):
        times.append(timed(lambda: mmcli_train_step(model, opt, batch, dtype), device))
        ceils.append(matmul_ceiling(dtype or torch.float32, device))
    out = {"preset": a.preset, "image_size": model.cfg.image_size, "mode": a.mode, "precision": str(dtype or torch.float32).replace("torch.", ""),
           "batch": a.batch, "train_samples_per_s": a.batch / statistics.median(times),
           "step_tflop": flops / 1e12, "mfu": statistics.median(flops / t / c for t, c in zip(times, ceils)),
           "ceiling_tflops": statistics.median(ceils) / 1e12, "train_peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["train_peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def generation(a) -> dict:
    """Greedy generation images/s with the weights in the chosen precision, and the peak RSS."""
    from mmcli.device import resolve_precision

    device = torch.device(a.device)
    dtype = resolve_precision(a.precision, device) or torch.float32
    model, _, batch = build(a, device)
    model = model.to(dtype).eval()
    images = batch.images.to(dtype)
    for _ in range(a.warmup):
        generate(model, images, a.text_len)
    times = [timed(lambda: generate(model, images, a.text_len), device) for _ in range(a.steps)]
    return {"preset": a.preset, "precision": str(dtype).replace("torch.", ""), "batch": a.batch,
            "generate_images_per_s": a.batch / statistics.median(times), "generate_peak_rss_mb": peak_rss_mb()}


def frozen_compare(a) -> None:
    """Full training, a frozen backbone, and a frozen backbone fed cached features, interleaved step by step."""
    from mmcli.device import resolve_precision

    device = torch.device(a.device)
    dtype = resolve_precision(a.precision, device)
    runs = {}
    for mode in ("full", "frozen", "cached"):
        model, opt, batch = build(argparse.Namespace(**{**vars(a), "mode": mode}), device)
        if mode == "cached":
            batch.images = features_of(model, batch.images, dtype)
        runs[mode] = (model, opt, batch)
    _interleaved(a, runs, dtype, device)


def pack_compare(a) -> None:
    """The same model (the same initial weights) with oneDNN's linear layers, as the trainer runs it on a
    CPU, and with F.linear, interleaved step by step."""
    from mmcli.device import resolve_precision

    device = torch.device(a.device)
    dtype = resolve_precision(a.precision, device)
    runs = {name: build(argparse.Namespace(**{**vars(a), "pack": pack}), device)
            for name, pack in (("F.linear", False), ("oneDNN", True))}
    _interleaved(a, runs, dtype, device)


def _interleaved(a, runs: dict, dtype, device) -> None:
    """Training steps of each run in turn (the order alternating), then rates and the median of the
    per-round ratios against the first run."""
    times = {m: [] for m in runs}
    for r in range(a.warmup + a.steps):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for m in order:
            t = timed(lambda: mmcli_train_step(*runs[m], dtype), device)
            if r >= a.warmup:
                times[m].append(t)
    first = next(iter(runs))
    print(f"{a.preset} preset, batch {a.batch}, {str(dtype or torch.float32).replace('torch.', '')}, {a.steps} rounds")
    for m in runs:
        ratios = [f / t for f, t in zip(times[first], times[m])]
        print(f"  {m:9s} {a.batch / statistics.median(times[m]):8.1f} samples/s  {statistics.median(ratios):5.2f}x "
              f"{first} ({min(ratios):.2f}-{max(ratios):.2f})")


def memory(a) -> None:
    """Each preset's training and generation in a fresh process (peak RSS does not go down)."""
    rows = []
    for name in a.presets.split(","):
        for what in ("train", "generate"):
            cmd = [sys.executable, __file__, "--preset", name, "--precision", a.precision, "--batch", str(a.batch),
                   "--image-size", str(a.image_size),
                   "--steps", "3", "--warmup", "1", "--device", a.device, "--json-line"]
            if what == "generate":
                cmd.append("--generate")
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| preset | precision | batch | training samples/s | training peak RSS (MiB) | generation images/s "
          "| generation peak RSS (MiB) |\n|---|---|---|---|---|---|---|")
    for train, gen in zip(rows[::2], rows[1::2]):
        print(f"| {train['preset']} | {train['precision']} | {train['batch']} | {train['train_samples_per_s']:.1f} "
              f"| {train['train_peak_rss_mb']:.0f} | {gen['generate_images_per_s']:.1f} "
              f"| {gen['generate_peak_rss_mb']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    ap.add_argument("--presets", default="tiny,small,base", help="With --memory: the presets to measure.")
    ap.add_argument("--mode", default="full", choices=("full", "frozen", "cached"),
                    help="full training, a frozen backbone, or a frozen backbone fed cached features.")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=0, help="Image side (0: the preset's).")
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=5, help="Timed steps (or rounds).")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--generate", action="store_true", help="Time greedy generation instead of training.")
    ap.add_argument("--memory", action="store_true", help="Peak RSS of every preset, each in its own process.")
    ap.add_argument("--frozen-compare", action="store_true", help="full / frozen / cached, interleaved.")
    ap.add_argument("--pack-compare", action="store_true",
                    help="F.linear / oneDNN's linear layers (mmcli/model/packed.py, the trainer's on a CPU), interleaved.")
    ap.add_argument("--json-line", action="store_true", help="Print one JSON line (for --memory).")
    a = ap.parse_args()
    if a.memory:
        return memory(a)
    if a.frozen_compare:
        return frozen_compare(a)
    if a.pack_compare:
        return pack_compare(a)
    out = generation(a) if a.generate else one(a)
    if a.json_line:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")


if __name__ == "__main__":
    main()
