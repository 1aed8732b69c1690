"""The captioning recipe's training options (TrainConfig fields and CLI options of finetune and pretrain):
--model, --augment, --label-smoothing, --group-captions, --image-cache and --beam, on tiny synthetic data."""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mmcli import train
from mmcli.errors import UserError
from conftest import stop_and_resume
from mmcli.train import TrainConfig, fit, resume_config

DATA = "shapes:40:32"  # 32 train, 4 val, 4 test images
# images already at the tiny preset's cache side (64 px / crop_pct 0.95 = 67): caching them resizes nothing
CACHED = "shapes:40:67"


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> TrainConfig:
    base = dict(task="caption", data=DATA, out="run", preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2,
                vocab_size=300, max_text_len=24, log_every=5, max_steps=20, eval_every=20, test=False)
    return TrainConfig(**{**base, **kw})


def rows(run: str | Path, key: str) -> list[dict]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def step_losses(c: TrainConfig) -> list[float]:
    """Every optimizer step's loss of ``fit(c)``."""
    losses = []
    fit(c, on_step=lambda step, loss: losses.append(loss))
    return losses


# ---------------------------------------------------------------------------- --group-captions


@pytest.mark.parametrize("fusion", ["cross", "concat"])
def test_grouped_captions_give_the_loss_and_gradients_of_the_pairs(fusion):
    """The same images and captions as pairs (each image encoded once per caption) and grouped (once
    per image): the same loss, a mean over all caption tokens, and the same gradients (eval mode:
    BatchNorm's running statistics, so an image's repetitions in the pair batch change nothing)."""
    from mmcli.config import preset
    from mmcli.data.images import make_transform
    from mmcli.data.loaders import CaptionImageDataset, ImageSource, PairDataset, collate
    from mmcli.data.records import Split
    from mmcli.data.spec import load_dataset
    from mmcli.model.vlm import VLM
    from mmcli.tokenizer import Tokenizer

    records = load_dataset(DATA).splits["train"].captions[:6]
    tok = Tokenizer.train([c for r in records for c in r.captions], vocab_size=400)
    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=tok.vocab_size, fusion=fusion, dropout=0.1)).eval()
    source = ImageSource(make_transform(model.vision.data_config))
    pairs = PairDataset(Split(records).pairs(), source, tok, max_len=24)
    grouped = CaptionImageDataset(records, source, tok, max_len=24)
    a = collate([pairs[i] for i in range(len(pairs))], tok.pad_id)
    b = collate([grouped[i] for i in range(len(grouped))], tok.pad_id)
    assert len(b) == 6 and len(a) == b.n_samples == a.n_samples == grouped.n_captions > 6
    assert b.text_ids == a.text_ids and torch.equal(b.text, a.text) and torch.equal(b.text_len, a.text_len)
    assert b.text_image.tolist() == [i for i, r in enumerate(records) for _ in r.captions]

    s = SimpleNamespace(autocast=nullcontext)

    def loss_and_grads(batch, smoothing=0.0):
        model.zero_grad()
        loss = train.caption_loss(model, batch, s, label_smoothing=smoothing)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for smoothing in (0.0, 0.1):
        (la, ga), (lb, gb) = loss_and_grads(a, smoothing), loss_and_grads(b, smoothing)
        torch.testing.assert_close(lb, la, atol=1e-6, rtol=1e-5)
        assert ga.keys() == gb.keys() and any(k.startswith("vision") for k in ga)
        for k in ga:
            torch.testing.assert_close(gb[k], ga[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("fusion", ["cross", "concat"])
@pytest.mark.parametrize("grouped", [False, True])
def test_length_buckets_give_the_padded_batch_loss_and_gradients(monkeypatch, fusion, grouped):
    """The LM loss over length buckets (each trimmed to its longest caption, the LM head on real
    predictions only), and over the whole batch's real tokens packed (VLM.lm_real_logits), equals the
    loss of the whole padded batch, and so do the gradients."""
    from mmcli.config import preset
    from mmcli.data.images import make_transform
    from mmcli.data.loaders import CaptionImageDataset, ImageSource, PairDataset, collate
    from mmcli.data.records import Split
    from mmcli.data.spec import load_dataset
    from mmcli.losses import length_buckets, lm_loss
    from mmcli.model.vlm import VLM
    from mmcli.tokenizer import Tokenizer

    records = load_dataset(DATA).splits["train"].captions[:6]
    tok = Tokenizer.train([c for r in records for c in r.captions], vocab_size=400)
    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=tok.vocab_size, fusion=fusion)).eval()
    source = ImageSource(make_transform(model.vision.data_config))
    data = (CaptionImageDataset(records, source, tok, max_len=24) if grouped
            else PairDataset(Split(records).pairs(), source, tok, max_len=24))
    b = collate([data[i] for i in range(len(data))], tok.pad_id)
    b.text[-1, b.text_len[-1]:] = tok.pad_id + 1  # whatever sits in a pad position never counts
    assert b.text_len.min() < b.text_len.max() == b.text.shape[1]  # the short rows are padded
    s = SimpleNamespace(autocast=nullcontext)

    def loss_and_grads(bucket_rows, packed=False):
        monkeypatch.setattr(train, "LM_BUCKET_ROWS", bucket_rows)
        monkeypatch.setattr(VLM, "pack_text", packed)  # on a CPU with cross fusion: VLM.lm_real_logits
        model.zero_grad()
        if bucket_rows is None:  # the reference: the whole padded batch, logits everywhere
            img = model.encode_image(b.images)
            loss = lm_loss(model.lm_logits(None, b.text, img=img, img_index=b.text_image), b.text, b.text_len, 0.1)
        else:
            loss = train.caption_loss(model, b, s, label_smoothing=0.1)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    n = b.text.shape[0]
    assert len(length_buckets(b.text_len, n // 4)) == n // 4 > 2
    assert model.packs_lm(b.text_len, grouped) == (fusion == "cross")
    assert not model.packs_lm(torch.full_like(b.text_len, 24), False)  # no pads, one image each: one bucket
    assert model.packs_lm(torch.full_like(b.text_len, 24), True) == (fusion == "cross")  # grouped by image
    assert not model.packs_lm(torch.ones_like(b.text_len), True)  # captions of one token: nothing predicts
    assert not model._can_pack(torch.device("cuda"))  # a GPU keeps the buckets (and counts nothing first)
    ref_loss, ref_grads = loss_and_grads(None)
    # several buckets; one bucket (trimmed to the batch's longest); the whole batch on its real tokens alone,
    # cross-attention by image (cross fusion; the buckets again for concat)
    for bucket_rows, packed in ((4, False), (n, False), (4, True)):
        loss, grads = loss_and_grads(bucket_rows, packed)
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for k in grads:
            torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize("grouped", [False, True])
def test_length_buckets_project_the_images_keys_and_values_once(monkeypatch, grouped):
    """Several length buckets share each cross-attention layer's keys and values of the batch's images:
    one projection of every image per layer and step, not one per bucket."""
    from mmcli.config import preset
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=50)).train()
    n_img = 3 if grouped else 12
    lengths = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 4, 6, 8, 10])
    ids = torch.randint(3, 50, (12, 10))
    batch = SimpleNamespace(images=torch.randn(n_img, 3, 64, 64), text=ids, text_len=lengths,
                            text_image=torch.arange(3).repeat_interleave(4) if grouped else None)
    monkeypatch.setattr(train, "LM_BUCKET_ROWS", 3)  # 4 buckets
    projected = []
    for blk in model.fusion_blocks:
        blk.cross_attn.kv.register_forward_hook(lambda m, args, out: projected.append(args[0].shape[0]))
    loss = train.caption_loss(model, batch, SimpleNamespace(autocast=nullcontext))
    loss.backward()
    assert projected == [n_img] * len(model.fusion_blocks)  # every image, once per layer
    assert all(blk.cross_attn.kv.weight.grad is not None for blk in model.fusion_blocks)


