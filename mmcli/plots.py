"""``curves.png``: training loss and the validation metric of a run, from its ``metrics.jsonl``.

matplotlib is an optional extra (``pip install 'mmcli[plot]'``): without it
:func:`write_curves` returns None and the caller says how to get the picture.
Read-only on the run's files; the PNG is written atomically.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) of a ``metrics.jsonl`` (none when it does not exist: a run
    stopped before its first log line); torn or foreign lines are skipped."""
    train, val = [], []
    if not Path(path).is_file():
        return train, val
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        if "loss" in row:
            train.append(row)
        elif isinstance(row.get("val"), dict) and row.get("split") is None:
            val.append(row)
    return train, val


def write_curves(run_dir: str | os.PathLike, metric: str, out: str | os.PathLike | None = None) -> Path | None:
    """Plot loss (left) and the validation ``metric`` (right) against steps; None without matplotlib.

    A resumed run appends to ``metrics.jsonl``: the last row written for a step wins.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .fileio import atomic_write_bytes

    run_dir = Path(run_dir)
    train, val = read_metrics(run_dir / "metrics.jsonl")
    loss = dict(sorted({r["step"]: r["loss"] for r in train}.items()))
    scores = dict(sorted({r["step"]: r["val"][metric] for r in val if metric in r["val"]}.items()))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    left.plot(list(loss), list(loss.values()), color="tab:blue", linewidth=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot(list(scores), list(scores.values()), color="tab:orange", marker="o", markersize=3)
    if scores:
        best = max(scores, key=scores.get)
        right.annotate(f"best {scores[best]:.4g} @ {best}", (best, scores[best]), textcoords="offset points",
                       xytext=(0, 6), ha="center", fontsize=8)
    right.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    target = Path(out) if out is not None else run_dir / "curves.png"
    atomic_write_bytes(target, buf.getvalue())
    return target


if __name__ == "__main__":  # python -m mmcli.plots RUN_DIR [METRIC]: (re)draw a run's curves.png
    import sys

    run = Path(sys.argv[1])
    saved = json.loads((run / "config.json").read_text(encoding="utf-8")).get("train", {})
    from .train import TrainConfig, selection_metric

    name = sys.argv[2] if len(sys.argv) > 2 else selection_metric(TrainConfig.from_dict(saved))
    out = write_curves(run, name)
    print(out if out else "matplotlib is not installed: pip install 'mmcli[plot]'")
