"""Under load: `mmcli caption` over many images with bad ones mixed in, and `mmcli score` at
growing sizes. Each command runs in a fresh process whose resident memory is sampled while it
runs; the report gives its peak, and for score the time and memory per image at each size.

    python benchmarks/load_test.py caption --images 20000 --bad 300   # trains a tiny model first
    python benchmarks/load_test.py score --sizes 10000,30000,100000

caption: makes N small PNGs (random colour scenes, 64 px) plus B bad files (zero bytes,
truncated PNGs, text named .jpg, a decompression bomb header) in one folder, and checks that
every good image gets a caption in the --jsonl file, every bad one is named in a warning, and
the count line says so. score: synthetic predictions and five references per image from a
1,000-word vocabulary; time and peak memory should grow linearly with the number of images.
Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sampled(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall time, exit code, output and RSS samples (MiB, every 0.2 s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    samples: list[tuple[float, float]] = []

    def sample():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            samples.append((time.perf_counter() - t0, int(line.split()[1]) / 1024))
            except OSError:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    return {"seconds": time.perf_counter() - t0, "code": proc.returncode, "out": out, "err": err,
            "rss": samples, "peak_mib": max((m for _, m in samples), default=0.0)}


# ---------------------------------------------------------------------------- caption


def _bomb_png() -> bytes:
    """A valid PNG signature and header claiming 100,000 x 100,000 pixels, then a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_images(folder: Path, n_good: int, n_bad: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n_good readable PNGs and n_bad unreadable files, shuffled names; (good stems, bad names)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = [], []
    kinds = ["zero", "truncated", "text", "bomb"]
    slots = ["g"] * n_good + ["b"] * n_bad
    rng.shuffle(slots)
    one = Image.new("RGB", (64, 64))
    for i, slot in enumerate(slots):
        name = f"img{i:06d}"
        if slot == "g":
            img = one.copy()
            d = ImageDraw.Draw(img)
            d.rectangle([0, 0, 63, 63], fill=tuple(rng.randrange(256) for _ in range(3)))
            x, y = rng.randrange(40), rng.randrange(40)
            d.ellipse([x, y, x + 20, y + 20], fill=tuple(rng.randrange(256) for _ in range(3)))
            img.save(folder / f"{name}.png", compress_level=1)
            good.append(name)
        else:
            kind = kinds[len(bad) % len(kinds)]
            path = folder / f"{name}.{'jpg' if kind == 'text' else 'png'}"
            if kind == "zero":
                path.write_bytes(b"")
            elif kind == "truncated":
                full = folder / f".{name}.full.png"
                Image.new("RGB", (64, 64), (200, 10, 10)).save(full)
                path.write_bytes(full.read_bytes()[:60])
                full.unlink()
            elif kind == "text":
                path.write_text("this is not an image\n")
            else:
                path.write_bytes(_bomb_png())
            bad.append(path.name)
    return good, bad


def train_tiny(out: Path) -> Path:
    cmd = [sys.executable, "-m", "mmcli", "finetune", "--task", "caption", "--preset", "tiny",
           "--data", "shapes:200", "--max-steps", "20", "--eval-every", "20", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training the tiny model failed:\n{r.stderr}")
    return out


def caption_load(args) -> bool:
    with tempfile.TemporaryDirectory(prefix="mmcli-load-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        good, bad = make_images(tmp / "images", args.images, args.bad)
        print(f"made {len(good)} images and {len(bad)} bad files in {time.perf_counter() - t:.1f} s")
        model = Path(args.model) if args.model else train_tiny(tmp / "model")
        out = tmp / "captions.jsonl"
        r = run_sampled([sys.executable, "-m", "mmcli", "caption", str(tmp / "images"), "--model", str(model),
                         "--jsonl", str(out), "--batch-size", str(args.batch_size)])
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        captioned = {row["image_id"] for row in rows}
        warned = {name for name in bad if name in r["err"]}
        quarter = [m for t_, m in r["rss"] if t_ >= r["seconds"] / 4]
        print(f"mmcli caption: exit {r['code']}, {r['seconds']:.1f} s, {len(rows) / r['seconds']:.0f} images/s, "
              f"peak RSS {r['peak_mib']:.0f} MiB (from the first quarter of the run on: "
              f"{min(quarter, default=0):.0f}-{max(quarter, default=0):.0f} MiB)")
        print(f"  captioned {len(captioned)} of {len(good)} good images; {len(warned)} of {len(bad)} bad files "
              f"named on stderr; last line: {r['err'].strip().splitlines()[-1] if r['err'].strip() else ''}")
        ok = (r["code"] == 0 and captioned == set(good) and len(rows) == len(good) and warned == set(bad)
              and f"{len(bad)} skipped" in r["err"] and "Traceback" not in r["err"])
        print("caption load check:", "PASS" if ok else "FAIL")
        return ok


# ---------------------------------------------------------------------------- score


def score_files(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(1000)]

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))

    preds = [{"image_id": i, "caption": sentence()} for i in range(n)]
    anns = [{"image_id": i, "id": 5 * i + j, "caption": sentence()} for i in range(n) for j in range(5)]
    refs = {"images": [{"id": i} for i in range(n)], "annotations": anns}
    p, r = folder / f"preds{n}.json", folder / f"refs{n}.json"
    p.write_text(json.dumps(preds))
    r.write_text(json.dumps(refs))
    return p, r


def score_load(args) -> bool:
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmcli-score-") as tmp:
        for n in sizes:
            p, r = score_files(Path(tmp), n)
            res = run_sampled([sys.executable, "-m", "mmcli", "score", str(p), str(r), "--json"])
            if res["code"]:
                print(f"mmcli score failed at {n} images:\n{res['err']}")
                return False
            rows.append((n, res["seconds"], res["peak_mib"]))
            print(f"{n:>7} images: {res['seconds']:6.1f} s ({1e6 * res['seconds'] / n:.0f} us/image), "
                  f"peak RSS {res['peak_mib']:.0f} MiB")
    (n0, t0, m0), (n1, t1, m1) = rows[0], rows[-1]
    time_ratio, size_ratio = t1 / t0, n1 / n0
    # linear: the largest size costs at most ~1.5x the smallest one's per-image time (start-up
    # makes small sizes relatively dearer, so super-linear growth shows as a ratio above this)
    ok = time_ratio <= 1.5 * size_ratio
    print(f"time x{time_ratio:.1f} for x{size_ratio:.0f} images; memory {m0:.0f} -> {m1:.0f} MiB "
          f"(x{m1 / m0:.1f}); linear-time check: {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("caption")
    c.add_argument("--images", type=int, default=20000)
    c.add_argument("--bad", type=int, default=300)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--model", help="a run directory (default: train a tiny shapes captioner first)")
    s = sub.add_parser("score")
    s.add_argument("--sizes", default="10000,30000,100000")
    args = ap.parse_args()
    ok = caption_load(args) if args.what == "caption" else score_load(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