@pytest.mark.parametrize("grouped", [False, True])
def test_length_buckets_with_the_cross_attention_folded_give_the_projected_loss_and_gradients(monkeypatch, grouped):
    """Where the cross-attention is folded (Attention.fold_pays), the length buckets project no keys and
    values of the images at all (VLM.image_kv gives None, each bucket folds: Attention._folded_attend),
    with the loss and gradients of the projected path."""
    from mmcli.config import preset
    from mmcli.model.transformer import Attention
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=50, image_size=128)).train()
    n_img = 3 if grouped else 12
    lengths = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 4, 6, 8, 10])
    batch = SimpleNamespace(images=torch.randn(n_img, 3, 128, 128), text=torch.randint(3, 50, (12, 10)),
                            text_len=lengths, text_image=torch.arange(3).repeat_interleave(4) if grouped else None)
    monkeypatch.setattr(train, "LM_BUCKET_ROWS", 3)  # 4 buckets
    projected = []
    for blk in model.fusion_blocks:
        blk.cross_attn.kv.register_forward_hook(lambda m, args, out: projected.append(args[0].shape[0]))

    def loss_and_grads(fold: bool):
        monkeypatch.setattr(Attention, "fold_pays", lambda *_: fold)
        model.zero_grad()
        loss = train.caption_loss(model, batch, SimpleNamespace(autocast=nullcontext))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(True)
    assert projected == []  # folded: no layer projected the images' keys and values
    ref_loss, ref_grads = loss_and_grads(False)
    assert projected == [n_img] * len(model.fusion_blocks)  # once per layer, shared by the buckets
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4, msg=k)


