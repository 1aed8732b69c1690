"""Training under torchrun: two CPU processes (gloo) train as one process with the same global batch.

One ``torchrun --nproc_per_node 2`` launch (a module fixture) runs every two-process training
these tests look at; the one-process references run in this process. The tiny preset's
backbone (timm's test_resnet) has BatchNorm, which gloo cannot synchronise (PyTorch's
SyncBatchNorm is CUDA only), so the exact comparisons use a BatchNorm-free backbone of the
same size (test_convnext): there the loss curves agree to float rounding (measured: relative
1e-7, asserted 1e-5), and the BatchNorm runs to a stated looser tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmcli import train
from mmcli.errors import UserError
from mmcli.train import TrainConfig, fit

REPO = Path(train.__file__).parents[1]
BASE = dict(data="shapes:40:32", preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2, vocab_size=300,
            max_text_len=24, log_every=1, max_steps=6, eval_every=6, device="cpu", deterministic=True, test=False,
            precision="fp32")  # (exact comparisons: bf16 would round a half batch differently from a whole one)
NO_BN = {"backbone": "test_convnext"}
# name -> TrainConfig changes: trained by 2 processes under torchrun and by 1 here
COMPARED = {
    "caption": dict(task="caption", model=NO_BN),  # LM: a mean over tokens (ranks hold different counts)
    "vqa": dict(task="vqa", model=NO_BN),  # a mean over questions (ranks hold different counts)
    "retrieval": dict(task="retrieval", model=NO_BN),  # ITC over the gathered batch + ITM negatives from it
    "retrieval_accum": dict(task="retrieval", model=NO_BN, batch_size=4, grad_accum=2),
    "pretrain": dict(task="pretrain", model=NO_BN),  # ITC + ITM + LM, weighted
    # unreadable images (BAD_DATA) leave the ranks different numbers of pairs to gather and weigh
    "skipped": dict(task="retrieval", model=NO_BN, data="shapes:48:32"),
    "caption_bn": dict(task="caption"),  # the tiny preset itself: per-rank BatchNorm statistics
    # images each with all their captions (ranks hold different numbers of caption rows), read from the
    # image cache that rank 0 builds while rank 1 waits; LM loss with label smoothing
    "caption_grouped": dict(task="caption", model=NO_BN, group_captions=True, image_cache=True, label_smoothing=0.1),
    # the same for pretraining: ITC over every rank's captions (each image's own all positives), ITM on one
    # caption per image and hard negatives from the gathered batch, LM over all captions
    "pretrain_grouped": dict(task="pretrain", model=NO_BN, group_captions=True, image_cache=True),
    # a frozen backbone's features, cached by rank 0 while rank 1 waits, read by both
    "frozen_cached": dict(task="vqa", model=NO_BN, fusion="late", freeze_backbone=True, feature_cache=True),
}
BAD_DATA, N_BAD = "shapes:48:32", 3  # its first N_BAD train images are overwritten with junk
# the run stopped (asked on rank 0 only) and resumed, against the same run straight through;
# BatchNorm and hard negatives included
RESUMED = dict(task="retrieval", fusion="concat", batch_size=16, max_steps=12, eval_every=4, log_every=5)

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from mmcli.device import rank
    from mmcli.train import TrainConfig, fit, request_stop, resume_config

    out, base, compared, resumed = Path(sys.argv[1]), *map(json.loads, sys.argv[2:5])
    codes = {}
    for name, kw in compared.items():
        result = fit(TrainConfig(**{**base, **kw, "out": str(out / name)}))
        codes[name], codes[name + "_skipped"] = result.exit_code, result.skipped_images
    codes["straight"] = fit(TrainConfig(**{**base, **resumed, "out": str(out / "straight")})).exit_code

    def stop_at_5(step, loss):  # only rank 0 is asked: every rank must stop after the same step
        if step == 5 and rank() == 0:
            request_stop()

    stopped = fit(TrainConfig(**{**base, **resumed, "out": str(out / "stopped")}), on_step=stop_at_5)
    codes["stopped"], codes["stopped_steps"] = stopped.exit_code, stopped.steps
    codes["resumed"] = fit(resume_config(out / "stopped")).exit_code
    (out / f"codes-{rank()}.json").write_text(json.dumps(codes))
""")


