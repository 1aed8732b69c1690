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

    python benchmarks/bench_vqa_step.py --rounds 20 --compare tokenizer

compares the tokenizers instead, both with the repeated questions shared: each session is built
twice, once with the questions' tokenizer as the trainer now trains it (``auto``: BPE on easy-VQA,
whole words, about 7 tokens a question) and once with SentencePiece's unigram model (what the
trainer used before: letters and fragments, about 14 tokens), and each round's batch holds the
same questions and images for all of them.

    python benchmarks/bench_vqa_step.py --rounds 20 --compare pool

compares the image's attention pool (late fusion pools the image tokens with one learned query):
"projected" runs it as the attention layer it is, projecting every image token's key and value;
"folded" is :meth:`Attention.pool`, the key and value weights folded into the query and the output,
as mmcli now runs it (both with the repeated questions shared).

    python benchmarks/bench_vqa_step.py --rounds 20 --compare packing

compares the text layer on the real tokens alone ("packed", as mmcli now runs it: ``VLM.encode_text``
with :class:`Rows`, the pads' norms, projections and MLP skipped) with the whole padded batch
("padded", ``VLM.pack_text = False``), both with the repeated questions shared. ``--init RUN`` builds
the sessions as ``mmcli finetune --init RUN`` does (that run's model and tokenizer, a new answer
head), e.g. the shapes VQA run of examples/easyvqa_frozen.sh, whose tokenizer spells easy-VQA's
colours in pieces (about 9.8 tokens a question, padded to 16).

    python benchmarks/bench_vqa_step.py --init runs/shapes-vqa-s0 --image-size 192 --batch-size 32

builds the sessions of examples/easyvqa_frozen.sh's last two commands: the init run's model at 192 px
(``mmcli finetune --init RUN --model image_size=192``), where the backbone is most of a full step.

    python benchmarks/bench_vqa_step.py --profile

profiles 10 steps of each session (``auto`` tokenizer, questions shared) after the timed rounds:
torch.profiler's most expensive ops, grouped by input shape.
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


def session(frozen: bool, out: Path, precision: str, tokenizer: str = "auto", init: str | None = None,
            batch_size: int = 16, image_size: int | None = None):
    from mmcli import train
    from mmcli.device import resolve_precision
    from mmcli.tokenizer import Tokenizer

    model = {} if init else {"drop_stages": 2, "text_layers": 1, "image_size": 64}
    if image_size:
        model["image_size"] = image_size
    cfg = train.TrainConfig(task="vqa", data="easyvqa", out=str(out), preset="small", fusion=None if init else "late",
                            model=model, init=init, batch_size=batch_size,
                            max_steps=850, eval_every=425, lr=3e-4, precision=precision,
                            freeze_backbone=frozen, feature_cache=frozen)
    device = torch.device("cpu")
    trained = Tokenizer.train.__func__
    Tokenizer.train = classmethod(lambda cls, texts, vocab_size=8000, model_type=tokenizer, lowercase=True:
                                  trained(cls, texts, vocab_size, model_type, lowercase))
    try:
        opened = train._open_run(cfg, out)  # (a fresh directory: the --init checkpoint, if any, opened)
        s = train._build(cfg, opened, device, resolve_precision(cfg.precision, device))
    finally:
        Tokenizer.train = classmethod(trained)
    s.model.train()
    return cfg, s


def step(cfg, s, batch) -> float:
    from mmcli import train

    t = time.perf_counter()
    loss = train._batch_loss(s, batch)
    s.scaler.scale(loss).backward()
    train._optimizer_step(cfg, s)
    return time.perf_counter() - t


def set_pool(attn, folded: bool) -> None:
    """The attention pool as mmcli runs it (``Attention.pool``, folded) or as the attention layer it is."""
    if folded:
        attn.__dict__.pop("pool", None)
    else:
        attn.pool = lambda query, context: attn(query.expand(context.shape[0], -1, -1), context=context)[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--compare", default="sharing", choices=("sharing", "tokenizer", "pool", "packing"),
                    help="sharing: repeated questions once or every question; tokenizer: auto against unigram; "
                    "pool: the image's attention pool folded or projecting every token; packing: the text "
                    "layer on the real tokens alone or on the padded batch")
    ap.add_argument("--init", help="build the sessions from this run, as mmcli finetune --init does")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, help="the model at this image size (with --init: the init run's model, "
                    "its image positions resampled, as mmcli finetune --init RUN --model image_size=N)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 10 more steps of each session (ops by input shape)")
    a = ap.parse_args()
    from mmcli import train

    tokenizers = ("auto", "unigram") if a.compare == "tokenizer" else ("auto",)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {(kind, tok): session(kind != "full", Path(tmp) / f"{kind}-{tok}", a.precision, tok, a.init,
                                         a.batch_size, a.image_size)
                    for kind in ("full", "frozen + cached") for tok in tokenizers}
        cfg0, s0 = sessions["full", "auto"]
        n_batches = a.warmup + a.rounds + (10 if a.profile else 0)
        order = train._epoch_batches(len(s0.train_set), cfg0, 0, s0.steps_per_epoch)[:n_batches]
        loaders = {key: iter(train._loader(s, order, cfg, 0)) for key, (cfg, s) in sessions.items()}
        # (pool: True = folded; packing: True = packed)
        shares = (True, False) if a.compare in ("sharing", "pool", "packing") else (True,)
        times: dict[tuple, list[float]] = {}
        questions = {tok: [] for tok in tokenizers}
        for r in range(a.warmup + a.rounds):
            batches = {key: next(it).to(torch.device("cpu")) for key, it in loaders.items()}
            variants = [(key, shared) for key in sessions for shared in shares]
            for key, shared in variants if r % 2 == 0 else variants[::-1]:
                cfg, s = sessions[key]
                if a.compare == "pool":
                    set_pool(s.model.pool_attn, folded=shared)
                elif a.compare == "packing":
                    s.model.pack_text = shared
                elif shared:
                    s.model.__dict__.pop("distinct_texts", None)  # the method: repeated questions once
                else:
                    s.model.distinct_texts = lambda ids, lengths: None  # every question
                t = step(cfg, s, batches[key])
                if r >= a.warmup:
                    times.setdefault((*key, shared), []).append(t)
            if r >= a.warmup:
                for tok in tokenizers:
                    ids, lengths = batches["full", tok].text, batches["full", tok].text_len
                    u = torch.unique(torch.cat([ids, lengths.unsqueeze(1)], 1), dim=0).shape[0]
                    questions[tok].append((u, ids.shape[0], float(lengths.float().mean()), ids.shape[1]))
            print(f"round {r + 1}/{a.warmup + a.rounds}{' (warm-up)' if r < a.warmup else ''}", file=sys.stderr)
        if a.profile:
            for kind in ("full", "frozen + cached"):
                cfg, s = sessions[kind, "auto"]
                # mmcli's own path, whichever variant the last round left: questions shared, pool folded, packed
                s.model.__dict__.pop("distinct_texts", None)
                if a.compare == "pool":
                    set_pool(s.model.pool_attn, folded=True)
                s.model.__dict__.pop("pack_text", None)
                steps = [next(loaders[kind, "auto"]).to(torch.device("cpu")) for _ in range(10)]
                cpu = [torch.profiler.ProfilerActivity.CPU]
                with torch.profiler.profile(activities=cpu, record_shapes=True) as prof:
                    for batch in steps:
                        step(cfg, s, batch)
                print(f"{kind}: 10 steps profiled")
                print(prof.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=30, max_shapes_column_width=70))

    print(f"easy-VQA {'from ' + a.init if a.init else 'default'} session, batch {a.batch_size}, precision {a.precision}, "
          f"{torch.get_num_threads()} threads; "
          f"{a.rounds} rounds after {a.warmup} warm-up")
    for tok, q in questions.items():
        print(f"tokenizer {tok}: distinct questions per batch {statistics.mean(u for u, *_ in q):.1f} of "
              f"{statistics.mean(n for _, n, *_ in q):.1f}; tokens per question {statistics.mean(m for *_, m, _ in q):.1f}, "
              f"padded to {statistics.mean(w for *_, w in q):.1f}")
    ratio = lambda slow, fast: (statistics.median(x / y for x, y in zip(slow, fast)),  # noqa: E731
                                min(x / y for x, y in zip(slow, fast)), max(x / y for x, y in zip(slow, fast)))
    for kind in ("full", "frozen + cached"):
        if a.compare == "pool":
            folded, projected = times[kind, "auto", True], times[kind, "auto", False]
            print(f"{kind:16s} projected {1000 * statistics.median(projected):7.1f} ms   folded "
                  f"{1000 * statistics.median(folded):7.1f} ms   speed-up %.2fx (%.2f-%.2f)" % ratio(projected, folded))
        elif a.compare == "packing":
            packed, padded = times[kind, "auto", True], times[kind, "auto", False]
            print(f"{kind:16s} padded {1000 * statistics.median(padded):7.1f} ms   packed "
                  f"{1000 * statistics.median(packed):7.1f} ms   speed-up %.2fx (%.2f-%.2f)" % ratio(padded, packed))
        elif a.compare == "sharing":
            shared, every = times[kind, "auto", True], times[kind, "auto", False]
            print(f"{kind:16s} every text {1000 * statistics.median(every):7.1f} ms   shared "
                  f"{1000 * statistics.median(shared):7.1f} ms   speed-up %.2fx (%.2f-%.2f)" % ratio(every, shared))
        else:
            auto, unigram = times[kind, "auto", True], times[kind, "unigram", True]
            print(f"{kind:16s} unigram {1000 * statistics.median(unigram):7.1f} ms   auto "
                  f"{1000 * statistics.median(auto):7.1f} ms   speed-up %.2fx (%.2f-%.2f)" % ratio(unigram, auto))
    full, cached = times["full", "auto", True], times["frozen + cached", "auto", True]
    print("frozen + cached against full, both shared, tokenizer auto: %.2fx (%.2f-%.2f)" % ratio(full, cached))


if __name__ == "__main__":
    main()