def test_lm_loss_of_equal_length_pairs_is_the_whole_batch_loss():
    """Pairs of one length in one bucket (the fast path: no gather of rows or positions, the last token
    not fed) give the loss and gradients of the plain forward over the whole batch."""
    from mmcli.config import preset
    from mmcli.losses import lm_loss
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=50)).eval()
    images, ids = torch.randn(4, 3, 64, 64), torch.randint(3, 50, (4, 9))
    batch = SimpleNamespace(images=images, text=ids, text_len=torch.full((4,), 9), text_image=None)
    s = SimpleNamespace(autocast=nullcontext)
    loss = train.caption_loss(model, batch, s)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    ref = lm_loss(model.lm_logits(images, ids), ids, batch.text_len)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or torch.allclose(g, r, atol=1e-6, rtol=1e-4))


def test_length_buckets_sort_and_cover_every_row():
    from mmcli.losses import length_buckets

    lengths = torch.tensor([5, 2, 9, 2, 7, 3, 8])
    buckets = length_buckets(lengths, 3)
    assert sorted(torch.cat(buckets).tolist()) == list(range(7)) and len(buckets) == 3
    assert [lengths[r].tolist() for r in buckets] == [[2, 2, 3], [5, 7], [8, 9]]
    assert len(length_buckets(lengths, 100)) == 7 and len(length_buckets(lengths, 0)) == 1


def test_grouped_captions_train_on_images_with_all_their_captions():
    result = fit(cfg(group_captions=True, max_steps=12, eval_every=12, log_every=4))
    losses = [r["loss"] for r in rows("run", "loss")]
    assert result.steps == 12 and len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses
    assert result.epochs == 3  # 32 images, batches of 8 images (not pairs): 4 steps an epoch
    assert json.loads(Path("run/config.json").read_text())["train"]["group_captions"] is True
    with pytest.raises(UserError, match="--group-captions is for tasks caption, retrieval, pretrain"):
        cfg(task="vqa", group_captions=True)


