"""easy-VQA training steps with repeated questions shared or not, full and frozen-cached, interleaved.

    python benchmarks/bench_vqa_step.py --rounds 20

The default ``mmcli finetune --task vqa`` session (small preset with the easy-VQA defaults: late
fusion, resnet18 cut after its second stage at 64 px, one text layer, 16 images with their ~10
questions a step, ``--precision auto``), built by the trainer itself on the built-in easy-VQA, and
the same with ``--freeze-backbone --feature-cache``. Each round times one step of each variant on
the same real batch (the round's, taken in the training order): the loss, backward, clipping and
the AdamW step, as the training loop runs them. "every text" turns off :meth:`VLM.distinct_texts`,
so every question runs through the text layer, as before the change; "shared" is mmcli now.
Reports medians and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def session(frozen: bool, out: Path, precision: str):
    from mmcli import train
    from mmcli.device import resolve_precision

    cfg = train.TrainConfig(task="vqa", data="easyvqa", out=str(out), preset="small", fusion="late",
                            model={"drop_stages": 2, "text_layers": 1, "image_size": 64}, batch_size=16,
                            max_steps=850, eval_every=425, lr=3e-4, precision=precision,
                            freeze_backbone=frozen, feature_cache=frozen)
    device = torch.device("cpu")
    s = train._build(cfg, train._Opened(), device, resolve_precision(cfg.precision, device))
    s.model.train()
    return cfg, s


def step(cfg, s, batch) -> float:
    from mmcli import train

    t = time.perf_counter()
    loss = train._batch_loss(s, batch)
    s.scaler.scale(loss).backward()
    train._optimizer_step(cfg, s)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    a = ap.parse_args()
    from mmcli import train

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {"full": session(False, Path(tmp) / "full", a.precision),
                    "frozen + cached": session(True, Path(tmp) / "frozen", a.precision)}
        cfg0, s0 = sessions["full"]
        order = train._epoch_batches(len(s0.train_set), cfg0, 0, s0.steps_per_epoch)[: a.warmup + a.rounds]
        loaders = {name: iter(train._loader(s, order, cfg, 0)) for name, (cfg, s) in sessions.items()}
        times: dict[str, list[float]] = {}
        questions = []
        for r in range(a.warmup + a.rounds):
            batches = {name: next(it).to(torch.device("cpu")) for name, it in loaders.items()}
            variants = [(name, shared) for name in sessions for shared in (True, False)]
            for name, shared in variants if r % 2 == 0 else variants[::-1]:
                cfg, s = sessions[name]
                if shared:
                    s.model.__dict__.pop("distinct_texts", None)  # the method: repeated questions once
                else:
                    s.model.distinct_texts = lambda ids, lengths: None  # every question
                t = step(cfg, s, batches[name])
                if r >= a.warmup:
                    times.setdefault(f"{name}, {'shared' if shared else 'every text'}", []).append(t)
            if r >= a.warmup:
                ids, lengths = batches["full"].text, batches["full"].text_len
                u = torch.unique(torch.cat([ids, lengths.unsqueeze(1)], 1), dim=0).shape[0]
                questions.append((u, ids.shape[0]))
            print(f"round {r + 1}/{a.warmup + a.rounds}{' (warm-up)' if r < a.warmup else ''}", file=sys.stderr)

    print(f"easy-VQA default session, precision {a.precision}, {torch.get_num_threads()} threads; "
          f"{a.rounds} rounds after {a.warmup} warm-up; distinct questions per batch: "
          f"{statistics.mean(u for u, _ in questions):.1f} of {statistics.mean(n for _, n in questions):.1f}")
    for name in sessions:
        shared, every = times[f"{name}, shared"], times[f"{name}, every text"]
        ratio = statistics.median(e / s for e, s in zip(every, shared))
        print(f"{name:16s} every text {1000 * statistics.median(every):7.1f} ms   shared "
              f"{1000 * statistics.median(shared):7.1f} ms   speed-up {ratio:.2f}x "
              f"({min(e / s for e, s in zip(every, shared)):.2f}-{max(e / s for e, s in zip(every, shared)):.2f})")
    full, cached = times["full, shared"], times["frozen + cached, shared"]
    print(f"frozen + cached against full, both shared: {statistics.median(f / c for f, c in zip(full, cached)):.2f}x")


if __name__ == "__main__":
    main()
