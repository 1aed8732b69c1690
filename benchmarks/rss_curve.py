"""Memory over a training run, from the ``rss_mb`` / ``rss_anon_mb`` of its metrics.jsonl rows.

    python benchmarks/rss_curve.py runs/flickr8k-pretrain-s0

Prints the resident memory (all, and anonymous: the heap, what a leak grows; the rest is code and
memory-mapped caches) at fractions of the run's steps, and the growth over its second half in MiB
per 1,000 steps: a flat run shows about 0 there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    a = ap.parse_args()
    rows = [r for r in map(json.loads, (a.run / "metrics.jsonl").read_text().splitlines())
            if "rss_mb" in r and "loss" in r]
    if len(rows) < 4:
        raise SystemExit(f"{a.run}: fewer than 4 log rows with memory (rss_mb) in metrics.jsonl")
    print(f"{a.run}: {len(rows)} log rows, steps {rows[0]['step']}-{rows[-1]['step']}")
    print(f"{'at':>6s} {'step':>6s} {'RSS MiB':>9s} {'anon MiB':>9s}")
    for frac in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        r = rows[min(len(rows) - 1, round(frac * (len(rows) - 1)))]
        print(f"{frac:6.0%} {r['step']:6d} {r['rss_mb']:9.1f} {r.get('rss_anon_mb', float('nan')):9.1f}")
    half = rows[len(rows) // 2 :]
    steps = max(1, half[-1]["step"] - half[0]["step"])
    for key in ("rss_mb", "rss_anon_mb"):
        if key in half[0] and key in half[-1]:
            print(f"second half: {key} {1000 * (half[-1][key] - half[0][key]) / steps:+.1f} MiB per 1,000 steps "
                  f"(max {max(r[key] for r in half):.1f})")


if __name__ == "__main__":
    main()