# ---------------------------------------------------------------------------- the LM loss's cross-entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_cross_entropy_gives_the_plain_loss_and_gradient(dtype, smoothing):
    from mmcli.losses import CE_ROWS, token_cross_entropy

    torch.manual_seed(0)
    n, v = 2 * CE_ROWS + 37, 500  # chunks of CE_ROWS rows, the last one short
    logits = (4 * torch.randn(n, v)).to(dtype)
    targets = torch.randint(0, v, (n,))
    scale = 1 / n

    def loss_and_grad(fn, g=1.0):
        x = logits.clone().requires_grad_()
        loss = fn(x)
        (loss * g).backward()
        return loss, x.grad

    ref, ref_grad = loss_and_grad(lambda x: F.cross_entropy(x.float(), targets, label_smoothing=smoothing,
                                                            reduction="sum") * scale)
    mine, grad = loss_and_grad(lambda x: token_cross_entropy(x, targets, smoothing, scale))
    assert mine.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    # fp32: equal to rounding; bf16: each element within one rounding of the fp32 gradient (both round once)
    tol = {"rtol": 1e-5, "atol": 1e-8} if dtype == torch.float32 else {"rtol": 2 ** -7, "atol": 1e-7}
    torch.testing.assert_close(grad.float(), ref_grad.float(), **tol)
    with torch.no_grad():  # (validation: no gradient made)
        torch.testing.assert_close(token_cross_entropy(logits, targets, smoothing, scale), mine.detach())
    # a gradient that arrives scaled (the loss times 3 before backward) scales it
    _, grad3 = loss_and_grad(lambda x: token_cross_entropy(x, targets, smoothing, scale), g=3.0)
    torch.testing.assert_close(grad3.float(), 3 * grad.float(), rtol=2 ** -7, atol=1e-7)


def test_token_cross_entropy_learns_the_targets_and_takes_no_rows():
    from mmcli.losses import token_cross_entropy

    torch.manual_seed(0)
    logits = torch.zeros(6, 9, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 8, 1, 2])
    opt = torch.optim.SGD([logits], lr=5.0)
    first = None
    for _ in range(40):
        loss = token_cross_entropy(logits, targets, scale=1 / 6)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(9), rel=1e-6) and float(loss) < 0.05
    assert torch.equal(logits.argmax(1), targets)
    empty = torch.zeros(0, 9, requires_grad=True)
    out = token_cross_entropy(empty, targets[:0])
    out.backward()
    assert float(out) == 0.0 and empty.grad.shape == (0, 9)


# ---------------------------------------------------------------------------- --label-smoothing


def test_label_smoothing_of_the_lm_loss():
    from mmcli.losses import lm_loss

    torch.manual_seed(0)
    logits, ids, lens = torch.randn(3, 6, 11), torch.randint(4, 11, (3, 6)), torch.tensor([6, 3, 4])
    # the loss before label smoothing existed: mean next-token NLL over the real tokens
    logp = logits[:, :-1].log_softmax(-1)
    real = [(b, t) for b in range(3) for t in range(5) if t + 1 < lens[b]]
    nll = torch.stack([-logp[b, t, ids[b, t + 1]] for b, t in real]).mean()
    uniform = torch.stack([-logp[b, t].mean() for b, t in real]).mean()
    assert torch.equal(lm_loss(logits, ids, lens, label_smoothing=0.0), lm_loss(logits, ids, lens))
    torch.testing.assert_close(lm_loss(logits, ids, lens), nll)
    torch.testing.assert_close(lm_loss(logits, ids, lens, label_smoothing=0.1), 0.9 * nll + 0.1 * uniform)
    # the training losses take it: caption directly, pretrain for its lm objective
    assert train._loss_fn(cfg(label_smoothing=0.1)).keywords == {"label_smoothing": 0.1}
    pt = train._loss_fn(cfg(task="pretrain", label_smoothing=0.1))
    assert pt.keywords["label_smoothing"] == 0.1 and "lm" in pt.keywords["weights"]
    for bad, match in [(dict(label_smoothing=1.0), r"in \[0, 1\)"),
                       (dict(task="vqa", label_smoothing=0.1), "--label-smoothing is for the LM loss")]:
        with pytest.raises(UserError, match=match):
            cfg(**bad)


def test_label_smoothing_changes_the_training_loss_and_zero_keeps_it():
    plain = step_losses(cfg(out="plain", max_steps=2, eval_every=2))
    zero = step_losses(cfg(out="zero", max_steps=2, eval_every=2, label_smoothing=0.0))
    smoothed = step_losses(cfg(out="smoothed", max_steps=2, eval_every=2, label_smoothing=0.1))
    assert zero == plain and smoothed[0] != plain[0]


