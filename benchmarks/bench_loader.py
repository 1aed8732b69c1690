"""Images per second of mmcli's data loader on Flickr8k at 224 px, from JPEG files and from the cache.

    python benchmarks/bench_loader.py --images 1000 --rounds 3

Reads ../shared/data/flickr8k (train split). Each round iterates the same images
once through a DataLoader (batch 32, ImageNet-style eval transform: resize to 256,
center crop 224, normalise) decoding the JPEG files, then once reading the decoded
images from an ImageCache (memory-mapped uint8, built once before the rounds; its
build time is reported separately). Rounds alternate which goes first; the
report gives medians and the median of per-round ratios, and the CPU time other
processes used during each round.

    python benchmarks/bench_loader.py --vqa --rounds 5

``--vqa`` times the training batches of the easy-VQA default instead (grouped: 32 images, each with
all its questions), built as ``mmcli finetune --task vqa`` builds them (in the training process,
with the trainer's own dataset and loader), from the image files and from the frozen backbone's
feature cache (built first when missing), each with the questions' token ids and answer targets made
once per distinct text (:class:`mmcli.data.loaders.QuestionRows`) and made again for every question
(as before it), interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
sys.path.insert(0, str(ROOT))

CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def _proc_stat(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the machine, CPU seconds of this process and all its descendants,
    the DataLoader workers included, alive or not)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(v[:8]) - v[3] - v[4]) / tick
    stats = {p: st for p in os.listdir("/proc") if p.isdigit() and (st := _proc_stat(p)) is not None}
    children: dict[str, list[str]] = {}
    for p, st in stats.items():
        children.setdefault(st[1], []).append(p)  # field 4 of /proc/PID/stat: the parent pid
    own, todo = 0.0, [str(os.getpid())]
    while todo:
        p = todo.pop()
        st = stats.get(p)
        if st is not None:
            # utime, stime, and the children's that were waited for (fields 14-17)
            own += sum(int(x) for x in st[11:15]) / tick
        todo += children.get(p, [])
    return busy, own


def run_once(loader) -> float:
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--augment", choices=("none", "light"), default="none",
                    help="light: the training transform of --augment light (random-resized crop and flip)")
    ap.add_argument("--vqa", action="store_true", help="easy-VQA's training batches instead (see above)")
    args = ap.parse_args()
    if args.vqa:
        return vqa_main(args)

    import torch

    from mmcli.data.images import ImageCache, make_transform
    from mmcli.data.loaders import ImageDataset, ImageSource, LoaderConfig, make_loader
    from mmcli.data.readers import read_flickr8k

    torch.set_num_threads(1)  # the workers do the work; keep the main process from competing
    records = read_flickr8k(FLICKR).split("train").captions[: args.images]
    transform = make_transform(CONFIG, train=args.augment != "none", augment=args.augment)
    cfg = LoaderConfig(batch_size=args.batch_size, workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = ImageCache.build([r.image for r in records], size=256, out=Path(tmp) / "cache", progress=False)
        build_s = time.perf_counter() - t
        files = make_loader(ImageDataset(records, ImageSource(transform)), cfg)
        cached = make_loader(ImageDataset(records, ImageSource(transform, cache)), cfg)
        rates = {"files": [], "cache": []}
        others = []
        for r in range(args.rounds):
            b0, o0 = cpu_seconds()
            order = [("files", files), ("cache", cached)] if r % 2 == 0 else [("cache", cached), ("files", files)]
            for name, loader in order:
                rates[name].append(run_once(loader))
            b1, o1 = cpu_seconds()
            others.append(max(0.0, (b1 - b0) - (o1 - o0)))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()), file=sys.stderr)
    ratio = statistics.median(c / f for c, f in zip(rates["cache"], rates["files"]))
    print(f"\nFlickr8k train, {len(records)} images, 224 px, batch {args.batch_size}, {args.workers} workers, "
          f"augment {args.augment}, {args.rounds} rounds")
    print("| source | images/s (median) |")
    print("|---|---|")
    print(f"| JPEG files (decode + resize + crop + normalise) | {statistics.median(rates['files']):.0f} |")
    print(f"| ImageCache (memory-mapped 256 px uint8) | {statistics.median(rates['cache']):.0f} |")
    print(f"\ncache / files: {ratio:.1f}x (median of per-round ratios); cache build: {build_s:.1f} s "
          f"({len(records) / build_s:.0f} img/s, once)")
    print(f"CPU seconds used by other processes in each round: {', '.join(f'{x:.2f}' for x in others)}")


def vqa_main(args) -> None:
    import torch

    from mmcli import train
    from mmcli.data.loaders import QuestionRows
    from mmcli.device import resolve_precision

    device = torch.device("cpu")
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("image files", "feature cache"):
            frozen = source == "feature cache"
            cfg = train.TrainConfig(task="vqa", data="easyvqa", out=str(Path(tmp) / source), preset="small",
                                    fusion="late", model={"drop_stages": 2, "text_layers": 1, "image_size": 64},
                                    batch_size=args.batch_size, freeze_backbone=frozen, feature_cache=frozen)
            s = train._build(cfg, train._Opened(), device, resolve_precision(cfg.precision, device))
            ds = s.train_set
            off = QuestionRows(ds.tokenizer, ds.answer_vocab, ds.max_len)
            off.MAX_TEXTS = off.MAX_BYTES = 0  # nothing kept: every question tokenized, every target filled
            sessions[source] = (cfg, s, {"made once": ds.rows, "every question": off})
        n = 40
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds + 1):  # the first round warms up (and fills the kept rows)
            for source, (cfg, s, variants) in sessions.items():
                order = train._epoch_batches(len(s.train_set), cfg, r, s.steps_per_epoch)[:n]
                names = list(variants) if r % 2 == 0 else list(variants)[::-1]
                for name in names:
                    s.train_set.rows = variants[name]
                    t = time.perf_counter()
                    for _ in train._loader(s, order, cfg, r):
                        pass
                    if r:
                        times.setdefault((source, name), []).append(1e3 * (time.perf_counter() - t) / n)
            print(f"round {r + 1}/{args.rounds + 1}{' (warm-up)' if not r else ''}", file=sys.stderr)
    print(f"\neasy-VQA training batches of {args.batch_size} images with all their questions, built in the "
          f"training process; {args.rounds} rounds of {n} batches after 1, {torch.get_num_threads()} threads")
    print("| images from | questions made again for every question | made once per distinct text | speed-up |")
    print("|---|---|---|---|")
    for source in sessions:
        every, once = times[source, "every question"], times[source, "made once"]
        ratio = statistics.median(a / b for a, b in zip(every, once))
        print(f"| {source} | {statistics.median(every):.1f} ms a batch | {statistics.median(once):.1f} ms | "
              f"{ratio:.2f}x ({min(a / b for a, b in zip(every, once)):.2f}-"
              f"{max(a / b for a, b in zip(every, once)):.2f}) |")


if __name__ == "__main__":
    main()
