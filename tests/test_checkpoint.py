"""Checkpoint directories: round trip, tied weights, refusing bad files, atomic replacement."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mmcli.checkpoint as ckpt_mod
from mmcli.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mmcli.errors import UserError
from mmcli.tokenizer import AnswerVocab, Tokenizer

SENTENCES = [
    "a red circle is left of a blue square",
    "two green triangles on a white background",
    "what color is the shape?",
    "a small yellow star above a big purple circle",
    "how many shapes are there in the image?",
] * 4


class TiedLM(nn.Module):
    """An embedding and an output head sharing one weight, plus a buffer."""

    def __init__(self, vocab: int = 40, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.tensor(1.5))

    def forward(self, ids):
        return self.head(self.norm(self.mix(self.embed(ids)) * self.scale))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(SENTENCES, vocab_size=300)


@pytest.fixture(scope="module")
def answers() -> AnswerVocab:
    return AnswerVocab(["red", "blue", "2", "yes"])


def model(seed: int) -> TiedLM:
    torch.manual_seed(seed)
    return TiedLM()


CONFIG = {"model": {"dim": 8, "vocab_size": 40}, "task": "caption"}


def save(path, tokenizer, answers=None, seed=0, **kw) -> TiedLM:
    m = model(seed)
    save_checkpoint(path, config=CONFIG, model=m, tokenizer=tokenizer, answer_vocab=answers, **kw)
    return m


def test_round_trip_keeps_outputs_and_ties(tmp_path, tokenizer, answers):
    original = save(tmp_path / "run", tokenizer, answers)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["answers.json", "config.json", "model.safetensors", "tokenizer.model"]

    ck = load_checkpoint(tmp_path / "run")
    assert ck.config["model"] == CONFIG["model"] and ck.config["task"] == "caption"
    assert ck.config["format"] == "mmcli-checkpoint" and ck.config["format_version"] == FORMAT_VERSION
    assert set(ck.config["files"]) == {"answers.json", "model.safetensors", "tokenizer.model"}
    assert ck.tokenizer.model_proto == tokenizer.model_proto and ck.tokenizer.lowercase
    assert ck.answer_vocab.answers == answers.answers
    assert ck.train_state is None and not ck.has_train_state and not ck.recovered

    fresh = model(seed=1)
    assert ck.load_into(fresh) == ([], [])
    ids = torch.tensor([[1, 5, 7, 39]])
    assert torch.equal(fresh(ids), original(ids))
    assert fresh.head.weight is fresh.embed.weight  # still one tensor
    with torch.no_grad():
        fresh.embed.weight[0, 0] = 123.0
    assert fresh.head.weight[0, 0] == 123.0


def test_tied_weight_is_stored_once(tmp_path, tokenizer):
    from safetensors import safe_open

    save(tmp_path / "run", tokenizer)
    with safe_open(tmp_path / "run" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert len({"embed.weight", "head.weight"} & keys) == 1
    assert "scale" in keys


def test_untied_model_gets_both_copies(tmp_path, tokenizer):
    original = save(tmp_path / "run", tokenizer)
    untied = TiedLM()
    untied.head.weight = nn.Parameter(torch.zeros(40, 8))
    load_weights(untied, tmp_path / "run")
    assert torch.equal(untied.head.weight, original.embed.weight)


def test_train_state_round_trip_with_rng(tmp_path, tokenizer):
    m = model(0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    m(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step(), sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": 7, "rng": rng_state()}
    save_checkpoint(tmp_path / "run", config=CONFIG, model=m, tokenizer=tokenizer, train_state=state)

    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    ck = load_checkpoint(tmp_path / "run")
    loaded = ck.train_state
    assert loaded["step"] == 7
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    set_rng_state(loaded["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])

    m2 = model(5)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])


def test_train_state_that_weights_only_cannot_load_is_refused_before_writing(tmp_path, tokenizer):
    with pytest.raises(TypeError, match=r"train_state\['rng'\]: numpy.ndarray"):
        save(tmp_path / "run", tokenizer, train_state={"rng": np.zeros(3)})
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- refusing bad checkpoints


class _Evil:
    """Unpickling this calls open(marker, "w"): it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line_error(path, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        ck = load_checkpoint(path)
        ck.train_state  # noqa: B018 (read lazily)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture
def run(tmp_path, tokenizer, answers) -> Path:
    save(tmp_path / "run", tokenizer, answers, train_state={"step": 1})
    return tmp_path / "run"


def test_missing_directory(tmp_path):
    one_line_error(tmp_path / "nope", r"nope: checkpoint directory not found")


def test_missing_config(run):
    (run / "config.json").unlink()
    one_line_error(run, r"run: not an mmcli checkpoint \(no config.json")


def test_not_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(tmp_path / "f", r"f: is a file; expected a checkpoint directory")


def test_corrupt_config(run):
    (run / "config.json").write_text('{"format": "mmcli-checkpoint", ')
    one_line_error(run, r"config\.json: corrupt JSON")


def test_foreign_config(run):
    (run / "config.json").write_text('{"architectures": ["BertModel"]}')
    one_line_error(run, r"config\.json: not an mmcli checkpoint config")


def test_newer_format_version(run):
    cfg = json.loads((run / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (run / "config.json").write_text(json.dumps(cfg))
    one_line_error(run, r"config\.json: checkpoint format version 2 is newer .*upgrade mmcli")


def test_truncated_weights(run):
    data = (run / "model.safetensors").read_bytes()
    for cut in (len(data) - 7, 20, 3):
        (run / "model.safetensors").write_bytes(data[:cut])
        one_line_error(run, r"model\.safetensors: truncated or corrupt")


def test_missing_weights(run):
    (run / "model.safetensors").unlink()
    one_line_error(run, r"model\.safetensors: missing")


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickle_renamed_to_safetensors_is_never_unpickled(run, tmp_path, how):
    marker = tmp_path / "pwned"
    payload = {"embed.weight": torch.zeros(2), "x": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, run / "model.safetensors")
    else:
        (run / "model.safetensors").write_bytes(pickle.dumps(payload))
    one_line_error(run, r"model\.safetensors: truncated or corrupt, not a valid safetensors file")
    assert not marker.exists()


def test_malicious_train_state_is_refused(run, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": _Evil(marker)}, run / "train_state.pt")
    ck = load_checkpoint(run)  # the weights are fine; train_state is read lazily
    with pytest.raises(UserError, match=r"train_state\.pt: refused: .*GLOBAL"):
        ck.train_state  # noqa: B018
    assert not marker.exists()


def test_missing_or_corrupt_tokenizer(run):
    data = (run / "tokenizer.model").read_bytes()
    (run / "tokenizer.model").unlink()
    one_line_error(run, r"tokenizer\.model: tokenizer file not found")
    (run / "tokenizer.model").write_bytes(data[:40])
    one_line_error(run, r"tokenizer\.model: corrupt tokenizer file")


def test_missing_answers_and_train_state(run):
    text = (run / "answers.json").read_text()
    (run / "answers.json").unlink()
    one_line_error(run, r"answers\.json: answer vocabulary file not found")
    (run / "answers.json").write_text(text)
    (run / "train_state.pt").unlink()
    one_line_error(run, r"train_state\.pt: missing")


def test_weights_that_do_not_fit_the_model(run):
    class Other(TiedLM):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(UserError, match=r"model\.safetensors: does not match the model: 2 missing \('extra"):
        load_weights(Other(), run)
    missing, unexpected = load_weights(Other(), run, strict=False)
    assert missing == ["extra.weight", "extra.bias"] and unexpected == []
    with pytest.raises(UserError, match=r"4 tensors do not fit the model .*mix.weight \(8, 8\) vs \(4, 8\)"):
        wrong = TiedLM()
        wrong.mix = nn.Linear(8, 4)
        wrong.norm = nn.LayerNorm(4)
        load_weights(wrong, run, strict=False)


# ---------------------------------------------------------------- atomic replacement


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run."))


def test_replacing_keeps_one_complete_checkpoint(tmp_path, tokenizer):
    save(tmp_path / "run", tokenizer, seed=0)
    second = save(tmp_path / "run", tokenizer, seed=3)
    fresh = model(9)
    load_weights(fresh, tmp_path / "run")
    assert torch.equal(fresh.mix.weight, second.mix.weight)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("target", ["safetensors", "rename"])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, tokenizer, monkeypatch, target):
    first = save(tmp_path / "run", tokenizer, seed=0)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    if target == "safetensors":  # fails while writing the new files
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_model", boom)
    else:  # fails after moving the old checkpoint aside, before moving the new one in
        real_rename = ckpt_mod.os.rename

        def rename(src, dst):
            if ".tmp-" in str(src):
                boom()
            real_rename(src, dst)

        monkeypatch.setattr(ckpt_mod.os, "rename", rename)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(tmp_path / "run", tokenizer, seed=3)
    monkeypatch.undo()
    assert _leftovers(tmp_path) == []
    fresh = model(9)
    load_weights(fresh, tmp_path / "run")
    assert torch.equal(fresh.mix.weight, first.mix.weight)


def test_interrupted_swap_is_found_aside_and_cleaned_up(tmp_path, tokenizer):
    first = save(tmp_path / "run", tokenizer, seed=0)
    # what a kill between the two renames leaves: the old checkpoint aside, a new temp dir
    (tmp_path / "run").rename(tmp_path / ".run.old")
    (tmp_path / ".run.tmp-abc").mkdir()
    ck = load_checkpoint(tmp_path / "run")
    assert ck.recovered and ck.path.name == ".run.old"
    fresh = model(9)
    ck.load_into(fresh)
    assert torch.equal(fresh.mix.weight, first.mix.weight)
    save(tmp_path / "run", tokenizer, seed=3)
    assert _leftovers(tmp_path) == []
    assert not load_checkpoint(tmp_path / "run").recovered


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path, tokenizer):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match=r"run: exists and is not an mmcli checkpoint .*'thesis.tex'"):
        save(tmp_path / "run", tokenizer)
    assert (tmp_path / "run" / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty", tokenizer)  # an empty folder is fine
    assert load_checkpoint(tmp_path / "empty").tokenizer is not None


def test_creates_parent_folders_and_normal_permissions(tmp_path, tokenizer):
    old = os.umask(0o022)
    try:
        save(tmp_path / "runs" / "a" / "run", tokenizer)
    finally:
        os.umask(old)
    ck = tmp_path / "runs" / "a" / "run"
    assert ck.stat().st_mode & 0o755 == 0o755
    assert (ck / "tokenizer.model").stat().st_mode & 0o644 == 0o644


def test_compiled_or_wrapped_models_save_plain_names(tmp_path, tokenizer):
    m = model(0)
    wrapped = nn.DataParallel(m)
    save_checkpoint(tmp_path / "run", config=CONFIG, model=wrapped, tokenizer=tokenizer)
    assert not any(k.startswith("module.") for k in load_checkpoint(tmp_path / "run").state_dict)
