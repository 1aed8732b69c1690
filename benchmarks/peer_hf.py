"""mmcli against a Hugging Face model of the same shape: training steps and generation, side by side.

Builds, with random weights and nothing downloaded, a Hugging Face ``VisionEncoderDecoderModel``
(a ``ViTConfig`` encoder and a ``GPT2Config(add_cross_attention=True)`` decoder) and the mmcli
model of the same shape (a timm ViT of the same size, no unimodal text layers, cross-attention
decoder layers): image 224, patch 16, width 256, 4 encoder and 4 decoder layers, 4 heads, MLP
ratio 4, vocabulary 8,000, captions of 20 tokens, batch 32 (all flags). Then, in one process,
interleaved (mmcli and Hugging Face one after the other, the order alternating every round) after
warm-up rounds, it times:

* ``train_fp32`` / ``train_bf16``: a full training step (forward, backward, gradient clipping,
  AdamW step) in fp32 and under bf16 autocast; the Hugging Face side is what its Trainer does
  (the model's own loss, autocast, fused AdamW on torch >= 2.8); the mmcli side is what
  ``mmcli finetune`` does (``mmcli.train.caption_loss``, the trainer's optimizer, and on a CPU
  oneDNN's linear layers, mmcli/model/packed.py; ``--no-pack`` for the ablation without them; the
  cross-attention folded onto the image, which takes fewer FLOPs at this shape, Attention.fold_pays;
  ``--ablate-train fold`` also times, in the same rounds, the same step with each layer's keys and
  values of the image projected, ``--ablate-train ce`` with the plain cross-entropy instead of
  ``mmcli.losses.token_cross_entropy``);
* ``greedy_fp32`` / ``greedy_bf16``: greedy generation of 20 tokens for the batch, KV cache on
  both sides, end-of-sequence disabled (both emit 20 tokens); mmcli's model is loaded as
  ``mmcli caption`` loads it (``mmcli.load``: eval mode, on a CPU oneDNN's prepacked linear
  layers); bf16: mmcli keeps bf16 weights (as ``mmcli caption --precision bf16``); Hugging Face
  is timed both under autocast and with its weights in bf16, and the faster of the two is the one
  compared;
* ``beam3_fp32`` / ``beam3_bf16``: beam search with 3 beams, the same way.

It prints, per phase, samples (or images) per second for both, the median of the per-round
ratios, the model FLOP utilisation of the training phases against the matmul ceiling measured in
the same rounds (the best of a 2048^3 matrix product in that precision, torch's or oneDNN's), and
the share of the CPU that other processes used while the phase ran: rerun when it is not near zero.

    pip install -e '.[bench]'
    python benchmarks/peer_hf.py                        # every phase, 5 rounds
    python benchmarks/peer_hf.py --phases train_bf16,greedy_bf16 --rounds 7
    python benchmarks/peer_hf.py --device cuda          # on a GPU (bf16 autocast / weights there too)
    python benchmarks/peer_hf.py --json out.json        # also the raw timings
    python benchmarks/peer_hf.py --phases train_bf16 --compile --profile 3   # and where each step's time goes
    python benchmarks/peer_hf.py --phases train_bf16 --profile 3 --profile-shapes --profile-top 40   # per op and shape
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch

PHASES = ("train_fp32", "train_bf16", "greedy_fp32", "greedy_bf16", "beam3_fp32", "beam3_bf16")
BOS, EOS, PAD = 1, 2, 0


# ============================================================================ the two models


def mmcli_model(a) -> torch.nn.Module:
    """The mmcli VLM of the shape: a timm ViT (``backbone_args`` set its size), no unimodal text
    layers, ``dec_layers`` cross-attention layers, tied LM head. (On a CPU the trainer and
    ``mmcli.load`` then swap its linear layers for oneDNN's: :func:`as_mmcli_runs_it`.)"""
    from mmcli.config import preset
    from mmcli.model.vlm import VLM

    vit = {"patch_size": a.patch, "embed_dim": a.dim, "depth": a.enc_layers, "num_heads": a.heads,
           "mlp_ratio": a.mlp_ratio}
    cfg = preset("small", backbone="vit_base_patch16_224", backbone_args=vit, image_size=a.image_size, dim=a.dim,
                 heads=a.heads, text_layers=0, fusion_layers=a.dec_layers, mlp_ratio=a.mlp_ratio,
                 vocab_size=a.vocab, max_text_len=a.text_len + 1, fusion="cross", dropout=0.0)
    return VLM(cfg)


def hf_model(a) -> torch.nn.Module:
    """A ``VisionEncoderDecoderModel``: ViT encoder and GPT-2 decoder with cross-attention, SDPA
    attention, no dropout (as the mmcli model), tied LM head (GPT-2's)."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel, VisionEncoderDecoderModel

    hidden = int(a.dim * a.mlp_ratio)
    enc = ViTConfig(image_size=a.image_size, patch_size=a.patch, hidden_size=a.dim, num_hidden_layers=a.enc_layers,
                    num_attention_heads=a.heads, intermediate_size=hidden, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    dec = GPT2Config(vocab_size=a.vocab, n_positions=a.text_len + 8, n_embd=a.dim, n_layer=a.dec_layers,
                     n_head=a.heads, n_inner=hidden, add_cross_attention=True, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    enc._attn_implementation = dec._attn_implementation = "sdpa"
    model = VisionEncoderDecoderModel(encoder=ViTModel(enc, add_pooling_layer=False), decoder=GPT2LMHeadModel(dec))
    model.config.decoder_start_token_id, model.config.pad_token_id = BOS, PAD
    model.config.eos_token_id = EOS
    return model


def model_flops(a) -> dict[str, float]:
    """Forward FLOPs of one sample of this shape (the same model for both sides: a matmul counts
    2 per multiply-add; attention scores and their weighted sum included; norms, softmax and
    element-wise work left out), and of a training step (3x: forward and the two backward products)."""
    D, H, N = a.dim, int(a.dim * a.mlp_ratio), (a.image_size // a.patch) ** 2 + 1
    T, V = a.text_len, a.vocab
    patch = 2 * (a.patch**2 * 3) * D * (N - 1)
    enc_token = 2 * (4 * D * D + 2 * D * H) + 2 * 2 * N * D  # qkv, out, MLP; QK^T and AV over N keys
    dec_token = 2 * (4 * D * D + 2 * D * D + 2 * D * H) + 2 * 2 * T * D + 2 * 2 * N * D  # self, cross q/out, MLP
    cross_kv = 2 * 2 * D * D * N  # the image's keys and values, once per layer
    fwd = patch + a.enc_layers * N * enc_token + a.dec_layers * (T * dec_token + cross_kv) + T * 2 * D * V
    return {"forward": fwd, "train": 3 * fwd}


# ============================================================================ what is timed


def make_batch(a, device) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=g)
    ids = torch.randint(3, a.vocab, (a.batch, a.text_len + 1), generator=g)
    ids[:, 0] = BOS  # bos w1 .. w20: 20 predictions a caption
    ids = ids.to(device)
    # (text, text_len, text_image: the fields of an mmcli caption batch of pairs)
    return SimpleNamespace(images=images.to(device), ids=ids, text=ids,
                           text_len=torch.full_like(ids[:, 0], ids.shape[1]), text_image=None)


def optimizer(model: torch.nn.Module, device, mmcli: bool) -> torch.optim.Optimizer:
    """mmcli: the trainer's own optimizer; Hugging Face: its Trainer's default (fused AdamW on
    torch >= 2.8, no weight decay)."""
    if mmcli:
        from mmcli.train import make_optimizer

        return make_optimizer(model, lr=1e-4, weight_decay=0.05, device=device)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)


def mmcli_train_step(model, opt, batch, dtype: torch.dtype | None) -> None:
    """One step as ``mmcli finetune --task caption`` runs it: ``caption_loss`` under autocast in ``dtype``
    (None: fp32), backward, clipping, the optimizer's step."""
    from mmcli.train import caption_loss

    device = batch.images.device.type
    autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype is not None else nullcontext
    loss = caption_loss(model, batch, SimpleNamespace(autocast=autocast))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


# --ablate-train NAME: the switch it turns off for mmcli's step (one of benchmarks/ablate.py's), the name of
# the timed variant, and what that variant does instead
ABLATIONS = {
    "fold": ("fold_context", "mmcli unfolded",
             "with the cross-attention unfolded (each layer's keys and values of the image projected)"),
    "ce": ("FUSED_CE", "mmcli plain CE",
           "with the plain cross-entropy (F.cross_entropy over an fp32 copy of the logits)"),
}


def ablated(name: str, fn) -> None:
    """fn() with the switch of ``ABLATIONS[name]`` off."""
    from ablate import switch_owner

    switch = ABLATIONS[name][0]
    owner = switch_owner(switch)
    before = getattr(owner, switch)
    setattr(owner, switch, False)
    try:
        fn()
    finally:
        setattr(owner, switch, before)


def hf_train_step(model, opt, b, bf16: bool) -> None:
    ctx = torch.autocast(b.images.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        loss = model(pixel_values=b.images, decoder_input_ids=b.ids[:, :-1], labels=b.ids[:, 1:]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.no_grad()
def mmcli_generate(model, images, n_tokens: int, beam: int) -> None:
    from mmcli.model.generate import beam_search, greedy

    if beam == 1:
        out = greedy(model, images, BOS, EOS, max_len=n_tokens, min_len=n_tokens)
    else:
        out = beam_search(model, images, BOS, EOS, n_tokens, beam=beam, min_len=n_tokens)
    assert all(len(x) == n_tokens for x in out)


@torch.no_grad()
def hf_generate(model, images, n_tokens: int, beam: int, autocast: bool) -> None:
    ctx = torch.autocast(images.device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        out = model.generate(pixel_values=images, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                             num_beams=beam, do_sample=False, use_cache=True)
    assert out.shape[1] == n_tokens + 1  # decoder start token + the new ones


# ============================================================================ measuring


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def matmul_ceiling(dtype: torch.dtype, device, n: int = 2048, reps: int = 3) -> float:
    """The best FLOP/s of an n^3 matrix product in ``dtype`` over ``reps`` tries: torch's ``@`` and, on a
    CPU with oneDNN, oneDNN's linear (in fp32 ``@`` is MKL's GEMM, which oneDNN beats on some CPUs:
    the ceiling is the faster of the two)."""
    x = torch.randn(n, n, device=device).to(dtype)
    y = torch.randn(n, n, device=device).to(dtype)
    products = [lambda: x @ y]
    if device.type == "cpu":
        from mmcli.model.packed import packing_available

        if packing_available():
            products.append(lambda: torch.ops.mkldnn._linear_pointwise(x, y, None, "none", [], ""))
    best = float("inf")
    for product in products:
        product()
        best = min(best, *(timed(product, device) for _ in range(reps)))
    return 2 * n**3 / best


class CpuShare:
    """The share of the machine's CPU time that other processes used between start() and stop()
    (Linux /proc; None elsewhere): this process's own time subtracted from the system's busy time."""

    def __init__(self):
        self.other, self.wall = 0.0, 0.0

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # all but idle and iowait
        return busy, int(own[11]) + int(own[12]), time.perf_counter()  # utime + stime (this process)

    def start(self):
        self._t = self._read()

    def stop(self):
        now = self._read()
        if now is None or self._t is None:
            return
        hz = os.sysconf("SC_CLK_TCK")
        self.other += max(0, (now[0] - self._t[0]) - (now[1] - self._t[1])) / hz
        self.wall += (now[2] - self._t[2]) * (os.cpu_count() or 1)

    @property
    def share(self) -> float | None:
        return self.other / self.wall if self.wall else None


def build(a, device):
    torch.manual_seed(0)
    mm, hf = as_mmcli_runs_it(a, mmcli_model(a).to(device), device), hf_model(a).to(device)
    mm.train(), hf.train()
    # inference copies as mmcli caption loads them: eval mode, in the precision's dtype (bf16 weights, not
    # autocast), on a CPU with oneDNN's prepacked linear layers (mmcli/model/packed.py; --no-pack: without)
    gen = {"mm_fp32": inference_copy(a, mm, torch.float32, device), "hf_fp32": hf}
    if any(p.endswith("bf16") and not p.startswith("train") for p in a.phases):
        gen["mm_bf16"] = inference_copy(a, mm, torch.bfloat16, device)
        gen["hf_bf16w"] = copy.deepcopy(hf).to(torch.bfloat16).eval()
    if a.compile:  # mmcli caption --compile: the decoding step compiled (its first calls, in the warm-up, compile)
        for k in [k for k in gen if k.startswith("mm_")]:
            gen[k + "_compiled"] = inference_copy(a, mm, gen[k].tok_emb.weight.dtype, device)
            gen[k + "_compiled"].compile_decoding()
    return mm, hf, gen


def as_mmcli_runs_it(a, model: torch.nn.Module, device) -> torch.nn.Module:
    """The model with its linear layers swapped for oneDNN's on a CPU, as ``mmcli finetune`` and
    ``mmcli.load`` do (mmcli/model/packed.py), unless ``--no-pack``."""
    from mmcli.model.packed import pack_linears

    if device.type == "cpu" and getattr(a, "pack", True):
        pack_linears(model)
    return model


def inference_copy(a, mm, dtype: torch.dtype, device) -> torch.nn.Module:
    """What ``mmcli.load`` (caption, vqa, retrieve) makes of a model: see ``mmcli.api.Model.from_run``
    (``--no-fold``: decoding caches the image's keys and values, the ablation)."""
    model = as_mmcli_runs_it(a, copy.deepcopy(mm).to(dtype).eval(), device)
    model.fold_cross_attention = getattr(a, "fold", True)
    return model


def contenders(a, device, mm, hf, gen, b):
    """phase -> {name: fn}: the callables timed each round ("mmcli" first, then Hugging Face's)."""
    opt_mm, opt_hf = optimizer(mm, device, True), optimizer(hf, device, False)
    img16 = b.images.to(torch.bfloat16)
    n = a.text_len

    compiled = None
    if a.compile:  # mmcli finetune --compile: the same weights, the layers compiled (the first steps compile)
        compiled = as_mmcli_runs_it(a, mmcli_model(a).to(device), device)
        compiled.load_state_dict(mm.state_dict())
        compiled.train()
        compiled.compile_layers(None if a.compile_mode == "default" else a.compile_mode)
        opt_c = optimizer(compiled, device, True)

    def train(bf16):
        dtype = torch.bfloat16 if bf16 else None
        fns = {"mmcli": lambda: mmcli_train_step(mm, opt_mm, b, dtype), "hf": lambda: hf_train_step(hf, opt_hf, b, bf16)}
        if compiled is not None:
            fns["mmcli --compile"] = lambda: mmcli_train_step(compiled, opt_c, b, dtype)
        for name in a.ablate_train:
            fns[ABLATIONS[name][1]] = lambda name=name: ablated(name, lambda: mmcli_train_step(mm, opt_mm, b, dtype))
        return fns

    def generate(beam, bf16):
        def mm_gen(model, images):
            return lambda: (model.eval(), mmcli_generate(model, images, n, beam), model.train())

        def hf_gen(model, images, autocast):
            return lambda: (model.eval(), hf_generate(model, images, n, beam, autocast), model.train())

        key, images = ("mm_bf16", img16) if bf16 else ("mm_fp32", b.images)
        fns = {"mmcli": mm_gen(gen[key], images)}
        if key + "_compiled" in gen:
            fns["mmcli --compile"] = mm_gen(gen[key + "_compiled"], images)
        if not bf16:
            return {**fns, "hf": hf_gen(gen["hf_fp32"], b.images, False)}
        return {**fns, "hf (autocast)": hf_gen(gen["hf_fp32"], b.images, True),
                "hf (bf16 weights)": hf_gen(gen["hf_bf16w"], img16, False)}

    table = {"train_fp32": lambda: train(False), "train_bf16": lambda: train(True),
             "greedy_fp32": lambda: generate(1, False), "greedy_bf16": lambda: generate(1, True),
             "beam3_fp32": lambda: generate(3, False), "beam3_bf16": lambda: generate(3, True)}
    return {p: table[p]() for p in a.phases}


def run(a) -> dict:
    device = torch.device(a.device)
    mm, hf, gen = build(a, device)
    b = make_batch(a, device)
    phases = contenders(a, device, mm, hf, gen, b)
    times = {p: {name: [] for name in fns} for p, fns in phases.items()}
    ceilings = {"fp32": [], "bf16": []}
    shares = {p: CpuShare() for p in phases}
    for r in range(a.warmup + a.rounds):
        timing = r >= a.warmup  # (the warm-up's compiles run g++ in other processes: not in the share either)
        for p, fns in phases.items():
            names = list(fns) if r % 2 == 0 else list(fns)[::-1]  # alternate who goes first
            if timing:
                shares[p].start()
            for name in names:
                t = timed(fns[name], device)
                if timing:
                    times[p][name].append(t)
            if timing:
                shares[p].stop()
        if timing:
            ceilings["fp32"].append(matmul_ceiling(torch.float32, device))
            ceilings["bf16"].append(matmul_ceiling(torch.bfloat16, device))
        print(f"round {r + 1}/{a.warmup + a.rounds}{'' if timing else ' (warm-up)'} done", file=sys.stderr)
    if a.profile:
        profile(a, phases, device)
    return {"times": times, "ceilings": ceilings, "cpu_other": {p: s.share for p, s in shares.items()},
            "flops": model_flops(a)}


def profile(a, phases: dict, device) -> None:
    """``--profile N``: after the timed rounds, torch.profiler over N more calls of each contender of
    each phase; its ops by self time, per call. Compiled code shows as "CompiledFxGraph" rows: inductor's
    own kernels (fused element-wise work), the products it calls staying aten's."""
    for p, fns in phases.items():
        for name, fn in fns.items():
            with torch.profiler.profile(record_shapes=a.profile_shapes) as prof:
                for _ in range(a.profile):
                    fn()
                sync(device)
            ops = sorted(prof.key_averages(group_by_input_shape=a.profile_shapes),
                         key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ops) / a.profile / 1e3
            print(f"\n{p}, {name}: {total:.1f} ms of self time a call (mean of {a.profile}); the top ops:")
            for e in ops[:a.profile_top]:
                ms = e.self_cpu_time_total / a.profile / 1e3
                line = f"  {ms:8.1f} ms  {100 * ms / total:5.1f}%  {e.count // a.profile:5d} calls  {e.key[:70]}"
                print(line + (f"  {str(e.input_shapes)[:90]}" if a.profile_shapes else ""))


def report(a, res: dict) -> list[dict]:
    """One row per phase and mmcli variant: its rate, the faster Hugging Face variant's, the median of
    the per-round ratios, and for training the MFU of both."""
    rows = []
    for p, by_name in res["times"].items():
        hf_names = [n for n in by_name if not n.startswith("mmcli")]
        # the faster Hugging Face variant (by median) is the one compared
        hf_name = min(hf_names, key=lambda n: statistics.median(by_name[n]))
        for mm_name in (n for n in by_name if n.startswith("mmcli")):
            rows.append(_row(a, res, p, (mm_name, by_name[mm_name]), (hf_name, by_name[hf_name])))
            for other in hf_names:
                rows[-1][f"{other} per s"] = a.batch / statistics.median(by_name[other])
            ablation = next((k for k, v in ABLATIONS.items() if v[1] == mm_name), None)
            if ablation:  # the switch's gain: mmcli's step against this one, per round
                gains = [u / f for u, f in zip(by_name[mm_name], by_name["mmcli"])]
                rows[-1].update(ablation=ablation, gain=statistics.median(gains), gain_min=min(gains),
                                gain_max=max(gains))
    return rows


def _row(a, res: dict, phase: str, mm_times, hf_times) -> dict:
    (mm_name, mm), (hf_name, hf) = mm_times, hf_times
    train = phase.startswith("train")
    ratios = [h / m for h, m in zip(hf, mm)]
    row = {"phase": phase if mm_name == "mmcli" else f"{phase} ({mm_name[6:]})",
           "unit": "samples/s" if train else "images/s", "mmcli": a.batch / statistics.median(mm),
           "hf": a.batch / statistics.median(hf), "hf_variant": hf_name, "ratio": statistics.median(ratios),
           "ratio_min": min(ratios), "ratio_max": max(ratios), "cpu_other": res["cpu_other"][phase]}
    if train:
        flops = res["flops"]["train"] * a.batch
        ceil = res["ceilings"][phase.rsplit("_", 1)[1]]
        row["mfu_mmcli"] = statistics.median(flops / t / c for t, c in zip(mm, ceil))
        row["mfu_hf"] = statistics.median(flops / t / c for t, c in zip(hf, ceil))
        row["ceiling_tflops"] = statistics.median(ceil) / 1e12
    return row


def print_table(a, rows: list[dict], device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} threads, mmcli attention {a.attention}, "
          f"{'oneDNN' if a.pack and device.type == 'cpu' else 'F.linear'} linear layers"
          f"{'' if a.fold else ', decoding cross-attention not folded'}; "
          f"image {a.image_size}/{a.patch}, "
          f"width {a.dim}, {a.enc_layers}+{a.dec_layers} layers, {a.heads} heads, vocab {a.vocab}, "
          f"{a.text_len} tokens, batch {a.batch}; {a.rounds} rounds after {a.warmup} warm-up")
    print(f"{'phase':22s} {'mmcli':>9s} {'HF':>9s} {'unit':10s} {'mmcli/HF':>9s} {'(min-max)':>13s} "
          f"{'MFU mmcli':>9s} {'MFU HF':>7s} {'other CPU':>9s}  HF variant")
    for r in rows:
        mfu = f"{100 * r['mfu_mmcli']:8.1f}% {100 * r['mfu_hf']:6.1f}%" if "mfu_mmcli" in r else f"{'':9s} {'':7s}"
        other = "n/a" if r["cpu_other"] is None else f"{100 * r['cpu_other']:.1f}%"
        print(f"{r['phase']:22s} {r['mmcli']:9.1f} {r['hf']:9.1f} {r['unit']:10s} {r['ratio']:8.2f}x "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) {mfu} {other:>9s}  {r['hf_variant']}")
    ceil = [r for r in rows if "ceiling_tflops" in r and "(" not in r["phase"]]
    for r in ceil:
        print(f"matmul ceiling in {r['phase']} rounds: {r['ceiling_tflops']:.2f} TFLOP/s "
              f"({r['phase'].rsplit('_', 1)[1]}, median of the rounds)")
    for r in (r for r in rows if "gain" in r):
        print(f"{r['phase'].split()[0]}: mmcli's step {r['gain']:.2f}x ({r['gain_min']:.2f}-{r['gain_max']:.2f}) "
              f"as fast as {ABLATIONS[r['ablation']][2]}, in the same rounds")
    busy = [r["phase"] for r in rows if (r["cpu_other"] or 0) > 0.05]
    if busy:
        print(f"note: other processes used over 5% of the CPU during {', '.join(busy)}: rerun on an idle machine")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return "CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--enc-layers", type=int, default=4)
    ap.add_argument("--dec-layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--text-len", type=int, default=20, help="Caption tokens (trained on, and generated).")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="Timed rounds (each runs every phase once per contender).")
    ap.add_argument("--warmup", type=int, default=2, help="Untimed rounds first.")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"Comma-separated, from {', '.join(PHASES)}.")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ap.add_argument("--attention", choices=("auto", "sdpa", "plain"), default="auto",
                    help="mmcli's attention path (auto: its default; sdpa: as Hugging Face, for an ablation).")
    ap.add_argument("--no-pack", dest="pack", action="store_false",
                    help="mmcli with F.linear instead of oneDNN's linear layers (an ablation; mmcli finetune and "
                         "mmcli.load swap them in on a CPU).")
    ap.add_argument("--no-fold", dest="fold", action="store_false",
                    help="mmcli's decoding with each layer's keys and values of the image cached, not the "
                         "cross-attention folded onto the image (an ablation; VLM.fold_cross_attention).")
    ap.add_argument("--ablate-train", default="", metavar="NAMES",
                    help="Also time mmcli's training step with these of its speed-ups off, comma-separated: fold "
                         "(each cross-attention layer's keys and values of the image projected, not the "
                         "cross-attention folded onto the image: Attention.fold_context off), ce (F.cross_entropy over "
                         "an fp32 copy of the logits, not mmcli.losses.token_cross_entropy): a row each, and each "
                         "speed-up's gain over it in the same rounds.")
    ap.add_argument("--ablate-train-fold", action="store_true", help="The same as --ablate-train fold.")
    ap.add_argument("--compile", action="store_true",
                    help="Also time mmcli's training step with its layers compiled (mmcli finetune --compile), and "
                         "its generation with the decoding step compiled (mmcli caption --compile); the first "
                         "calls compile, in the warm-up rounds.")
    ap.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                    help="torch.compile's mode for --compile (max-autotune: inductor picks among its own GEMM "
                         "kernels too, which can take the bias and activation into the product; slow to compile).")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="After the timing, profile N more calls of each contender of each phase and print "
                         "its most expensive ops (torch.profiler, self time a call).")
    ap.add_argument("--profile-shapes", action="store_true",
                    help="With --profile: each op apart per shape of its inputs (the shapes printed too).")
    ap.add_argument("--profile-top", type=int, default=12, metavar="K", help="With --profile: print the K top ops.")
    ap.add_argument("--json", help="Also write the rows and raw timings to this file.")
    a = ap.parse_args()
    a.phases = [p for p in a.phases.split(",") if p]
    a.ablate_train = [n for n in a.ablate_train.split(",") if n] + (["fold"] if a.ablate_train_fold else [])
    if set(a.ablate_train) - set(ABLATIONS):
        ap.error(f"unknown --ablate-train {sorted(set(a.ablate_train) - set(ABLATIONS))}; choose from "
                 f"{', '.join(ABLATIONS)}")
    a.ablate_train = list(dict.fromkeys(a.ablate_train))
    unknown = sorted(set(a.phases) - set(PHASES))
    if unknown:
        ap.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    from mmcli.model.transformer import set_attention_impl

    set_attention_impl(a.attention)
    res = run(a)
    rows = report(a, res)
    print_table(a, rows, torch.device(a.device))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows, **res}, f, indent=1)


if __name__ == "__main__":
    main()
