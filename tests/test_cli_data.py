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


# ---------------------------------------------------------------------------- mmcli data cache


def _fake_caches(root):
    """A feature cache, an image cache, a shapes cache, a half-built feature cache and a folder
    that is not mmcli's, as their builders leave them (the marker file written last)."""
    import os
    import time

    def make(name, files):
        d = root / name
        d.mkdir(parents=True)
        for f, text in files.items():
            (d / f).write_text(text, encoding="utf-8")
        return d

    old = time.time() - 40 * 86400
    feats = make("features-easyvqa-aaaaaaaaaaaa", {"features.npy": "x" * 5000,
                                                     "index.json": json.dumps({"paths": ["a", "b", "c"]})})
    make("images-flickr8k-134px-bbbbbbbbbbbb", {"pixels.npy": "y" * 9000, "index.json": json.dumps({"paths": ["a"]})})
    make("shapes-n40-s32-seed0", {"manifest.json": json.dumps({"n_images": 40})})
    make("features-easyvqa-cccccccccccc", {"features.npy": "z"})  # a build cut short: no index
    make("my-notes", {"todo.txt": "keep me"})
    os.utime(feats, (old, old))  # the feature cache was last used 40 days ago


def test_cache_lists_each_kind_with_its_images_and_leaves_others(run_cli, tmp_path):
    code, out, err = run_cli("data", "cache")
    assert code == 0 and "no caches" in out, err
    _fake_caches(tmp_path / "mmcli-cache")
    code, out, err = run_cli("data", "cache", "--json")
    assert code == 0, err
    listed = {e["name"]: e for e in json.loads(out)["entries"]}
    assert {n: (e["kind"], e["complete"], e["images"]) for n, e in listed.items()} == {
        "features-easyvqa-aaaaaaaaaaaa": ("features", True, 3),
        "features-easyvqa-cccccccccccc": ("features", False, None),
        "images-flickr8k-134px-bbbbbbbbbbbb": ("images", True, 1),
        "my-notes": ("other", False, None),
        "shapes-n40-s32-seed0": ("shapes", True, 40),
    }
    assert listed["images-flickr8k-134px-bbbbbbbbbbbb"]["bytes"] >= 9000
    code, out, err = run_cli("data", "cache")
    assert code == 0 and "half-built" in out and "not mmcli's" in out and "5 entries" in out


def test_cache_remove_matches_globs_and_never_touches_other_folders(run_cli, tmp_path):
    root = tmp_path / "mmcli-cache"
    _fake_caches(root)
    code, out, err = run_cli("data", "cache", "--remove", "features-*", "--dry-run")
    assert code == 0 and out.count("would remove") == 2, err
    assert (root / "features-easyvqa-aaaaaaaaaaaa").is_dir()  # a dry run removes nothing
    code, out, err = run_cli("data", "cache", "--remove", "features-*")
    assert code == 0 and out.count("removed") == 2, err
    assert sorted(p.name for p in root.iterdir()) == ["images-flickr8k-134px-bbbbbbbbbbbb", "my-notes",
                                                      "shapes-n40-s32-seed0"]
    code, out, err = run_cli("data", "cache", "--remove", "*")
    assert code == 0, err
    assert [p.name for p in root.iterdir()] == ["my-notes"] and (root / "my-notes" / "todo.txt").is_file()


def test_cache_unused_days_removes_only_the_stale_ones(run_cli, tmp_path):
    root = tmp_path / "mmcli-cache"
    _fake_caches(root)
    code, out, err = run_cli("data", "cache", "--unused-days", "30", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [e["name"] for e in report["removed"]] == ["features-easyvqa-aaaaaaaaaaaa"] and report["bytes"] >= 5000
    assert not (root / "features-easyvqa-aaaaaaaaaaaa").exists()
    code, out, err = run_cli("data", "cache", "--unused-days", "30")
    assert code == 0 and "0 caches" in out and "none unused for 30 days" in out


@pytest.mark.parametrize("args, expect", [(["--remove", "nosuch-*"], "nosuch-*"),
                                          (["--remove", "my-notes"], "my-notes"),
                                          (["--unused-days", "-1"], "--unused-days")])
def test_cache_bad_requests_are_one_line(run_cli, tmp_path, args, expect):
    _fake_caches(tmp_path / "mmcli-cache")
    code, out, err = run_cli("data", "cache", *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in err
    assert (tmp_path / "mmcli-cache" / "my-notes" / "todo.txt").is_file()


def test_reusing_a_cache_marks_it_used(tmp_path):
    import os

    from mmcli.data.shapes import cache_folder, load_shapes
    from mmcli.train import _reuse_or_build

    folder = tmp_path / "mmcli-cache" / "features-x-000000000000"
    folder.mkdir(parents=True)
    os.utime(folder, (1e9, 1e9))
    _reuse_or_build("feature cache", folder, reuse=lambda: [0, 1], build=lambda: None)
    assert folder.stat().st_mtime > 1e9 + 86400
    load_shapes(n_images=10, size=16)  # builds
    shapes = cache_folder(10, 16, 0)
    os.utime(shapes, (1e9, 1e9))
    load_shapes(n_images=10, size=16)  # reuses
    assert shapes.stat().st_mtime > 1e9 + 86400
