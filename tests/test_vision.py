"""The timm adapter: token shapes, freezing, preprocessing config, local weights, errors.

Every backbone here is randomly initialised: no test downloads anything.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from mmcli.errors import UserError
from mmcli.model.vision import VisionTower

CNN, VIT = "resnet10t", "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def cnn() -> VisionTower:
    torch.manual_seed(0)
    return VisionTower(CNN, dim=32, image_size=64)


@pytest.fixture(scope="module")
def vit() -> VisionTower:
    torch.manual_seed(0)
    return VisionTower(VIT, dim=32, image_size=32)


def test_cnn_feature_map_becomes_tokens(cnn):
    out = cnn(torch.randn(2, 3, 64, 64))
    # resnet10t downsamples 32x: a 2x2 map of 512 channels -> 4 tokens
    assert cnn.feature_dim == 512 and cnn.num_prefix_tokens == 0
    assert out.shape == (2, cnn.num_tokens, 32) and cnn.num_tokens == 4
    # flattening keeps the (B, C, h, w) -> (B, h*w, C) correspondence
    x = torch.randn(1, 3, 64, 64)
    fmap = cnn.backbone(x.contiguous(memory_format=torch.channels_last))  # (the tower's input layout)
    assert torch.equal(cnn.features(x)[0, 1], fmap[0, :, 0, 1])
    # channels-last input (faster convolutions) changes the kernels' summation order only
    torch.testing.assert_close(cnn.features(x), cnn.backbone(x).flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-5)


def test_vit_tokens_keep_the_class_token(vit):
    out = vit(torch.randn(2, 3, 32, 32))
    # 32/16 = 2x2 patches + 1 class token
    assert vit.num_prefix_tokens == 1 and vit.num_tokens == 5
    assert out.shape == (2, 5, 32)


def test_every_parameter_gets_a_gradient(cnn):
    cnn.zero_grad()
    cnn.train()
    cnn(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None for p in cnn.parameters())
    cnn.eval()


def test_frozen_backbone_stays_frozen_and_in_eval_mode():
    tower = VisionTower(CNN, dim=16, image_size=64, freeze=True)
    tower.train()
    assert tower.training and tower.proj.training
    assert not tower.backbone.training
    assert not any(m.training for m in tower.backbone.modules())
    stats = {k: v.clone() for k, v in tower.backbone.state_dict().items()}
    tower(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in tower.backbone.parameters())
    assert tower.proj.weight.grad is not None
    # BatchNorm running statistics did not move in "training"
    assert all(torch.equal(v, tower.backbone.state_dict()[k]) for k, v in stats.items())


def test_data_config_is_plain_and_sized(cnn, vit):
    for tower, size in ((cnn, 64), (vit, 32)):
        cfg = tower.data_config
        assert set(cfg) == {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"}
        assert cfg["input_size"] == (3, size, size)
        assert isinstance(cfg["interpolation"], str) and isinstance(cfg["crop_mode"], str)
        assert isinstance(cfg["crop_pct"], float) and 0 < cfg["crop_pct"] <= 1
        assert len(cfg["mean"]) == len(cfg["std"]) == 3
        assert all(type(v) is float for v in cfg["mean"] + cfg["std"])
    assert vit.data_config["mean"] == (0.5, 0.5, 0.5)  # the ViT's own normalisation, not ImageNet's


def test_data_config_feeds_make_transform(cnn):
    from PIL import Image

    from mmcli.data.images import make_transform

    x = make_transform(cnn.data_config)(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert x.shape == (3, 64, 64)


def test_flops_are_counted(cnn):
    assert cnn.flops_per_image() > 1e7  # resnet10t at 64x64: about 1.8e8


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = VisionTower(CNN, dim=8, image_size=64)
    path = tmp_path / f"backbone{suffix}"
    state = source.backbone.state_dict()
    if suffix == ".safetensors":
        save_file(state, path)
    else:  # a torchvision-style training checkpoint, wrapped and with a classifier
        state = {**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
        torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(2)
    tower = VisionTower(CNN, dim=8, image_size=64, weights=path)
    assert tower.weights_info.startswith("loaded ")
    x = torch.randn(2, 3, 64, 64)
    source.eval(), tower.eval()
    assert torch.equal(tower.features(x), source.features(x))


def test_vit_weights_from_another_image_size(tmp_path):
    from safetensors.torch import save_file

    source = VisionTower(VIT, dim=8, image_size=64)  # 4x4 patches + class token
    save_file(source.backbone.state_dict(), tmp_path / "vit.safetensors")
    tower = VisionTower(VIT, dim=8, image_size=32, weights=tmp_path / "vit.safetensors")
    assert tower.backbone.pos_embed.shape == (1, 5, 192)
    assert torch.equal(tower.backbone.cls_token, source.backbone.cls_token)


def test_weights_of_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(VisionTower(VIT, dim=8, image_size=32).backbone.state_dict(), tmp_path / "vit.safetensors")
    with pytest.raises(UserError, match=r"vit\.safetensors: does not fit backbone resnet10t") as e:
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "vit.safetensors")
    assert "\n" not in str(e.value)


def test_resnet18_weights_into_resnet10t_report_shapes(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18\.pth: does not fit .*unexpected"):
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "r18.pth")


class _Evil:
    """Unpickling this calls open(marker, "w"): it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_never_run(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "x": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match=r"evil\.pth: refused: .*GLOBAL"):
        VisionTower(CNN, dim=8, image_size=64, weights=path)
    assert not marker.exists()