# ---------------------------------------------------------------------------- --augment


def test_augment_light_changes_training_images_but_not_validation():
    cpu = torch.device("cpu")
    plain = train._build(cfg(out="plain"), train._Opened(), cpu, None)
    light = train._build(cfg(out="light", augment="light"), train._Opened(), cpu, None)
    torch.manual_seed(1)
    a, b = plain.train_set[0]["image"], light.train_set[0]["image"]
    assert a.shape == b.shape and not torch.equal(a, b)
    assert torch.equal(plain.train_set[0]["image"], a)  # none: the eval transform, the same every time
    assert not torch.equal(light.train_set[0]["image"], b)  # light: another crop (or flip) each time
    # validation and test images: the eval transform, whatever --augment says
    path = plain.val.captions[0].image
    assert torch.equal(light.image_source(path), plain.image_source(path))
    assert torch.equal(light.image_source(path), plain.train_set.images(path))
    with pytest.raises(UserError, match="unknown augment 'heavy'"):
        cfg(augment="heavy")


# ---------------------------------------------------------------------------- --image-cache


def test_image_cache_is_built_once_reused_and_trains_as_the_files(capsys, monkeypatch):
    files = step_losses(cfg(data=CACHED, out="files", max_steps=2, eval_every=2))
    cached = step_losses(cfg(data=CACHED, out="cached", max_steps=2, eval_every=2, image_cache=True))
    err = capsys.readouterr().err
    (cache,) = Path(os.environ["MMCLI_CACHE"]).glob("images-*")
    assert cache.name.startswith("images-shapes-40-67-67px-") and f"image cache {cache}: built (40 images" in err
    index = json.loads((cache / "index.json").read_text())
    assert index["size"] == 67 and len(index["paths"]) == 40 and index["bad"] == []  # train, val and test
    stamp = (cache / "pixels.npy").stat().st_mtime_ns, (cache / "index.json").stat().st_mtime_ns

    def no_files(path):
        raise AssertionError(f"{path} was read from its file, not from the cache")

    monkeypatch.setattr("mmcli.data.loaders.load_image", no_files)  # training and validation: the cache only
    again = step_losses(cfg(data=CACHED, out="again", max_steps=2, eval_every=2, image_cache=True))
    assert f"image cache {cache}: reusing it" in capsys.readouterr().err
    assert ((cache / "pixels.npy").stat().st_mtime_ns, (cache / "index.json").stat().st_mtime_ns) == stamp
    # the cache's resize is a no-op at this size: the same pixels, so exactly the same run
    assert files == cached == again
    assert rows("files", "val") == rows("cached", "val") == rows("again", "val")


def test_image_cache_records_a_bad_image_and_training_skips_it_once(capsys):
    from mmcli.data.spec import load_dataset

    bad = load_dataset(DATA).splits["train"].captions[0].image
    Path(bad).write_bytes(b"not a png")  # the shapes cache lives in this test's MMCLI_CACHE
    result = fit(cfg(image_cache=True, max_steps=8, eval_every=8, log_every=50))  # two epochs
    err = capsys.readouterr().err
    assert result.skipped_images == 1 and err.count(f"skipping {bad}") == 1 and "1 unreadable" in err
    (cache,) = Path(os.environ["MMCLI_CACHE"]).glob("images-*")
    index = json.loads((cache / "index.json").read_text())
    assert [index["paths"][i] for i, _ in index["bad"]] == [bad]  # recorded as bad, read as such from then on
    with pytest.raises(UserError, match="--strict"):
        fit(cfg(out="strict", strict=True, image_cache=True))


# ---------------------------------------------------------------------------- --model


