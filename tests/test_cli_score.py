"""``mmcli score`` through the real entry point: formats, output, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, write

EX = REPO / "examples"


def test_help_lists_every_command_and_a_first_run(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("--help")
    assert code == 0
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    assert [c for c in listed if not c.startswith("-")] == [
        "pretrain", "finetune", "caption", "vqa", "retrieve", "score", "data"]
    assert "mmcli finetune --task vqa --out runs/easyvqa" in out and "--model runs/easyvqa" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("mmcli ")
    code, out, _ = run_cli("score", "--help")
    assert code == 0 and "Examples" in out and "METEOR" in out


def test_import_cli_does_not_import_torch_or_numpy():
    code = "import sys, mmcli.cli; bad = [m for m in ('torch', 'numpy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_examples_table_and_json(run_cli, tmp_path):
    code, out, err = run_cli("score", EX / "captions_preds.json", EX / "captions_refs.json")
    assert code == 0, err
    assert "cider_d" in out and "bleu_4" in out and "signature" in out
    per = tmp_path / "per.json"
    code, out, err = run_cli("score", EX / "captions_preds.json", EX / "captions_refs.json", "--json", "--per-image", per)
    assert code == 0, err
    data = json.loads(out)
    assert data["task"] == "caption" and data["n_items"] == 8
    assert set(data["scores"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
    assert "tok:ptb" in data["signature"]
    rows = json.loads(per.read_text())
    assert len(rows) == 8 and {"image_id", "cider_d", "bleu_4"} <= set(rows[0])
    mean = sum(r["cider_d"] for r in rows) / len(rows)
    assert mean == pytest.approx(data["scores"]["cider_d"])


def test_all_formats_give_the_same_scores(run_cli, tmp_path):
    preds = json.loads((EX / "captions_preds.json").read_text())
    refs = json.loads((EX / "captions_refs.json").read_text())
    mapping_p = write(tmp_path / "p.json", json.dumps({str(p["image_id"]): p["caption"] for p in preds}))
    groups = {}
    for a in refs["annotations"]:
        groups.setdefault(str(a["image_id"]), []).append(a["caption"])
    mapping_r = write(tmp_path / "r.json", json.dumps(groups))
    jsonl_p = write(tmp_path / "p.jsonl", "\n".join(json.dumps(p) for p in preds))
    jsonl_r = write(tmp_path / "r.jsonl", "\n".join(json.dumps({"image_id": k, "captions": v}) for k, v in groups.items()))
    karpathy = write(
        tmp_path / "k.json",
        json.dumps({"images": [{"cocoid": int(k), "filename": f"{k}.jpg", "split": "test", "sentences": [{"raw": c} for c in v]} for k, v in groups.items()]}),
    )
    results = []
    for p, r in [
        (EX / "captions_preds.json", EX / "captions_refs.json"),
        (mapping_p, mapping_r),
        (jsonl_p, jsonl_r),
        (mapping_p, karpathy),
    ]:
        code, out, err = run_cli("score", p, r, "--json")
        assert code == 0, err
        results.append(json.loads(out)["scores"])
    assert all(r == results[0] for r in results)


def test_forced_format_and_tokenize_none(run_cli):
    code, out, err = run_cli("score", EX / "captions_preds.json", EX / "captions_refs.json", "--format", "coco-results", "--tokenize", "none", "--json")
    assert code == 0, err
    assert "tok:none" in json.loads(out)["signature"]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("mmcli: warning")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


REFS = json.dumps({"1": ["a dog runs", "the dog runs"], "2": ["a cat sleeps"]})


@pytest.mark.parametrize(
    "preds_text, refs_text, expect",
    [
        (None, REFS, "file not found"),
        ("{not json", REFS, "invalid JSON at line 1"),
        (json.dumps({"1": "a dog", "2": "a cat", "3": "a bus"}), REFS, "not in"),
        (json.dumps({"1": "a dog"}), REFS, "have no prediction"),
        (json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}, {"image_id": 2, "caption": "c"}]), REFS, "more than one prediction"),
        (json.dumps({"1": 5, "2": "a cat"}), REFS, "caption must be a string"),
        (json.dumps({"1": "a dog", "2": "a cat"}), json.dumps({}), "contains no captions"),
        (json.dumps({"1": "a dog", "2": "a cat"}), json.dumps({"images": [], "annotations": []}), "contains no captions"),
        (json.dumps({"1": "a dog", "2": "a cat"}), json.dumps([1, 2]), "expected an object"),
        ("", REFS, "file is empty"),
        # a Karpathy file without the test split: its split names, control characters escaped
        (json.dumps({"1": "a dog"}), json.dumps({"images": [{"cocoid": 1, "split": "tr\nain\x1b[31m", "sentences": []}]}),
         "(splits present: 'tr\\nain\\x1b[31m')"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, preds_text, refs_text, expect):
    preds = tmp_path / "preds.json"
    if preds_text is not None:
        write(preds, preds_text)
    refs = write(tmp_path / "refs.json", refs_text)
    code, out, err = run_cli("score", preds, refs)
    assert code == 2
    line = one_error_line(err)
    assert expect in line
    assert "preds.json" in line or "refs.json" in line


def test_empty_caption_warns_and_scores(run_cli, tmp_path):
    preds = write(tmp_path / "preds.json", json.dumps({"1": "", "2": "a cat sleeps"}))
    refs = write(tmp_path / "refs.json", REFS)
    code, out, err = run_cli("score", preds, refs, "--json")
    assert code == 0
    assert "empty prediction" in err
    assert json.loads(out)["n_items"] == 2


def test_bad_flag_value_is_one_line(run_cli):
    code, _, err = run_cli("score", EX / "captions_preds.json", EX / "captions_refs.json", "--tokenize", "nope")
    assert code == 2 and "--tokenize" in one_error_line(err)
    code, _, err = run_cli("score", EX / "captions_preds.json", EX / "captions_refs.json", "--metrics", "meteor")
    assert code == 2 and "meteor" in one_error_line(err)


def test_per_image_file_is_not_left_partial_on_error(run_cli, tmp_path):
    out = tmp_path / "per.json"
    write(out, "previous results")
    code, _, err = run_cli("score", tmp_path / "missing.json", EX / "captions_refs.json", "--per-image", out)
    assert code == 2
    assert out.read_text() == "previous results"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".per.json")] == []


def test_debug_env_shows_traceback(tmp_path):
    import os

    env = dict(os.environ, MMCLI_DEBUG="1")
    r = subprocess.run([sys.executable, "-m", "mmcli", "score", "nope.json", "nope.json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_vqa_and_retrieval_examples(run_cli, tmp_path):
    code, out, err = run_cli("score", EX / "vqa_preds.json", EX / "vqa_annotations.json", "--task", "vqa", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["scores"]["vqa_accuracy"] == pytest.approx(82.5)
    assert set(data["groups"]["per answer type"]) == {"yes/no", "number", "other"}
    code, out, err = run_cli("score", EX / "vqa_preds.json", EX / "vqa_annotations.json", "--task", "vqa", "--vqa-normalize", "always", "--json")
    assert code == 0 and "norm:always" in json.loads(out)["signature"]
    per = tmp_path / "ranks.json"
    code, out, err = run_cli("score", EX / "retrieval_ranking.json", EX / "retrieval_gt.json", "--task", "retrieval", "--json", "--per-image", per)
    assert code == 0, err
    scores = json.loads(out)["scores"]
    assert scores["t2i_R@1"] == pytest.approx(62.5) and scores["i2t_R@1"] == pytest.approx(50.0)
    assert len(json.loads(per.read_text())) == 8 + 4


def test_vqa_mismatch_names_both_files(run_cli, tmp_path):
    preds = write(tmp_path / "answers.json", json.dumps({"101": "brown"}))
    code, _, err = run_cli("score", preds, EX / "vqa_annotations.json", "--task", "vqa")
    assert code == 2
    line = one_error_line(err)
    assert "answers.json" in line and "vqa_annotations.json" in line and "no prediction" in line
