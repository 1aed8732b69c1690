"""Crash safety: SIGKILL at any moment (during checkpoint writes too), a full disk while saving,
and two runs pointed at one directory. A run directory always holds a loadable checkpoint once
it has written one, and ``--resume`` continues to the same weights as an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mmcli import train
from mmcli.checkpoint import load_checkpoint
from mmcli.errors import UserError
from mmcli.train import TrainConfig, fit, resume_config

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "shapes:40:32"
RUN = dict(task="vqa", data=DATA, preset="tiny", batch_size=8, vocab_size=300, max_steps=30, eval_every=2,
           log_every=1, deterministic=True, test=False)

# A training child process. It announces each checkpoint write ("saving NAME") and then takes
# 0.3 s inside it, between the weights and the rest, so that the parent can kill it mid-write.
CHILD = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from mmcli import checkpoint, train
    real = checkpoint._write_files
    def slow(tmp, *args):
        print(f"saving {{tmp.name}}", flush=True)
        sizes = real(tmp, *args)
        time.sleep(0.3)
        return sizes
    checkpoint._write_files = slow
    cfg = train.TrainConfig(**{cfg})
    if {resume}:
        cfg = train.resume_config("run")
    sys.exit(train.fit(cfg).exit_code)
""")


def _child(resume: bool) -> subprocess.Popen:
    script = CHILD.format(cfg=repr({**RUN, "out": "run"}), resume=resume)
    env = {**os.environ, "PYTHONPATH": str(Path(train.__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _kill_when(proc: subprocess.Popen, how: str, rng: random.Random) -> None:
    """SIGKILL the child: inside its 2nd-5th checkpoint write, or inside its 3rd-7th step."""
    left = rng.randint(2, 5) if how == "saving" else rng.randint(3, 7)
    for line in proc.stdout:
        if line.startswith("saving ." if how == "saving" else "step "):
            left -= 1
            if left == 0:
                time.sleep(rng.uniform(0.0, 0.25))  # somewhere inside that write (0.3 s) or step
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _checkpoint_step() -> int | None:
    """The step of the run's loadable last/ (found aside too), or None before the first one."""
    if not any(Path("run", n).exists() for n in ("last", ".last.old")):
        return None
    ck = load_checkpoint("run/last")  # reads config, weights and tokenizer; raises on anything torn
    assert ck.state_dict
    return ck.train_state["loop"]["step"]


def test_sigkill_at_random_moments_always_leaves_a_checkpoint_and_resume_is_exact():
    fit(TrainConfig(**{**RUN, "out": "straight"}))
    rng = random.Random(1234)
    steps_seen, kills = [], 0
    for how in ("saving", "steps", "saving", "steps", "saving"):
        resume = _checkpoint_step() is not None
        if not resume:  # killed before its first checkpoint: start again, as the resume error says
            shutil.rmtree("run", ignore_errors=True)
        proc = _child(resume)
        _kill_when(proc, how, rng)
        if proc.returncode == 0:  # it finished before the kill came
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        kills += 1
        step = _checkpoint_step()
        if steps_seen:
            assert step is not None and step >= steps_seen[-1]  # never lost once written
        if step is not None:
            steps_seen.append(step)
    assert kills >= 4 and steps_seen, (kills, steps_seen)
    proc = _child(resume=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = load_checkpoint("straight/last").state_dict, load_checkpoint("run/last").state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the log of the resumed run has each step once, with the straight run's losses
    assert _losses("run") == _losses("straight")
    assert not [p.name for p in Path("run").iterdir() if p.name.startswith(".")]  # no temporary left


def _losses(run: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(monkeypatch):
    import safetensors.torch

    real, saves = safetensors.torch.save_model, []

    def full_disk(model, filename, *args, **kwargs):
        saves.append(filename)
        if sum(".last.tmp-" in str(f) for f in saves) == 2:  # last/ at step 4 (the first is at step 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(model, filename, *args, **kwargs)

    with monkeypatch.context() as m, pytest.raises(
            UserError, match=r"cannot write the checkpoint \(No space left on device\); the previous checkpoint "
                             r"there is kept intact"):
        m.setattr(safetensors.torch, "save_model", full_disk)
        fit(TrainConfig(**{**RUN, "out": "run"}))
    assert load_checkpoint("run/last").train_state["loop"]["step"] == 2  # the one before the full disk
    load_checkpoint("run/best")
    assert json.loads(Path("run/config.json").read_text())["status"] == "failed"
    assert not [p.name for p in Path("run").iterdir() if p.name.startswith(".")]
    assert not Path("run/lock").exists()
    # and the run goes on from it once there is space again
    result = fit(resume_config("run"))
    assert result.steps == RUN["max_steps"]


def test_two_runs_on_one_directory_cannot_corrupt_each_other():
    proc = _child(resume=False)
    try:
        for line in proc.stdout:  # the first run is training and holds the lock
            if line.startswith("step "):
                break
        for cfg in (TrainConfig(**{**RUN, "out": "run"}), None):
            with pytest.raises(UserError, match=r"run is in use by a running training \(pid \d+\)"):
                fit(cfg or resume_config("run"))
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert load_checkpoint("run/last").train_state["loop"]["step"] == RUN["max_steps"]
    steps = [s for s, _ in _losses("run")]
    assert steps == sorted(set(steps)) == list(range(1, RUN["max_steps"] + 1))