def test_parse_model_overrides():
    from mmcli.cli.options import model_overrides
    from mmcli.config import parse_model_overrides

    assert parse_model_overrides("drop_stages=1,dropout=0.2,text_layers=1,fusion_layers=3") == {
        "drop_stages": 1, "dropout": 0.2, "text_layers": 1, "fusion_layers": 3}
    got = parse_model_overrides(" freeze_backbone=yes, backbone_weights=none,backbone=resnet34,mlp_ratio=2,")
    assert got == {"freeze_backbone": True, "backbone_weights": None, "backbone": "resnet34", "mlp_ratio": 2.0}
    assert type(got["mlp_ratio"]) is float
    # the command's dataset defaults (finetune's easyvqa image size) under the user's values
    assert model_overrides("image_size=32,dropout=0.1", {"image_size": 64}) == {"image_size": 32, "dropout": 0.1}
    assert model_overrides(None, {"image_size": 64}) == {"image_size": 64} and model_overrides(None) is None


@pytest.mark.parametrize("spec,message", [
    ("nope=1", "--model: unknown model field 'nope'; choose from backbone, "),
    ("dropout=abc", "--model dropout=abc: expected a number"),
    ("text_layers=1.5", "--model text_layers=1.5: expected an integer"),
    ("freeze_backbone=maybe", "--model freeze_backbone=maybe: expected true or false"),
    ("backbone_weights=", "--model backbone_weights=: expected a non-empty string or none"),
    ("dropout", "--model dropout: no value; write KEY=VALUE"),
    ("dropout=0.1,dropout=0.2", "--model: dropout is given twice"),
    ("fusion=concat", "--model fusion: not a --model setting; it comes from --fusion"),
    ("vocab_size=100", "--model vocab_size: not a --model setting"),
])
def test_cli_model_errors_are_one_line(run_cli, spec, message):
    code, out, err = run_cli("finetune", "--task", "caption", "--model", spec, "--out", "x")
    assert code == 2 and err.startswith(f"mmcli: error: {message}") and err.count("\n") == 1, err
    assert not Path("x").exists()


def test_model_is_refused_with_init(run_cli):
    code, out, err = run_cli("finetune", "--task", "caption", "--init", "somewhere", "--model", "dropout=0.1")
    assert code == 2 and "--model dropout=0.1 cannot be combined with --init" in err and err.count("\n") == 1
    with pytest.raises(UserError, match="cannot be combined with --init: the init run fixes the model"):
        cfg(init="somewhere", model={"dropout": 0.1})
    code, out, err = run_cli("pretrain", "--init", "somewhere", "--model", "text_layers=1")
    assert code == 2 and "cannot be combined with --init" in err


def test_cli_finetune_and_pretrain_take_the_options(run_cli):
    args = ["--data", DATA, "--preset", "tiny", "--max-steps", "2", "--batch-size", "8", "--no-test",
            "--model", "dropout=0.1,text_layers=2", "--augment", "light", "--label-smoothing", "0.1",
            "--image-cache", "--beam", "2"]
    code, out, err = run_cli("finetune", "--task", "caption", "--group-captions", *args, "--out", "ft")
    assert code == 0, err
    saved = json.loads(Path("ft/config.json").read_text())
    assert saved["model"]["dropout"] == 0.1 and saved["model"]["text_layers"] == 2
    assert {k: saved["train"][k] for k in ("augment", "label_smoothing", "group_captions", "image_cache", "beam")} \
        == {"augment": "light", "label_smoothing": 0.1, "group_captions": True, "image_cache": True, "beam": 2}
    code, out, err = run_cli("pretrain", "--objectives", "itc,lm", *args, "--out", "pt")
    assert code == 0, err
    assert "reusing it" in err  # the cache finetune built
    saved = json.loads(Path("pt/config.json").read_text())
    assert saved["model"]["dropout"] == 0.1 and saved["train"]["label_smoothing"] == 0.1
    code, out, err = run_cli("finetune", "--task", "vqa", "--group-captions", "--out", "vqa")
    assert code == 2 and "--group-captions is for tasks caption, retrieval, pretrain; task vqa" in err


# ---------------------------------------------------------------------------- resuming


