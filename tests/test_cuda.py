"""The CUDA code paths: training in each precision, generation, the feature cache, inference weights.

Skipped without a CUDA device (as on the 2-core development machine); ``bash benchmarks/gpu_check.sh``
runs them on a lent GPU together with the GPU benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmcli.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DATA = "shapes:40:32"


def cfg(out="run", **kw) -> TrainConfig:
    base = dict(task="caption", data=DATA, out=out, preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2,
                vocab_size=300, max_text_len=24, log_every=5, max_steps=20, eval_every=20, device="cuda", test=False)
    return TrainConfig(**{**base, **kw})


def losses(run: str) -> list[float]:
    return [r["loss"] for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
@pytest.mark.parametrize("task,fusion", [("caption", "cross"), ("vqa", "late"), ("retrieval", "concat")])
def test_training_learns_on_cuda(task, fusion, precision):
    out = f"run-{task}-{precision}"
    result = fit(cfg(task=task, fusion=fusion, precision=precision, out=out))
    curve = losses(out)
    assert result.exit_code == 0 and curve[-1] < 0.9 * curve[0], curve


def test_grouped_pretraining_with_the_feature_cache_on_cuda():
    result = fit(cfg(task="pretrain", fusion="cross", group_captions=True, freeze_backbone=True, feature_cache=True,
                     lr=5e-4, max_steps=40, eval_every=40, precision="bf16"))
    assert result.exit_code == 0 and losses("run")[-1] < losses("run")[0]


def test_resume_on_cuda_continues_the_same_run():
    from conftest import stop_and_resume
    from safetensors.torch import load_file

    def make(**kw):
        return cfg(deterministic=True, precision="fp32", max_steps=12, eval_every=6, **kw)

    resumed = stop_and_resume(make, 5)
    assert resumed.exit_code == 0 and resumed.steps == 12
    a, b = (load_file(Path(r) / "last" / "model.safetensors") for r in ("straight", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_cached_decoding_equals_a_full_forward_on_cuda():
    from mmcli.config import preset
    from mmcli.model.vlm import VLM

    torch.manual_seed(0)
    model = VLM(preset("tiny", vocab_size=50)).cuda().eval()
    images = torch.randn(2, 3, 64, 64, device="cuda")
    ids = torch.randint(3, 50, (2, 9), device="cuda")
    with torch.no_grad():
        full = model.lm_logits(images, ids)
        state = model.start(images)
        stepped = torch.cat([model.step(ids[:, t : t + 1], state) for t in range(ids.shape[1])], dim=1)
    assert torch.allclose(full, stepped, atol=1e-4)


def test_inference_in_bf16_weights_matches_fp32_on_cuda(tmp_path):
    import mmcli
    from mmcli.data.spec import load_dataset

    fit(cfg(max_steps=30, eval_every=30))
    images = [r.image for r in load_dataset(DATA).splits["val"].captions[:4]]
    fp32 = mmcli.load("run", device="cuda", precision="fp32")
    bf16 = mmcli.load("run", device="cuda", precision="bf16")
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    same = sum(a == b for a, b in zip(fp32.caption(images), bf16.caption(images)))
    assert same >= len(images) // 2  # bf16 may flip a near tie; most captions agree