def test_bad_weights_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(UserError, match=r"junk\.safetensors: not a valid safetensors file"):
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match=r"nothere\.pth: weights file not found"):
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "nothere.pth")
    with pytest.raises(UserError, match=r"nothere: weights file not found"):  # (missing first, whatever its name)
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "nothere")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(UserError, match=r"w\.npz: unknown weights format '\.npz'"):
        VisionTower(CNN, dim=8, image_size=64, weights=tmp_path / "w.npz")


def test_unknown_model_name():
    with pytest.raises(UserError, match=r"unknown timm model 'resnet_nope'.*list_models"):
        VisionTower("resnet_nope", dim=8, image_size=64)


def test_pretrained_download_failure_is_a_user_error(monkeypatch):
    # timm's download is replaced by a failure: nothing touches the network
    import mmcli.model.vision as vision

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=pretrained, **kwargs)

    real = vision.timm.create_model
    monkeypatch.setattr(vision.timm, "create_model", offline)
    with pytest.raises(UserError, match=r"needs the network.*--backbone-weights FILE"):
        VisionTower(CNN, dim=8, image_size=64, pretrained=True)


def test_pretrained_and_local_weights_together_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"not both"):
        VisionTower(CNN, dim=8, image_size=64, pretrained=True, weights=tmp_path / "w.safetensors")


def test_drop_stages_gives_finer_tokens_and_loads_full_weights(tmp_path):
    from safetensors.torch import save_file

    full = VisionTower(CNN, dim=8, image_size=64)
    cut = VisionTower(CNN, dim=8, image_size=64, drop_stages=1)
    # one stage less: stride 16 instead of 32, so 4x4 tokens of the third stage's 256 channels
    assert (cut.num_tokens, cut.feature_dim) == (16, 256)
    assert cut(torch.randn(2, 3, 64, 64)).shape == (2, 16, 8)
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters())
    # weights saved from the whole backbone load before the cut (no "unexpected keys" for layer4)
    save_file(full.backbone.state_dict(), tmp_path / "full.safetensors")
    loaded = VisionTower(CNN, dim=8, image_size=64, drop_stages=1, weights=tmp_path / "full.safetensors")
    assert torch.equal(loaded.backbone.conv1[0].weight, full.backbone.conv1[0].weight)


@pytest.mark.parametrize("k", [5, -1])
def test_drop_stages_out_of_range_is_a_user_error(k):
    with pytest.raises(UserError, match="cannot drop"):
        VisionTower(CNN, dim=8, image_size=64, drop_stages=k)


def test_backbone_args_build_another_size_of_the_family():
    tower = VisionTower("vit_base_patch16_224", dim=16, image_size=32, args={"depth": 2, "embed_dim": 48, "num_heads": 3})
    assert len(tower.backbone.blocks) == 2 and tower.feature_dim == 48 and tower.num_tokens == 5  # 2x2 + class
    with pytest.raises(UserError, match="cannot build it at image size 32 with no_such_arg=1"):
        VisionTower("vit_base_patch16_224", dim=16, image_size=32, args={"no_such_arg": 1})


def test_model_option_backbone_args():
    from mmcli.config import parse_model_overrides

    assert parse_model_overrides("backbone.depth=4,backbone.embed_dim=256,dim=128,backbone.qkv_bias=false") == \
        {"backbone_args": {"depth": 4, "embed_dim": 256, "qkv_bias": False}, "dim": 128}
    for spec, message in (("backbone.depth=2,backbone.depth=3", "given twice"),
                          ("backbone_args=x", "backbone.NAME=VALUE"), ("backbone.2x=1", "not a keyword argument")):
        with pytest.raises(UserError, match=message):
            parse_model_overrides(spec)


def test_vit_attention_takes_mmcli_s_path_per_precision(vit):
    """A timm ViT's attention follows mmcli's rule: its plain matmul-softmax for bf16 on a CPU, SDPA
    otherwise; both give the same tokens."""
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = vit(x)
        assert not any(m.fused_attn for m in vit._timm_attention) and vit._timm_attention
        with torch.no_grad():
            inferred = vit(x)
            assert not any(m.fused_attn for m in vit._timm_attention)
    full = vit(x)
    assert all(m.fused_attn for m in vit._timm_attention)
    assert torch.allclose(trained.float(), inferred.float(), atol=0.1)
    assert torch.allclose(trained.float(), full, atol=0.1)
