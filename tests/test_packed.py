"""Inference through oneDNN's prepacked linear layers (mmcli/model/packed.py): the same outputs, the
same state dict and ties, plain F.linear whenever gradients are on, a fresh pack when weights change."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mmcli.config import preset
from mmcli.model import generate
from mmcli.model import packed as packed_mod
from mmcli.model.packed import PackedLinear, pack_linears, packing_available
from mmcli.model.vlm import VLM

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN linear ops")

FUSIONS = ["late", "concat", "cross"]


@pytest.fixture(autouse=True)
def every_layer(monkeypatch):
    """The test models are tiny: pack every layer and train every product through oneDNN."""
    monkeypatch.setattr(packed_mod, "MIN_WEIGHT", 0)
    monkeypatch.setattr(packed_mod, "MIN_TRAIN_ROWS", 0)
VIT = {"patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 4.0}


def model(fusion: str = "cross", vit: bool = False) -> VLM:
    torch.manual_seed(0)
    extra = {"backbone": "vit_base_patch16_224", "backbone_args": VIT} if vit else {}
    return VLM(preset("tiny", fusion=fusion, n_answers=5, vocab_size=50, **extra)).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 64, 64, generator=g)
    ids = torch.randint(6, 50, (3, 7), generator=g)
    ids[:, 0] = 2
    return images, ids, torch.tensor([7, 5, 4])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("vit", [False, True], ids=["cnn", "vit"])
def test_packed_model_gives_the_same_outputs(fusion, vit):
    plain = model(fusion, vit)
    fast = copy.deepcopy(plain)
    assert pack_linears(fast) > 0
    images, ids, lengths = inputs()
    with torch.no_grad():
        img_p, img_f = plain.encode_image(images), fast.encode_image(images)
        torch.testing.assert_close(img_f, img_p, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast.vqa_logits(images, ids, lengths), plain.vqa_logits(images, ids, lengths),
                                   rtol=1e-4, atol=1e-5)
        if fusion != "late":
            torch.testing.assert_close(fast.lm_logits(images, ids), plain.lm_logits(images, ids), rtol=1e-4, atol=1e-5)
            assert generate.greedy(fast, images, 2, 3, 6) == generate.greedy(plain, images, 2, 3, 6)
            assert generate.beam_search(fast, images, 2, 3, 6, beam=2) == generate.beam_search(plain, images, 2, 3, 6,
                                                                                               beam=2)


def test_state_dict_ties_and_gelu_fusion():
    plain = model("cross", vit=True)
    fast = copy.deepcopy(plain)
    n_linear = sum(type(m) is nn.Linear for m in plain.modules())
    assert pack_linears(fast) == n_linear
    assert not any(type(m) is nn.Linear for m in fast.modules())
    sd_p, sd_f = plain.state_dict(), fast.state_dict()
    assert list(sd_f) == list(sd_p) and all(torch.equal(sd_f[k], sd_p[k]) for k in sd_p)
    assert fast.lm_head.weight is fast.tok_emb.weight  # the tie survives
    # the GELU joins fc1 in mmcli's MLP (tanh) and in the timm ViT's (erf); the act is then a no-op
    mlp = fast.fusion_blocks[0].mlp
    assert (mlp.fc1.activation, mlp.fc1.algorithm, type(mlp.act)) == ("gelu", "tanh", nn.Identity)
    vit_mlp = fast.vision.backbone.blocks[0].mlp
    assert (vit_mlp.fc1.activation, vit_mlp.fc1.algorithm, type(vit_mlp.act)) == ("gelu", "none", nn.Identity)
    assert fast.fusion_blocks[0].self_attn.qkv.activation == "none"
    # a packed model loads an unpacked model's checkpoint and the other way round
    plain.load_state_dict(sd_f)
    fast.load_state_dict(sd_p)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_gives_the_same_loss_and_gradients(precision):
    """With gradients on, the products go through oneDNN (input gradient too) or mm (weight gradient)."""
    plain, fast = model(vit=True), model(vit=True)
    pack_linears(fast)
    images, ids, _ = inputs()
    losses = []
    for m in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = m.lm_logits(images, ids).float().square().mean()
        loss.backward()
        losses.append(loss.item())
    tol = {"fp32": dict(rtol=1e-5, atol=1e-7), "bf16": dict(rtol=0.02, atol=1e-3)}[precision]
    assert losses[1] == pytest.approx(losses[0], rel=tol["rtol"])
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert q.grad.dtype == p.dtype
            torch.testing.assert_close(q.grad, p.grad, **tol, msg=name)


def test_autocast_keeps_f_linear_also_without_gradients(monkeypatch):
    """Validation and feature caching under bf16 autocast compute in bf16, as F.linear under autocast."""
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None, raising=False)  # any use would fail
    p = PackedLinear(nn.Linear(8, 4), "gelu", "tanh")
    x = torch.randn(3, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = p(x)
    assert y.dtype == torch.bfloat16


def test_a_frozen_layer_gets_no_weight_gradient():
    lin = nn.Linear(8, 4)
    lin.weight.requires_grad_(False)
    p = PackedLinear(lin)
    x = torch.randn(3, 5, 8, requires_grad=True)
    p(x).sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is not None
    torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(3, 5, 8))


def test_the_flop_counter_counts_packed_products():
    from mmcli.model.vlm import flops_per_sample

    plain = model(vit=True)
    fast = copy.deepcopy(plain)
    pack_linears(fast)
    assert flops_per_sample(fast) == flops_per_sample(plain) > 0


def test_new_weights_are_packed_again():
    """After load_state_dict, an in-place update or a dtype change the outputs follow the weights."""
    fast = model()
    pack_linears(fast)
    other = model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, ids, _ = inputs()
    with torch.no_grad():
        fast.lm_logits(images, ids)  # packs the first weights
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast.lm_logits(images, ids), other.lm_logits(images, ids), rtol=1e-4, atol=1e-5)
        fast.tok_emb.weight.mul_(2.0)  # the tied LM head too
        other.tok_emb.weight.mul_(2.0)
        torch.testing.assert_close(fast.lm_logits(images, ids), other.lm_logits(images, ids), rtol=1e-4, atol=1e-5)
        fast.to(torch.bfloat16), other.to(torch.bfloat16)
        torch.testing.assert_close(fast.lm_logits(images.bfloat16(), ids).float(),
                                   other.lm_logits(images.bfloat16(), ids).float(), rtol=0.05, atol=0.05)


def test_a_mismatched_input_dtype_takes_the_plain_path():
    lin = nn.Linear(8, 4)
    p = PackedLinear(lin, "gelu", "tanh")
    x = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(p.double()(x), torch.nn.functional.gelu(lin.double()(x), approximate="tanh"))


def test_nothing_changes_without_onednn(monkeypatch):
    monkeypatch.setattr(packed_mod, "packing_available", lambda: False)
    m = model()
    assert pack_linears(m) == 0
    assert any(type(x) is nn.Linear for x in m.modules())


def test_small_layers_and_few_rows_keep_f_linear(monkeypatch):
    monkeypatch.setattr(packed_mod, "MIN_WEIGHT", 64 * 64 + 1)
    m = model()  # width 64: its 64 x 64 projections stay, its 64 x 192 and 64 x 256 layers are swapped
    pack_linears(m)
    block = m.fusion_blocks[0]
    assert type(block.cross_attn.q) is nn.Linear and type(block.self_attn.qkv) is PackedLinear
    monkeypatch.setattr(packed_mod, "MIN_TRAIN_ROWS", 10)
    calls = []
    monkeypatch.setattr(packed_mod._OneDNNLinear, "apply", lambda *a: calls.append(1) or torch.zeros(()))
    lin = PackedLinear(nn.Linear(8, 4))
    lin(torch.randn(9, 8))  # 9 rows: F.linear
    assert calls == []
    lin(torch.randn(2, 5, 8))  # 10 rows: oneDNN
    assert calls == [1]


def test_a_used_packed_model_copies_pickles_and_runs_under_inference_mode(tmp_path):
    fast = model()
    pack_linears(fast)
    images, ids, _ = inputs()
    with torch.no_grad():
        want = fast.lm_logits(images, ids)  # packs
    torch.testing.assert_close(_no_grad(copy.deepcopy(fast).lm_logits, images, ids), want)
    torch.save(fast, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(_no_grad(again.lm_logits, images, ids), want)
    with torch.inference_mode():  # weights made here are inference tensors: plain F.linear for them
        lin = nn.Linear(8, 4)
        packed = PackedLinear(lin)
        x = torch.randn(2, 8)
        torch.testing.assert_close(packed(x), lin(x))


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def test_fp32_decoding_folds_the_cross_attention_to_the_same_captions():
    """With packed layers in fp32, generation caches the image itself for the folded cross-attention
    (VLM._cross_fold) and decodes what cached keys and values decode; bf16 keeps the keys and values."""
    fast = model()
    pack_linears(fast)
    images = inputs()[0]
    first = torch.full((3, 1), 1)
    out = {}
    with torch.no_grad():
        for fold in (True, False):
            fast.fold_cross_attention = fold
            state = fast.start(images)
            assert all((c.cross_attn.context is not None) == fold for c in state.fusion_cache)
            out[fold] = (fast.step(first, state), generate.greedy(fast, images, 1, 2, 8, min_len=8))
        torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-5)
        assert out[True][1] == out[False][1]
        fast.fold_cross_attention = True
        fast.to(torch.bfloat16)
        assert all(c.cross_attn.context is None for c in fast.start(images.bfloat16()).fusion_cache)