def torchrun(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 --standalone ARGS`` on the CPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MMCLI_CACHE": str(cwd / "cache")}
    env.pop("MMCLI_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(two-process run directories, one-process run directories, exit codes per rank)."""
    from mmcli.data.spec import load_dataset

    root = tmp_path_factory.mktemp("ddp")
    (root / "run.py").write_text(SCRIPT)
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMCLI_CACHE", str(root / "cache"))  # the one torchrun uses (see torchrun)
        for record in load_dataset(BAD_DATA).splits["train"].captions[:N_BAD]:
            Path(record.image).write_bytes(b"not a png")
        proc = torchrun(str(root / "run.py"), str(root / "two"), json.dumps(BASE), json.dumps(COMPARED),
                        json.dumps(RESUMED), cwd=root)
        assert proc.returncode == 0, proc.stderr[-4000:]
        torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
        try:
            for name, kw in COMPARED.items():
                fit(TrainConfig(**{**BASE, **kw, "out": str(root / "one" / name)}))
        finally:
            torch.set_num_threads(before)
    codes = [json.loads((root / "two" / f"codes-{r}.json").read_text()) for r in (0, 1)]
    return root / "two", root / "one", codes


def rows(run: Path, key: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "last" / "model.safetensors")


@pytest.mark.slow  # (the module fixture: one torchrun launch of 11 trainings and 8 here: 65 s on a busy machine)
@pytest.mark.parametrize("name", ["caption", "vqa", "retrieval", "retrieval_accum", "pretrain", "skipped",
                                  "caption_grouped", "pretrain_grouped", "frozen_cached"])
def test_two_processes_give_the_one_process_loss_curve(runs, name):
    two, one, codes = runs
    a, b = [r["loss"] for r in rows(one / name, "loss")], [r["loss"] for r in rows(two / name, "loss")]
    assert len(a) == len(b) == 6
    assert b == pytest.approx(a, rel=1e-5), (a, b)
    assert a[-1] < a[0]  # (it learned something, so the comparison is not between two flat lines)
    wa, wb = weights(one / name), weights(two / name)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    va, vb = rows(one / name, "val")[-1]["val"], rows(two / name, "val")[-1]["val"]
    assert va.keys() == vb.keys() and va["n"] == vb["n"]  # rank 0 validated on the whole val split
    assert codes[0][name] == codes[1][name] == 0
    if name == "skipped":  # (every rank reports the images any rank skipped)
        assert codes[0]["skipped_skipped"] == codes[1]["skipped_skipped"] > 0


@pytest.mark.slow
def test_batchnorm_ranks_differ_within_the_stated_tolerance(runs):
    """gloo has no SyncBatchNorm: each rank normalises over its half batch (measured: 4e-4 relative)."""
    two, one, _ = runs
    a, b = [r["loss"] for r in rows(one / "caption_bn", "loss")], [r["loss"] for r in rows(two / "caption_bn", "loss")]
    assert b == pytest.approx(a, rel=5e-3), (a, b)


@pytest.mark.slow
def test_only_rank_0_writes(runs):
    two, _, _ = runs
    for name in (*COMPARED, "straight", "stopped"):
        lines = (two / name / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == len(set(lines)), name  # one writer: no line twice
        steps = [r["step"] for r in rows(two / name, "loss")]
        assert steps == sorted(set(steps)), name
        assert not (two / name / "lock").exists()
    assert json.loads((two / "caption" / "config.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_stop_on_one_rank_stops_all_and_the_resume_is_exact(runs):
    two, _, codes = runs
    for c in codes:
        assert c["stopped"] == 130 and c["stopped_steps"] == 5 and c["resumed"] == 0 and c["straight"] == 0
    a, b = weights(two / "straight"), weights(two / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val = lambda run: [r["val"] for r in rows(run, "val")]  # noqa: E731
    assert val(two / "straight") == val(two / "stopped")


def test_cli_under_torchrun_prints_once(tmp_path):
    proc = torchrun("-m", "mmcli", "finetune", "--task", "caption", "--data", "shapes:40:32", "--preset", "tiny",
                    "--batch-size", "8", "--max-steps", "3", "--device", "cpu", "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("mmcli finetune: run") == 1  # the closing table, from rank 0 only
    assert proc.stdout.count("mmcli: validation at step 3") == 1
    assert "(rank" not in proc.stderr
    lines = Path("run/metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 3  # the step-3 log line, the validation, the test of best/
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "lock").exists()


def test_errors_name_the_rank_and_other_ranks_keep_stdout_quiet(monkeypatch, run_cli):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = run_cli("finetune", "--batch-size", "0")
    assert code == 2 and out == "" and err.startswith("mmcli: error (rank 1): ")
    code, out, err = run_cli("--version")
    assert code == 0 and out == ""  # rank 1 prints nothing on stdout
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli("finetune", "--batch-size", "0")
    assert code == 2 and err.startswith("mmcli: error: ")


def test_one_process_helpers_are_the_identity():
    from mmcli.device import all_ranks, broadcast_object, gather, gather_objects, share, sum_over_ranks, world

    x = torch.randn(3, 2, requires_grad=True)
    out, rows = gather(x)
    assert out is x and rows == slice(0, 3) and world() == 1 and share(7) == 1.0
    assert gather_objects(["a"]) == ["a"] and broadcast_object({"k": 1}) == {"k": 1}
    assert sum_over_ranks([1.5, 2]) == [1.5, 2] and all_ranks(True) and not all_ranks(False)


def test_the_batch_must_split_evenly_over_the_ranks(monkeypatch):
    monkeypatch.setattr(train, "world", lambda: 2)
    with pytest.raises(UserError, match="does not split evenly over 2 processes"):
        train._data_parallel(TrainConfig(batch_size=7), SimpleNamespace(train_set=range(40)))
