"""``mmcli data stats`` and ``mmcli data shapes`` through the real entry point."""

from __future__ import annotations

import json

import pytest


def test_easyvqa_stats_counts_and_blind_baselines(run_cli):
    code, out, err = run_cli("data", "stats", "easyvqa", "--json")
    assert code == 0, err
    report = json.loads(out)
    splits = report["splits"]
    assert splits["train"]["images"] + splits["val"]["images"] == 4000
    assert splits["test"]["images"] == 1000
    assert splits["train"]["questions"] + splits["val"]["questions"] == 38575
    assert splits["test"]["questions"] == 9673
    assert report["baselines"] == {"scored_on": "test", "majority_answer": 37.3, "question_only": 67.0}
    assert report["info"]["package splits"].startswith("train 4,000 images / 38,575 questions")
    code, out, err = run_cli("data", "stats", "easyvqa")
    assert code == 0 and "67.0" in out and "37.3" in out


def test_shapes_writes_jsonl_that_reads_back(run_cli, tmp_path):
    code, out, err = run_cli("data", "shapes", "--out", tmp_path / "sh", "--n", "20", "--size", "32")
    assert code == 0, err
    code, out, err = run_cli("data", "stats", f"jsonl:{tmp_path / 'sh' / 'captions.jsonl'}", "--json")
    assert code == 0, err
    splits = json.loads(out)["splits"]
    assert sum(s["images"] for s in splits.values()) == 20


@pytest.mark.parametrize(
    "args, expect",
    [
        (["data", "stats", "nosuchkind"], "kinds"),
        (["data", "stats", "flickr8k:/no/such/dir"], "/no/such/dir"),
        (["data", "stats", "shapes:-5"], "shapes"),
        (["data", "shapes", "--out", "x", "--n", "0"], "--n"),
    ],
)
def test_bad_data_input_is_one_line(run_cli, args, expect):
    code, out, err = run_cli(*args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in err


def test_data_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from mmcli.cli import main; main(['data', '--help']); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("False"), r.stdout + r.stderr