def test_resume_with_the_recipe_options_is_bit_identical():
    """Stop at step 5 (mid-epoch), resume to 7 (past an epoch end and two validations, beam search)."""
    kw = dict(fusion="cross", group_captions=True, augment="light", label_smoothing=0.1, image_cache=True,
              model={"dropout": 0.1}, beam=2, max_steps=7, eval_every=3, deterministic=True)
    result = stop_and_resume(cfg, 5, **kw)
    assert result.steps == 7
    from safetensors.torch import load_file

    a, b = (load_file(Path(run) / "last" / "model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val"] for r in rows("straight", "val")] == [r["val"] for r in rows("resumed", "val")]
    assert [r["loss"] for r in rows("straight", "loss")] == [r["loss"] for r in rows("resumed", "loss")]
    # these options define the run: resuming with other values is refused
    with pytest.raises(UserError, match="augment 'light' -> 'none'"):
        fit(resume_config("resumed", augment="none", max_steps=8))


# ---------------------------------------------------------------------------- the easy-VQA recipe


@pytest.fixture
def captured(monkeypatch):
    """`mmcli finetune` builds its TrainConfig but trains nothing: the config lands in the list."""
    from mmcli.cli import options

    got = []
    monkeypatch.setattr(options, "run_training", lambda cfg, command: got.append(cfg))
    return got


def test_easyvqa_recipe_fills_what_the_user_left_out(run_cli, captured):
    code, out, err = run_cli("finetune", "--task", "vqa", "--out", "a")
    assert code == 0, err
    c = captured[-1]
    assert (c.data, c.fusion, c.batch_size, c.max_steps, c.eval_every) == ("easyvqa", "late", 16, 850, 425)
    assert c.model == {"image_size": 64, "drop_stages": 2, "text_layers": 1}
    assert ("easy-VQA defaults of the small preset: --fusion late --batch-size 16 --max-steps 850 "
            "--eval-every 425 --model drop_stages=2,text_layers=1") in err and err.count("\n") == 1

    # every option given wins, and the note names only the defaults taken
    code, out, err = run_cli("finetune", "--task", "vqa", "--fusion", "cross", "--batch-size", "8", "--epochs", "2",
                             "--model", "text_layers=2,dropout=0.1", "--out", "b")
    assert code == 0, err
    c = captured[-1]
    assert (c.fusion, c.batch_size, c.max_steps, c.epochs, c.eval_every) == ("cross", 8, None, 2, 0)
    assert c.model == {"image_size": 64, "drop_stages": 2, "text_layers": 2, "dropout": 0.1}
    assert "--fusion" not in err and "--max-steps" not in err and "--model drop_stages=2,text_layers=1" in err


@pytest.mark.parametrize("args", [
    ("--preset", "tiny"),  # the recipe is the small preset's
    ("--data", "shapes:100"),  # and easy-VQA's
])
def test_easyvqa_recipe_only_for_its_data_and_preset(run_cli, captured, args):
    code, out, err = run_cli("finetune", "--task", "vqa", *args, "--out", "c")
    assert code == 0, err
    c = captured[-1]
    assert (c.fusion, c.batch_size, c.max_steps) == (None, 32, None) and "defaults" not in err
    assert "drop_stages" not in c.model


def test_easyvqa_recipe_with_init_keeps_the_init_model(run_cli, captured):
    code, out, err = run_cli("finetune", "--task", "vqa", "--init", "somewhere", "--out", "d")
    assert code == 0, err
    c = captured[-1]
    assert (c.fusion, c.model, c.batch_size, c.max_steps) == (None, {}, 16, 850)
    assert "--fusion" not in err and "--model" not in err


# ---------------------------------------------------------------------------- --compile


@pytest.mark.slow  # (torch.compile's first step: tens of seconds on a CPU)
def test_compiled_training_learns_like_the_eager_one():
    """--compile: the same loss curve as the eager run to float rounding, validation (run eagerly) and
    a checkpoint with the eager model's names."""
    eager = step_losses(cfg(fusion="cross", max_steps=6, eval_every=6, out="eager"))
    compiled = step_losses(cfg(fusion="cross", max_steps=6, eval_every=6, out="compiled", compile=True))
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4), (compiled, eager)
    from safetensors.torch import load_file

    assert load_file("compiled/best/model.safetensors").keys() == load_file("eager/best/model.safetensors").keys()
    assert rows("compiled", "val")[-1]["val"].keys() == rows("eager", "val")[-1]["val"].keys()
