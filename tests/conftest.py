from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO = SHARED / "data" / "coco-captions"



@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMCLI_DEBUG", raising=False)
    monkeypatch.setenv("MMCLI_CACHE", str(tmp_path / "mmcli-cache"))  # never write into ~/.cache


@pytest.fixture
def coco_dir() -> Path:
    if not COCO.is_dir():
        pytest.skip(f"{COCO} is missing (the shared data folder is not beside the repository)")
    return COCO


@pytest.fixture
def java() -> str:
    path = shutil.which("java")
    if path is None:
        pytest.skip("java is not installed (pycocoevalcap's tokenizer needs Java)")
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed (pip install -e '.[test]')")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run ``mmcli ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from mmcli.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def write(path: str | os.PathLike, text: str) -> Path:
    p = Path(path)
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def one_thread():
    """Training tests run torch on one thread: two threads on a shared 2-core machine are much
    slower than one, and it keeps runs comparable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stop_and_resume(make_cfg, stop_at: int, **kw):
    """Train run "straight" to the end; train run "resumed" with a stop request after step
    ``stop_at`` (checked: exit 130, status interrupted), then resume it to the end. Returns the
    resumed run's FitResult; the callers compare the two runs."""
    import json

    from mmcli.train import fit, request_stop, resume_config

    fit(make_cfg(out="straight", **kw))

    def stop(step, loss):
        if step == stop_at:
            request_stop()

    stopped = fit(make_cfg(out="resumed", **kw), on_step=stop)
    assert stopped.exit_code == 130 and stopped.steps == stop_at
    assert json.loads(Path("resumed/config.json").read_text())["status"] == "interrupted"
    return fit(resume_config("resumed"))
