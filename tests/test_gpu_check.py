"""benchmarks/gpu_check.sh, the one-shot script for a lent GPU, runs its steps and reports their failures:
checked here on the CPU (``SMOKE=1``: toy sizes), so that a GPU's few minutes are not spent on the script."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def run(tmp_path: Path, python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


def status(tmp_path: Path) -> dict[str, int]:
    lines = (tmp_path / "out" / "status.txt").read_text().split("\n")
    return {name: int(rc) for name, rc in (line.split() for line in lines if line)}


def test_a_failed_preflight_stops_before_the_steps(tmp_path):
    proc = run(tmp_path, "false")  # a python that cannot import anything
    assert proc.returncode == 1
    assert "preflight failed" in proc.stderr
    assert status(tmp_path) == {"preflight": 1}
    assert not (tmp_path / "out" / "tests.txt").exists()


def test_every_step_runs_and_a_failed_one_fails_the_script(tmp_path):
    """A python that fails benchmarks/peer_hf.py alone: the other steps still run and pass, status.txt names the
    failure and the script exits 1."""
    pytest.importorskip("transformers", reason="the preflight imports transformers (pip install -e '.[bench]')")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *peer_hf.py*) exit 3;; esac\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    proc = run(tmp_path, str(wrapper))
    assert status(tmp_path) == {"tests": 0, "peer_hf": 3, "presets": 0, "fold": 0}, proc.stderr[-2000:]
    assert proc.returncode == 1
    assert "step 'peer_hf' failed (exit 3)" in proc.stderr
    out = tmp_path / "out"
    assert "mmcli from" in (out / "gpu.txt").read_text()
    assert "skipped" in (out / "tests.txt").read_text()  # no CUDA device here: test_cuda.py skips
    assert "cached" in (out / "base.txt").read_text() and "speed-up folded" in (out / "fold.txt").read_text()
