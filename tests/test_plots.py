"""curves.png from metrics.jsonl: parsing (torn lines, resumed runs) and the optional matplotlib."""

from __future__ import annotations

import builtins
import json

import pytest

from mmcli.plots import read_metrics, write_curves


def _write(run, rows, torn=False):
    run.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run / "metrics.jsonl").write_text(text + ('{"step": 9, "lo' if torn else ""))


ROWS = [{"step": 10, "loss": 2.0, "lr": 1e-3}, {"step": 20, "loss": 1.5, "lr": 1e-3},
        {"step": 20, "epoch": 0, "val": {"vqa_accuracy": 50.0}, "best": 50.0},
        {"step": 30, "loss": 1.0, "lr": 1e-3}, {"step": 30, "epoch": 0, "val": {"vqa_accuracy": 70.0}, "best": 70.0},
        {"split": "test", "step": 30, "test": {"vqa_accuracy": 69.0}}]


def test_read_metrics_splits_rows_and_skips_torn_lines(tmp_path):
    _write(tmp_path / "run", ROWS, torn=True)
    train, val = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in train] == [10, 20, 30]
    assert [r["val"]["vqa_accuracy"] for r in val] == [50.0, 70.0]  # the test row is not a validation


def test_write_curves_makes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _write(tmp_path / "run", ROWS)
    out = write_curves(tmp_path / "run", "vqa_accuracy")
    assert out == tmp_path / "run" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_without_matplotlib_nothing_is_written(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    _write(tmp_path / "run", ROWS)
    assert write_curves(tmp_path / "run", "vqa_accuracy") is None
    assert not (tmp_path / "run" / "curves.png").exists()
