"""The recipes in examples/*.sh stay runnable: every `mmcli` command in them parses, its options
exist and take the values given, and the run it describes is a valid configuration. The scripts
run under bash as written, with `mmcli` on PATH replaced by a dry run that does all of the
command's checks and then stops before training (RESULTS.md quotes these scripts; an option renamed
in the CLI must not leave them broken)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = sorted((REPO / "examples").glob("*.sh"))

# What `mmcli` is on PATH while a script runs: the real command line up to the training call, which
# instead builds the run's model config (the preset with the --model overrides, the fusion, the
# task's checks) and logs the command. A run from --init takes its model from a run that a dry run
# never made; its options and TrainConfig are still checked.
DRY_RUN = r'''
import sys
from pathlib import Path

import mmcli.cli.options as o
from mmcli.cli import main


def dry_run(cfg, command):
    if cfg.init is None:
        cfg.model_config(vocab_size=100, n_answers=3 if cfg.task == "vqa" else 0)
    with open(LOG, "a") as f:
        f.write(f"{command} {cfg.task} {cfg.out}\n")


LOG = Path(sys.argv[1])
o.run_training = dry_run
sys.exit(main(sys.argv[2:]))
'''


def test_every_script_is_checked():
    assert len(SCRIPTS) >= 8


SIZED = [(REPO / "examples" / name, {"SIZE": "224"})
         for name in ("flickr8k_caption_pretrained.sh", "flickr8k_caption_frozen.sh")]


@pytest.mark.parametrize("script,extra_env", [(p, {}) for p in SCRIPTS] + SIZED,
                         ids=lambda v: v.name if hasattr(v, "name") else ",".join(f"{k}={x}" for k, x in v.items()))
def test_example_script_runs_as_a_dry_run(script, extra_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "dry_run.py").write_text(DRY_RUN)
    log = tmp_path / "commands.log"
    fake = bin_dir / "mmcli"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "dry_run.py"}" "{log}" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "MMCLI_CACHE": str(tmp_path / "cache")}
    env.pop("DATA", None), env.pop("SEED", None), env.pop("SIZE", None)
    env.update(extra_env)  # (SIZE=224: the Flickr8k fine-tunings at another image size)
    # from a scratch directory: the runs/ a script names are never made here, so every branch that
    # trains a missing init run first is taken too
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script.name}: {r.stderr[-2000:]}"
    ran = log.read_text().splitlines() if log.exists() else []
    n_mmcli = sum(line.lstrip().startswith("mmcli ") for line in script.read_text().splitlines())
    assert len(ran) >= n_mmcli, (ran, r.stderr[-2000:])
    if "SIZE" in extra_env:
        assert ran[-1].split()[-1].endswith(f"-{extra_env['SIZE']}px-s0"), ran[-1]
