"""The training loop end to end on tiny synthetic data: learning, resuming, stopping, failing safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmcli import train
from mmcli.errors import UserError
from conftest import stop_and_resume
from mmcli.train import TrainConfig, fit

DATA = "shapes:40:32"  # 32 train, 4 val, 4 test images


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> TrainConfig:
    base = dict(task="caption", data=DATA, out="run", preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2,
                vocab_size=300, max_text_len=24, log_every=5, max_steps=20, eval_every=20)
    return TrainConfig(**{**base, **kw})


def rows(run: str | Path, key: str) -> list[dict]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


def weights(run: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(run) / "last" / "model.safetensors")


@pytest.mark.parametrize("task,fusion", [("caption", "concat"), ("caption", "cross"), ("vqa", "late"),
                                         ("vqa", "concat"), ("vqa", "cross"), ("retrieval", "cross")])
def test_loss_goes_down(task, fusion):
    # (the contrastive loss of this tiny set collapses to chance at 2e-3, in either precision: 5e-4 learns,
    # more slowly)
    slow = {"lr": 5e-4, "max_steps": 40, "eval_every": 40, "log_every": 10} if task == "retrieval" else {}
    result = fit(cfg(task=task, fusion=fusion, **slow))
    losses = [r["loss"] for r in rows("run", "loss")]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    assert result.steps == slow.get("max_steps", 20) and result.best is not None and result.exit_code == 0
    # every log row carries the process's memory (a long run shows whether it grows)
    assert all(0 < r["rss_anon_mb"] < r["rss_mb"] < 64_000 for r in rows("run", "loss"))
    val = rows("run", "val")[-1]["val"]
    assert result.metric in val and val["n"] == (4 if task != "vqa" else val["n"])
    from mmcli.model.vlm import load_model

    model, ckpt = load_model("run/best")  # best/ is an inference checkpoint: no train state
    assert ckpt.config["task"] == task and not ckpt.has_train_state
    assert json.loads(Path("run/config.json").read_text())["status"] == "finished"


def test_resume_is_bit_identical():
    """Stop at step 5 (mid-epoch), resume to 14 (past an epoch end and two validations)."""
    kw = dict(task="retrieval", fusion="concat", batch_size=16, max_steps=14, eval_every=4, deterministic=True)
    result = stop_and_resume(cfg, 5, **kw)
    assert result.steps == 14
    a, b = weights("straight"), weights("resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val = lambda run: [r["val"] for r in rows(run, "val")]  # noqa: E731
    assert val("straight") == val("resumed")


def test_sigterm_saves_last_and_exits_143(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from mmcli.train import TrainConfig, fit
        r = fit(TrainConfig(task="vqa", data="{DATA}", out="run", preset="tiny", batch_size=8,
                            vocab_size=300, max_steps=100000, log_every=1))
        sys.exit(r.exit_code)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(train.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("step "):
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "--resume run" in err
    from mmcli.checkpoint import load_checkpoint

    state = load_checkpoint("run/last").train_state
    assert state["loop"]["step"] >= 1
    assert not Path("run/lock").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(monkeypatch):
    real, calls = train.LOSSES["caption"], []

    def poisoned(model, batch, s):
        calls.append(1)
        loss = real(model, batch, s)
        return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setitem(train.LOSSES, "caption", poisoned)
    with pytest.raises(UserError, match=r"loss became nan at step 7 .*run/last"):
        fit(cfg(eval_every=3))
    from mmcli.checkpoint import load_checkpoint

    assert load_checkpoint("run/last").train_state["loop"]["step"] == 6  # the last good one
    assert json.loads(Path("run/config.json").read_text())["status"] == "failed"
    assert not [p for p in Path("run").iterdir() if p.name.startswith(".")]  # no half-written checkpoint
    assert not Path("run/lock").exists()


def test_run_directory_lock_and_reuse():
    Path("run").mkdir()
    Path("run/lock").write_text(f"{os.getpid()}\n")  # a live process holds it
    with pytest.raises(UserError, match="in use by a running training"):
        fit(cfg(max_steps=1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path("run/lock").write_text(f"{dead.pid}\n")  # stale: taken over
    fit(cfg(max_steps=1))
    with pytest.raises(UserError, match="already holds a finished run; continue it with --resume run"):
        fit(cfg(max_steps=1))
    with pytest.raises(UserError, match=r"other settings \(seed 0 -> 1\)"):
        fit(cfg(max_steps=2, seed=1, resume="run"))


def test_late_fusion_caption_is_refused_before_any_work():
    with pytest.raises(UserError, match="--fusion late cannot do caption"):
        fit(cfg(fusion="late"))
    assert not Path("run").exists()


def test_validation_uses_val_never_test(monkeypatch):
    from mmcli.data import spec
    from mmcli.data.records import Dataset

    c = cfg()
    train_split, val, test = train._splits(c)
    full = spec.load_dataset(DATA)
    assert val is full.splits["val"] or val.captions == full.splits["val"].captions
    test_ids = set(full.splits["test"].images())
    assert test is full.splits["test"] or test.captions == full.splits["test"].captions  # for the final test only
    assert test_ids.isdisjoint(val.images()) and test_ids.isdisjoint(train_split.images())

    # no val split: a seeded 10% of the train images, disjoint from the rest; test still unused
    no_val = Dataset(DATA, {"train": full.splits["train"], "test": full.splits["test"]})
    monkeypatch.setattr(spec, "load_dataset", lambda s, **kw: no_val)
    t1, v1, _ = train._splits(c)
    t2, v2, _ = train._splits(c)
    assert v1.images() == v2.images() and len(v1.images()) == 4
    assert set(v1.images()).isdisjoint(t1.images()) and test_ids.isdisjoint(v1.images())
    assert len(t1.images()) + len(v1.images()) == len(full.splits["train"].images())


def test_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.7, 0.3, 0.0], [0.0, 0.1, 0.5]])  # 4 texts x 3 images
    owner = torch.tensor([0, 1, 1, 2])  # text 2 belongs to image 1 but prefers image 0
    r = train.recall_at_k(sim, owner, ks=(1, 2))
    assert r["t2i_r1"] == 75.0 and r["t2i_r2"] == 100.0
    assert r["i2t_r1"] == 100.0  # each image's best text is one of its own


def test_warmup_cosine_and_param_groups():
    f = train.WarmupCosine(warmup=4, total=14, floor=0.1)
    assert f(0) == pytest.approx(0.2) and f(3) == pytest.approx(0.8) and f(4) == 1.0
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    from mmcli.config import preset
    from mmcli.model.vlm import VLM

    model = VLM(preset("tiny", fusion="concat"))
    decay, plain = train.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in plain["params"]} >= {"tok_emb.weight", "text_pos", "image_pos", "logit_scale"}
    assert all(p.dim() >= 2 for p in decay["params"])


def test_cli_finetune():
    import typer
    from typer.testing import CliRunner

    from mmcli.cli.finetune import finetune

    app = typer.Typer()
    app.command()(finetune)
    args = ["--task", "vqa", "--data", DATA, "--preset", "tiny", "--max-steps", "2", "--batch-size", "8",
            "--out", "cli-run", "--fusion", "late"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "best vqa_accuracy" in res.output
    res = CliRunner().invoke(app, ["--resume", "cli-run", "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads(Path("cli-run/config.json").read_text())["steps"] == 3
    # the run ends with its curves (matplotlib is in the test extra)
    pytest.importorskip("matplotlib")
    assert Path("cli-run/curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_training_image_is_skipped_once_or_fatal_with_strict(capsys):
    from mmcli.data.spec import load_dataset

    bad = load_dataset(DATA).splits["train"].captions[0].image
    Path(bad).write_bytes(b"not a png")  # the shapes cache lives in this test's MMCLI_CACHE
    result = fit(cfg(max_steps=45, eval_every=45, batch_size=16, log_every=50))  # several epochs
    err = capsys.readouterr().err
    assert result.skipped_images == 1 and err.count(f"skipping {bad}") == 1
    with pytest.raises(UserError, match="--strict"):
        fit(cfg(out="strict", strict=True, batch_size=16))


def test_vqa_grouped_and_final_test():
    """VQA trains on images grouped with their questions; best/ is evaluated once on the test split."""
    from mmcli.data.loaders import Batch
    from mmcli.model.vlm import VLM
    from mmcli.config import preset

    result = fit(cfg(task="vqa", fusion="cross", max_steps=6, eval_every=3))
    assert result.test is not None and result.test["n"] > 0
    saved = json.loads(Path("run/results.json").read_text())
    assert saved["metric"] == "vqa_accuracy" and saved["test"] == result.test
    assert saved["best_val"] == result.best
    assert rows("run", "split")[-1]["split"] == "test"
    # the grouped path gives the same logits as encoding the image once per question
    model = VLM(preset("tiny", n_answers=5, vocab_size=50)).eval()
    images, owner = torch.randn(2, 3, 64, 64), torch.tensor([0, 0, 1])
    ids, lens = torch.randint(4, 50, (3, 5)), torch.tensor([5, 3, 4])
    grouped = Batch(images=images, image_ids=["a", "b"], text=ids, text_len=lens, text_image=owner)
    with torch.no_grad():
        a = train.vqa_batch_logits(model, grouped)
        b = model.vqa_logits(images[owner], ids, lens)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_no_test_flag_skips_the_test_split():
    result = fit(cfg(task="vqa", fusion="late", max_steps=3, eval_every=3, test=False))
    assert result.test is None and not Path("run/results.json").exists()
