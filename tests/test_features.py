"""--freeze-backbone and --feature-cache: the frozen backbone's features computed once, stored, reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmcli.errors import UserError
from mmcli.train import TrainConfig, fit

DATA = "shapes:40:32"  # 32 train, 4 val, 4 test images

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> TrainConfig:
    base = dict(task="vqa", data=DATA, out="run", preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2,
                vocab_size=300, max_text_len=24, log_every=5, max_steps=20, eval_every=20, test=False,
                fusion="late")
    return TrainConfig(**{**base, **kw})


def backbone(run: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(Path(run) / "last" / "model.safetensors").items()
            if k.startswith("vision.backbone.")}


def losses(c: TrainConfig) -> list[float]:
    out = []
    fit(c, on_step=lambda step, loss: out.append(loss))
    return out


def test_frozen_backbone_keeps_its_weights_and_the_rest_learns():
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)  # the run seeds itself with seed 0 too: its initial backbone is this one
    c = cfg(freeze_backbone=True)
    start = {f"vision.backbone.{k}": v for k, v in VLM(c.model_config(vocab_size=300, n_answers=1)).vision.backbone
             .state_dict().items()}
    curve = losses(c)
    after = backbone("run")
    assert after.keys() and all(torch.equal(after[k], start[k]) for k in after if "num_batches" not in k)
    assert sum(curve[-5:]) < sum(curve[:5]), curve
    saved = json.loads(Path("run/config.json").read_text())
    assert saved["model"]["freeze_backbone"] is True and saved["train"]["freeze_backbone"] is True


@pytest.mark.parametrize("model", [{}, {"image_adapter": 16}], ids=["projection", "adapter"])
def test_feature_cache_trains_as_the_frozen_backbone_does(capsys, model):
    """With the cache the steps see the same tokens (stored in bf16) as the frozen backbone computes:
    the loss curves agree to bf16 rounding; a second run reuses the cache instead of building it. The
    image adapter (a residual MLP over the tokens, trained) takes cached tokens as the backbone's."""
    plain = losses(cfg(freeze_backbone=True, out="plain", model=model))
    capsys.readouterr()
    cached = losses(cfg(freeze_backbone=True, feature_cache=True, out="cached", model=model))
    err = capsys.readouterr().err
    assert "feature cache" in err and "built (40 images)" in err
    assert cached == pytest.approx(plain, rel=2e-2), (cached, plain)
    assert sum(cached[-5:]) < sum(cached[:5]), cached
    again = losses(cfg(freeze_backbone=True, feature_cache=True, out="again", model=model))
    assert "reusing it (40 images)" in capsys.readouterr().err
    assert again == cached  # the same stored features, the same seed: the same run


def test_cached_tokens_are_the_backbones_features_of_the_eval_image():
    from mmcli.data.features import FeatureCache
    from mmcli.data.images import cache_root, make_transform
    from mmcli.data.loaders import ImageSource
    from mmcli.data.spec import load_dataset
    from mmcli.model.vlm import load_model

    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2))
    (where,) = [p for p in cache_root().glob("features-*") if (p / "index.json").is_file()]
    cache = FeatureCache.open(where)
    model, _ = load_model("run/last")
    path = load_dataset(DATA).splits["val"].questions[0].image
    image = ImageSource(make_transform(model.vision.data_config))(path)
    with torch.no_grad():
        expected = model.vision.features(image[None])[0]
    assert torch.allclose(cache.get(path), expected, rtol=1e-2, atol=1e-2)
    with torch.no_grad():  # the tower takes the tokens as they are: only its projection runs
        assert torch.allclose(model.vision(cache.get(path)[None]), model.vision(image[None]), atol=5e-2)


def test_another_backbone_gets_another_cache():
    from mmcli.data.images import cache_root

    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2, out="a"))
    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2, out="b", seed=1))
    assert len([p for p in cache_root().glob("features-*") if (p / "index.json").is_file()]) == 2


def test_a_planted_pickle_or_a_torn_cache_is_rebuilt(capsys):
    import pickle

    from mmcli.data.images import cache_root

    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2, out="a"))
    (where,) = list(cache_root().glob("features-*"))
    marker = Path("pwned")
    (where / "features.npy").write_bytes(pickle.dumps(_Boom()))
    capsys.readouterr()
    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2, out="b"))
    assert "built (40 images)" in capsys.readouterr().err and not marker.exists()
    (where / "index.json").unlink()  # killed while building: no index
    fit(cfg(freeze_backbone=True, feature_cache=True, max_steps=2, eval_every=2, out="c"))
    assert "built (40 images)" in capsys.readouterr().err


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def test_errors():
    with pytest.raises(UserError, match="--augment light would need new ones every epoch"):
        cfg(freeze_backbone=True, feature_cache=True, augment="light")
    with pytest.raises(UserError, match="--feature-cache needs a frozen backbone"):
        fit(cfg(feature_cache=True))


def test_cli_flags(run_cli):
    code, out, err = run_cli("finetune", "--task", "vqa", "--data", DATA, "--preset", "tiny", "--fusion", "late",
                             "--freeze-backbone", "--feature-cache", "--max-steps", "2", "--batch-size", "8",
                             "--vocab-size", "300", "--no-test", "--out", "ft")
    assert code == 0, err
    saved = json.loads(Path("ft/config.json").read_text())["train"]
    assert saved["freeze_backbone"] is True and saved["feature_cache"] is True
    code, out, err = run_cli("finetune", "--task", "vqa", "--data", DATA, "--preset", "tiny", "--feature-cache",
                             "--augment", "light", "--out", "bad")
    assert code == 2 and err.count("\n") == 1 and "--feature-cache" in err
