"""Where the time of one Flickr8k captioning training step goes, on this machine.

Builds the model of examples/flickr8k_caption.sh (small preset, resnet18 cut after its third
stage at 128 px, one text layer, three cross-attention decoder layers, width 256, dropout 0.2,
2,500 pieces) and a synthetic batch of the same shape (32 images, 5 captions each, lengths
drawn like Flickr8k's: 8-28 tokens, mean about 16), then times full training steps (forward,
backward, AdamW) with the same loss code the trainer runs (``mmcli.train.caption_loss``).

    python benchmarks/profile_caption_step.py                  # median step time
    python benchmarks/profile_caption_step.py --profile        # plus torch.profiler's top ops
    python benchmarks/profile_caption_step.py --precision bf16 # bf16 autocast
    python benchmarks/profile_caption_step.py --nchw           # the image tower in NCHW memory
    python benchmarks/profile_caption_step.py --attention sdpa # SDPA also for bf16 training
    python benchmarks/profile_caption_step.py --compare 10     # all variants, interleaved
    python benchmarks/profile_caption_step.py --ablate 10      # bf16 variants (torch's dropout masks), interleaved
    python benchmarks/profile_caption_step.py --ablate 10 --cached --image-size 224  # the same, frozen and cached
    python benchmarks/profile_caption_step.py --frozen 10      # full against frozen + cached, FLOPs
    python benchmarks/profile_caption_step.py --itm 10         # ITM: fusion layers on the real tokens or padded

Nothing is downloaded; random weights and random images (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch


def build(args):
    from mmcli.config import preset
    from mmcli.model.vlm import VLM
    from mmcli.train import param_groups

    torch.manual_seed(0)
    cfg = preset("small", drop_stages=1, dropout=args.dropout, text_layers=1, fusion_layers=3,
                 vocab_size=2500, max_text_len=32, image_size=args.image_size)
    model = VLM(cfg)
    if args.nchw:  # (mmcli keeps a CNN in channels-last memory)
        model.vision._nhwc_memory = False
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, foreach=True)
    g = torch.Generator().manual_seed(0)
    n_img, per = args.images, 5
    lens = torch.clamp((torch.randn(n_img * per, generator=g) * 4 + 16).round().long(), 8, 28)
    text = torch.randint(4, 2500, (n_img * per, 32), generator=g)
    for i, n in enumerate(lens.tolist()):
        text[i, n:] = 0
    images = torch.randn(n_img, 3, args.image_size, args.image_size, generator=g)
    batch = SimpleNamespace(images=images, text=text, text_len=lens,
                            text_image=torch.arange(n_img).repeat_interleave(per))
    return model, opt, batch


def step(model, opt, batch, session, smoothing):
    from mmcli.train import caption_loss

    loss = caption_loss(model, batch, session, smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32, help="Images per step (5 captions each).")
    ap.add_argument("--image-size", type=int, default=128, help="Image side in pixels (the recipes': 128).")
    ap.add_argument("--steps", type=int, default=8, help="Timed steps (after 2 warm-up steps).")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--nchw", action="store_true", help="Keep the CNN in NCHW memory (mmcli uses channels-last).")
    ap.add_argument("--attention", choices=("auto", "sdpa", "plain"), default="auto",
                    help="auto (mmcli's default): plain for bf16 training on a CPU, else sdpa.")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, as --precision bf16.")
    ap.add_argument("--profile", action="store_true", help="Print torch.profiler's 25 most expensive ops.")
    ap.add_argument("--compare", type=int, metavar="ROUNDS", default=0,
                    help="Instead: ROUNDS interleaved rounds of one step of each variant (fp32 / bf16, SDPA / "
                    "plain attention, NCHW / channels-last input); medians and per-round ratios.")
    ap.add_argument("--ablate", type=int, metavar="ROUNDS", default=0,
                    help="Instead: ROUNDS interleaved rounds of mmcli's bf16 step against variants (torch's dropout "
                    "with bernoulli_ masks, no dropout at all, bf16 weights without autocast).")
    ap.add_argument("--cached", action="store_true",
                    help="With --ablate: the step with the backbone frozen and its features cached.")
    ap.add_argument("--frozen", type=int, metavar="ROUNDS", default=0,
                    help="Instead: the training FLOPs of a step, full and with the backbone frozen and its features "
                    "cached (--freeze-backbone --feature-cache), their ratio (what caching can gain at best), and "
                    "ROUNDS interleaved rounds of the two bf16 steps, each also with the keys and values gathered "
                    "to every caption (Attention.attend_by_context = False), with the LM loss over length buckets "
                    "(VLM.pack_text = False) and with the buckets projecting the images' keys and values again "
                    "(VLM.share_image_kv = False too), the ablations.")
    ap.add_argument("--itm", type=int, metavar="ROUNDS", default=0,
                    help="Instead: ROUNDS interleaved rounds of pretraining's ITM loss (forward and backward, bf16) "
                    "on the batch's images, one caption each, also each image with a wrong caption and each caption "
                    "with a wrong image: the fusion layers on the real tokens alone (mmcli's) against the padded "
                    "batch (VLM.pack_fusion = False).")
    args = ap.parse_args()
    if args.itm:
        return itm(args)
    if args.compare:
        return compare(args)
    if args.ablate:
        return ablate(args)
    if args.frozen:
        return frozen(args)

    from mmcli.model.transformer import set_attention_impl

    set_attention_impl(args.attention)
    model, opt, batch = build(args)
    model.train()
    bf16 = args.precision == "bf16"
    session = SimpleNamespace(autocast=(lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext)
    for _ in range(2):
        step(model, opt, batch, session, 0.1)
    times = []
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else nullcontext()
    with prof:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step(model, opt, batch, session, 0.1)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"step: median {med:.3f} s over {len(times)} (min {min(times):.3f}, max {max(times):.3f}); "
          f"{5 * args.images / med:.1f} captions/s; threads {torch.get_num_threads()}")
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


VARIANTS = (  # (name, precision, attention, channels-last input)
    ("fp32, sdpa, NCHW (before)", "fp32", "sdpa", False),
    ("fp32, sdpa, channels-last (mmcli fp32)", "fp32", "auto", True),
    ("bf16, sdpa, NCHW", "bf16", "sdpa", False),
    ("bf16, plain, NCHW", "bf16", "plain", False),
    ("bf16, plain, channels-last (mmcli bf16)", "bf16", "auto", True),
)


def compare(args) -> None:
    """One model and batch; each round runs one step of every variant, in turn. The machine
    drifts between fast and slow states, so ratios are taken within a round."""
    from mmcli.model.transformer import set_attention_impl

    model, opt, batch = build(args)
    model.train()
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    times = {v[0]: [] for v in VARIANTS}
    for r in range(args.compare + 1):  # round 0 warms every variant up
        for name, precision, attention, nhwc in VARIANTS:
            set_attention_impl(attention)
            model.vision._nhwc_memory = nhwc
            session = SimpleNamespace(autocast=bf16 if precision == "bf16" else nullcontext)
            t0 = time.perf_counter()
            step(model, opt, batch, session, 0.1)
            if r:
                times[name].append(time.perf_counter() - t0)
    base = VARIANTS[0][0]
    print(f"{args.compare} rounds, {5 * args.images} captions a step, threads {torch.get_num_threads()}")
    print(f"{'variant':42s} {'median s':>9s} {'captions/s':>11s} {'speed-up (median of rounds)':>28s}")
    for name, *_ in VARIANTS:
        ratio = statistics.median(b / t for b, t in zip(times[base], times[name]))
        med = statistics.median(times[name])
        print(f"{name:42s} {med:9.3f} {5 * args.images / med:11.1f} {ratio:27.2f}x")


def interleaved(fns: dict, rounds: int) -> dict:
    """Each of ``fns`` (key -> callable) run once a round, the order reversed every other round, after
    one warm-up round: key -> its ``rounds`` times in seconds."""
    times = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k in list(fns) if r % 2 else list(fns)[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            if r:
                times[k].append(time.perf_counter() - t0)
    return times


def ratios(slow: list[float], fast: list[float]) -> str:
    """The per-round ratios slow / fast: their median, min and max."""
    r = [a / b for a, b in zip(slow, fast)]
    return f"{statistics.median(r):.2f}x (min {min(r):.2f}, max {max(r):.2f})"


def flops_of(fn) -> int:
    """The FLOPs ``fn()`` runs (torch's FlopCounterMode, forward and backward alike)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def frozen_and_cached(model, batch) -> SimpleNamespace:
    """``model``'s backbone frozen (in eval mode after this) and ``batch`` with the backbone's tokens (B, N, C) for
    images, as the feature cache gives them (bf16 values in fp32 tensors): the step of --freeze-backbone
    --feature-cache, which starts at the projection."""
    model.vision.frozen = True
    model.vision.backbone.requires_grad_(False)
    with torch.no_grad():
        feats = model.vision.eval().features(batch.images).bfloat16().float()
    return SimpleNamespace(**{**vars(batch), "images": feats})


def ablate(args) -> None:
    """mmcli's bf16 step (autocast, its dropout masks from 15-bit numbers) against variants, on copies of one model:
    torch's dropout (``bernoulli_`` masks, mmcli's until 2026-12-07), no dropout, bf16 weights without autocast;
    each round runs one step of every variant, the order alternating."""
    import copy

    from torch import nn

    model, _, batch = build(args)
    if args.cached:
        batch = frozen_and_cached(model, batch)
        model.train()
    models = {"mmcli bf16 (autocast, 15-bit masks)": model, "torch's dropout (bernoulli_ masks)": copy.deepcopy(model),
              "no dropout": copy.deepcopy(model), "bf16 weights, no autocast": copy.deepcopy(model).to(torch.bfloat16)}
    for m in models["no dropout"].modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for m in models["torch's dropout (bernoulli_ masks)"].modules():
        if isinstance(m, nn.Dropout) and m.p > 0:  # (mmcli's transformer.Dropout: nn.Dropout's own forward)
            m.forward = lambda x, p=m.p, m=m: nn.functional.dropout(x, p, m.training)
    from mmcli.train import param_groups

    opts = {k: torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3, foreach=True) for k, m in models.items()}
    batch16 = SimpleNamespace(**{**vars(batch), "images": batch.images.to(torch.bfloat16)})
    autocast = SimpleNamespace(autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    plain = SimpleNamespace(autocast=nullcontext)

    def one(name):
        weights16 = name.startswith("bf16 weights")
        return lambda: step(models[name].train(), opts[name], batch16 if weights16 else batch,
                            plain if weights16 else autocast, 0.1)

    times = interleaved({name: one(name) for name in models}, args.ablate)
    base = next(iter(models))
    print(f"{args.ablate} rounds, {5 * args.images} captions a step, {args.image_size} px"
          f"{', backbone frozen and cached' if args.cached else ''}, dropout {args.dropout}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'variant':42s} {'median s':>9s} {'captions/s':>11s} {'speed-up (median, min-max of rounds)':>37s}")
    for name in models:
        r = [b / t for b, t in zip(times[base], times[name])]
        med = statistics.median(times[name])
        print(f"{name:42s} {med:9.3f} {5 * args.images / med:11.1f} "
              f"{statistics.median(r):22.2f}x ({min(r):.2f}-{max(r):.2f})")


def frozen(args) -> None:
    """Full training against the backbone frozen with its features cached, on one batch: the FLOPs of
    each step (forward and backward, counted by torch's FlopCounterMode) and bf16 step times, the
    order alternating each round; each also with three ablations: the packed batch with the images' keys and
    values gathered to every caption (``Attention.attend_by_context = False``), the LM loss over length buckets
    (``VLM.pack_text = False``: what ran before ``VLM.lm_real_logits``, its buckets sharing the images'
    keys and values), and the buckets each projecting the images' keys and values again
    (``VLM.share_image_kv = False`` too). The cached step reads the backbone's tokens as the feature
    cache gives them (bf16 values in fp32 tensors) and starts at the projection."""
    import copy

    from mmcli.model.transformer import Attention
    from mmcli.model.vlm import VLM
    from mmcli.train import caption_loss, param_groups

    full, _, batch = build(args)
    cached = copy.deepcopy(full)
    models = {"full": full.train(), "frozen + cached": cached}
    batches = {"full": batch, "frozen + cached": frozen_and_cached(cached, batch)}
    cached.train()
    opts = {k: torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3, foreach=True) for k, m in models.items()}
    session = SimpleNamespace(autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    forms = {"": (True, True, True), ", packed, kv gathered": (True, True, False),
             ", length buckets": (False, True, True), ", buckets, kv per bucket": (False, False, True)}
    variants = [(name, form) for name in models for form in forms]

    def set_form(form):
        VLM.pack_text, VLM.share_image_kv, Attention.attend_by_context = forms[form]

    def loss(name, form):
        set_form(form)
        caption_loss(models[name], batches[name], session, 0.1).backward()
        models[name].zero_grad(set_to_none=True)

    def train_step(name, form):
        set_form(form)
        step(models[name], opts[name], batches[name], session, 0.1)

    flops = {v: flops_of(lambda v=v: loss(*v)) for v in variants}
    times = interleaved({v: lambda v=v: train_step(*v) for v in variants}, args.frozen)
    set_form("")
    n_cap = 5 * args.images
    print(f"{args.frozen} rounds, bf16, {args.images} images of {args.image_size} px and {n_cap} captions a step "
          f"(mean {batch.text_len.float().mean():.1f} tokens), threads {torch.get_num_threads()}")
    print(f"{'step':40s} {'GFLOP':>7s} {'median s':>9s} {'captions/s':>11s} {'GFLOP/s':>8s}")
    for v in variants:
        med = statistics.median(times[v])
        print(f"{v[0] + v[1]:40s} {flops[v] / 1e9:7.1f} {med:9.3f} {n_cap / med:11.1f} {flops[v] / 1e9 / med:8.1f}")
    for form in forms:
        a, b = ("full", form), ("frozen + cached", form)
        print(f"full / frozen + cached{form}: FLOPs {flops[a] / flops[b]:.2f}x (the speed-up caching gives when "
              f"both run at one FLOP rate), time {ratios(times[a], times[b])}")
    for name in models:
        print(f"{name}: packed, cross-attention by image against the keys and values gathered to every caption: "
              f"time {ratios(times[name, ', packed, kv gathered'], times[name, ''])}")
        print(f"{name}: mmcli against length buckets: time {ratios(times[name, ', length buckets'], times[name, ''])}; "
              f"buckets sharing the keys and values against per bucket: time "
              f"{ratios(times[name, ', buckets, kv per bucket'], times[name, ', length buckets'])}")


def itm(args) -> None:
    """The ITM part of a pretraining step (as ``mmcli.train._itm_part`` makes it, forward and backward,
    bf16): the B pairs, each image with a wrong caption and each caption with a wrong image, 3B rows,
    the captions padded to the longest as the collate pads them; the image tokens come encoded. The
    fusion layers on the captions' real tokens alone against the padded batch (``VLM.pack_fusion``)."""
    from mmcli.losses import itm_loss
    from mmcli.model.vlm import VLM

    model, _, batch = build(args)
    model.train()
    B = args.images
    g = torch.Generator().manual_seed(1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img = model.encode_image(batch.images)  # (B, N, D)
    lens = batch.text_len[::5]  # one caption per image
    text = batch.text[::5, : int(lens.max())]
    wrong_text, wrong_image = torch.randperm(B, generator=g), torch.randperm(B, generator=g)
    imgs = torch.cat([img, img, img[wrong_image]])
    ids, lengths = torch.cat([text, text[wrong_text], text]), torch.cat([lens, lens[wrong_text], lens])
    labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long()

    def run(packed):
        VLM.pack_fusion = packed
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.itm_logits(imgs, ids, lengths)
        itm_loss(logits.float(), labels).backward()

    names = {True: "fusion on the real tokens", False: "fusion padded"}
    flops = {packed: flops_of(lambda p=packed: run(p)) for packed in names}
    times = interleaved({packed: lambda p=packed: run(p) for packed in names}, args.itm)
    VLM.pack_fusion = True
    print(f"{args.itm} rounds, bf16, ITM on {B} pairs ({3 * B} rows; captions of {float(lens.float().mean()):.1f} "
          f"tokens padded to {text.shape[1]}), dropout {args.dropout}, threads {torch.get_num_threads()}")
    for packed, name in names.items():
        print(f"{name:26s} {flops[packed] / 1e9:6.1f} GFLOP  median {statistics.median(times[packed]) * 1e3:7.1f} ms")
    print(f"on the real tokens against padded: {ratios(times[False], times[True])}")


if __name__ == "__main__":
    main()
