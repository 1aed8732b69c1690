"""Pretraining (ITC, ITM, LM objectives) and fine-tuning from it with ``--init``, on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmcli import train
from mmcli.errors import UserError
from mmcli.train import TrainConfig, fit, parse_objectives

DATA = "shapes:40:32"  # 32 train, 4 val, 4 test images


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> TrainConfig:
    base = dict(task="pretrain", data=DATA, out="pt", preset="tiny", batch_size=8, lr=2e-3, warmup_steps=2,
                vocab_size=300, max_text_len=24, log_every=5, max_steps=20, eval_every=20, test=False)
    return TrainConfig(**{**base, **kw})


def losses(run: str) -> list[float]:
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """One short pretraining run (all three objectives, concat fusion), shared by the --init tests."""
    root = tmp_path_factory.mktemp("pretrained")
    mp = pytest.MonkeyPatch()
    mp.setenv("MMCLI_CACHE", str(root / "cache"))
    torch.set_num_threads(1)
    try:
        fit(cfg(out=str(root / "pt"), fusion="concat", max_steps=4, eval_every=4))
    finally:
        mp.undo()
    return root / "pt"


def check_run(result, objectives: str, metric: str) -> None:
    assert result.exit_code == 0 and result.metric == metric and result.best is not None
    val = json.loads(Path("pt/metrics.jsonl").read_text().splitlines()[-1])["val"]
    # each objective's own check is reported, whichever one selects
    checks = {"itc": "mean_recall", "itm": "itm_accuracy", "lm": "cider_d"}
    assert {checks[k] for k in parse_objectives(objectives)} <= set(val)
    saved = json.loads(Path("pt/best/config.json").read_text())
    assert saved["task"] == "pretrain" and saved["train"]["objectives"] == objectives


@pytest.mark.parametrize("objectives,metric", [("itc", "mean_recall"), ("lm", "cider_d"),
                                               ("itc=1,itm=1,lm=0.5", "mean_recall")])
def test_pretrain_loss_goes_down(objectives, metric):
    result = fit(cfg(objectives=objectives, fusion="cross"))
    curve = losses("pt")
    assert len(curve) == 4 and curve[-1] < 0.9 * curve[0], curve
    assert result.steps == 20
    check_run(result, objectives, metric)


def test_itm_alone_learns():
    """ITM from scratch first sits at the prior (a third of the pairs match: loss 0.637) until the
    fused vector starts to depend on the pair, longer than a fast test runs (and longest at a high
    lr); on one fixed batch of 4 images at lr 3e-4 it leaves the prior within 100 steps."""
    from mmcli.data.loaders import collate

    result = fit(cfg(objectives="itm", fusion="cross", max_steps=2, eval_every=2))
    check_run(result, "itm", "itm_accuracy")
    c = cfg(objectives="itm", fusion="cross", out="overfit")
    s = train._build(c, train._Opened(), torch.device("cpu"), None)
    first = {}
    for i, r in enumerate(s.train_set.records):
        first.setdefault(r.image_id, i)
    batch = collate([s.train_set[i] for i in list(first.values())[:4]], pad_id=s.tokenizer.pad_id)
    optimizer = torch.optim.AdamW(s.model.parameters(), lr=3e-4)
    curve = []
    for _ in range(100):
        loss = s.loss_fn(s.model, batch, s)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    # the loss swings by +-0.2 from step to step once it has left the prior (one fixed batch of 12
    # pairs, hard negatives redrawn each step): ask for 10 steps in a row below 80% of it, in the
    # second half, rather than for the last 10 steps alone
    windows = [sum(curve[i : i + 10]) / 10 for i in range(50, 91)]
    assert min(windows) < 0.8 * 0.637, " ".join(f"{x:.3f}" for x in curve)


def test_parse_objectives():
    assert parse_objectives("itc,itm,lm") == {"itc": 1.0, "itm": 1.0, "lm": 1.0}
    assert parse_objectives(" ITC = 2 , lm=0.5") == {"itc": 2.0, "lm": 0.5}
    for bad, match in [("", "is empty"), ("  ", "is empty"), ("itc,mlm", "unknown objective 'mlm'"),
                       ("itc=abc", "bad weight 'abc' for itc"), ("lm=0", "bad weight '0'"),
                       ("lm=nan", "bad weight"), ("lm=-1", "bad weight"), ("itc,,lm", "empty entry"),
                       ("itc,itc", "given twice")]:
        with pytest.raises(UserError, match=match):
            parse_objectives(bad)
    with pytest.raises(UserError, match="--objectives is for pretrain"):
        TrainConfig(task="caption", objectives="lm")


@pytest.mark.parametrize("value,message", [("itc,foo", "unknown objective 'foo'"), ("itc=two", "bad weight 'two'"),
                                           ("", "--objectives is empty")])
def test_cli_objectives_errors(run_cli, value, message):
    code, out, err = run_cli("pretrain", "--objectives", value, "--preset", "tiny", "--out", "pt")
    assert code == 2 and err.startswith("mmcli: error:") and message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not Path("pt").exists()


def test_late_fusion_pretrains_without_lm_only():
    with pytest.raises(UserError, match="--fusion late cannot do the lm objective.*--objectives itc,itm"):
        fit(cfg(fusion="late"))
    with pytest.raises(UserError, match="--fusion late cannot do the lm objective"):
        fit(cfg(fusion="late", objectives="itc,lm"))
    assert not Path("pt").exists()  # refused before any work
    result = fit(cfg(fusion="late", objectives="itc,itm", max_steps=3, eval_every=3))
    assert result.steps == 3 and result.metric == "mean_recall"


def test_init_loads_weights_and_tokenizer(pretrained):
    """Before any training step, a finetune --init model holds the pretrained weights and tokenizer."""
    from mmcli.checkpoint import load_checkpoint

    init = load_checkpoint(pretrained / "best")
    stored = init.state_dict  # (with the tied LM head / token embedding under both names)
    text_weight = next(k for k in stored if k.startswith("text_blocks.0.") and stored[k].dim() == 2)
    for task in ("caption", "vqa"):
        c = cfg(task=task, out=f"ft-{task}", init=str(pretrained), preset="small")  # preset: ignored
        s = train._build(c, train._open_run(c, Path(c.out)), torch.device("cpu"), None)
        assert s.tokenizer.model_proto == init.tokenizer.model_proto
        assert torch.equal(s.model.state_dict()[text_weight], stored[text_weight])
        assert torch.equal(s.model.tok_emb.weight.detach(), stored["tok_emb.weight"])
        want = {**init.config["model"], "n_answers": len(s.answers) if s.answers else 0}
        assert s.model.cfg.to_dict() == want  # the init run's architecture, not the small preset
    assert s.answers is not None and s.model.vqa_head is not None  # vqa: a new head over this data's answers
    c = cfg(task="caption", out="fresh", fusion="concat")  # the same model and seed without --init
    fresh = train._build(c, train._open_run(c, Path(c.out)), torch.device("cpu"), None)
    assert not torch.equal(fresh.model.state_dict()[text_weight], stored[text_weight])


def test_finetune_from_init_trains_and_saves_a_self_sufficient_run(pretrained):
    result = fit(cfg(task="retrieval", out="ft", init=str(pretrained), max_steps=3, eval_every=3))
    assert result.steps == 3 and result.metric == "mean_recall"
    from mmcli.model.vlm import load_model

    model, ckpt = load_model("ft/best")
    assert ckpt.config["task"] == "retrieval" and model.cfg.fusion == "concat"  # the init run's fusion
    assert ckpt.config["train"]["init"] == str(pretrained)


def test_init_errors(pretrained, tmp_path):
    (tmp_path / "empty").mkdir()
    for init, match in [("nowhere", "--init nowhere: directory not found"),
                        (str(tmp_path / "empty"), "no checkpoint in it")]:
        with pytest.raises(UserError, match=match):
            fit(cfg(task="caption", out="ft", init=init))
    with pytest.raises(UserError, match="--fusion cross does not match the --init run.*fusion concat"):
        fit(cfg(task="caption", out="ft", init=str(pretrained), fusion="cross"))
    assert not Path("ft").exists()  # refused before any work


def test_cli_pretrain_then_finetune_init(run_cli):
    code, out, err = run_cli("pretrain", "--preset", "tiny", "--data", DATA, "--objectives", "itc,lm",
                             "--max-steps", "2", "--batch-size", "8", "--no-test", "--out", "cli-pt")
    assert code == 0, err
    assert "mmcli pretrain: cli-pt" in out and "best mean_recall" in out
    code, out, err = run_cli("finetune", "--task", "caption", "--init", "cli-pt", "--data", DATA,
                             "--max-steps", "2", "--batch-size", "8", "--no-test", "--out", "cli-ft")
    assert code == 0, err
    assert "initialised from cli-pt/best" in err and "best cider_d" in out
    code, out, err = run_cli("finetune", "--task", "caption", "--init", "cli-pt", "--fusion", "late", "--out", "x")
    assert code == 2 and "does not match the --init run" in err


def test_stopped_init_run_resumes_without_the_init_run(pretrained):
    """A resumed --init run rebuilds its model from its own config (the init run may be gone) and
    loads last/ strictly, its new VQA head included."""
    import shutil

    from mmcli.train import request_stop, resume_config

    shutil.copytree(pretrained, "init-copy")

    def stop_at_1(step, loss):
        request_stop()

    stopped = fit(cfg(task="vqa", out="ft", init="init-copy", max_steps=3, eval_every=3), on_step=stop_at_1)
    assert stopped.exit_code == 130 and stopped.steps == 1
    shutil.rmtree("init-copy")
    result = fit(resume_config("ft"))
    assert result.steps == 3 and result.metric == "vqa_accuracy"


def test_pretrain_stop_message_names_pretrain(capsys):
    from mmcli.train import request_stop

    result = fit(cfg(objectives="itc", max_steps=3), on_step=lambda step, loss: request_stop())
    assert result.exit_code == 130 and "mmcli pretrain --resume pt" in capsys.readouterr().err


# ---------------------------------------------------------------------------- --group-captions


def test_grouped_itc_with_one_caption_per_image_is_the_plain_loss():
    from mmcli.losses import itc_loss

    g = torch.Generator().manual_seed(0)
    ie = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    te = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(2.0)
    assert torch.allclose(itc_loss(ie, te, scale, torch.arange(6)), itc_loss(ie, te, scale))


def test_grouped_itc_counts_every_caption_of_an_image_as_its_match():
    """Two images with two captions each: the captions that embed on their own image give a low
    loss, the same captions swapped between the images a high one; and the loss is the mean of the
    caption-side cross-entropy and the image side's against targets spread over its captions."""
    from mmcli.losses import itc_loss

    ie = torch.eye(2)
    te = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    te = torch.nn.functional.normalize(te, dim=-1)
    owner, scale = torch.tensor([0, 0, 1, 1]), torch.tensor(3.0)
    right = itc_loss(ie, te, scale, owner)
    wrong = itc_loss(ie, te, scale, torch.tensor([1, 1, 0, 0]))
    # (the image side's floor is the entropy of its targets: ln 2 / 2 for two captions an image)
    assert right < 0.4 and wrong > 3.0, (right, wrong)
    logits = scale.exp() * ie @ te.t()
    t2i = torch.nn.functional.cross_entropy(logits.t(), owner)
    i2t = -(logits.log_softmax(-1) * torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])).sum(-1).mean()
    assert torch.allclose(right, (t2i + i2t) / 2)


def test_itm_pairs_take_each_caption_of_an_image_in_turn():
    from types import SimpleNamespace

    class Batch(SimpleNamespace):
        def __len__(self):
            return 3

    batch = Batch(text_image=torch.tensor([0, 0, 0, 1, 2, 2]), text=torch.zeros(6, 3))
    pairs = [train._itm_pairs(batch, step) for step in range(3)]
    # image 0 owns rows 0-2, image 1 row 3, image 2 rows 4-5
    assert [p.tolist() for p in pairs] == [[0, 3, 4], [1, 3, 5], [2, 3, 4]]


@pytest.mark.parametrize("task,objectives", [("pretrain", None), ("retrieval", None), ("pretrain", "itm")])
def test_grouped_pretrain_and_retrieval_learn(task, objectives):
    """Images each with all their captions: every objective trains (its loss goes down) and each
    batch holds batch_size images. (At this size the contrastive loss collapses to chance at the
    other tests' lr 2e-3, grouped or not; 5e-4 learns.)"""
    kw = dict(objectives=objectives) if objectives else {}
    result = fit(cfg(task=task, fusion="cross", group_captions=True, lr=5e-4, max_steps=40, eval_every=40,
                     log_every=10, **kw))
    curve = losses("pt")
    assert result.exit_code == 0 and result.steps == 40 and result.epochs == 10  # 32 images, 8 a step
    if objectives != "itm":  # (ITM alone sits at its prior for longer than this: test_itm_alone_learns)
        assert curve[-1] < 0.9 * curve[0], curve
    assert json.loads(Path("pt/config.json").read_text())["train"]["group_captions"] is True


def test_init_at_another_image_size_resamples_the_image_positions_and_trains(pretrained, capsys):
    """``--model image_size=N`` may join --init: the init run's model at another resolution, its image
    position embeddings resampled to the new grid of tokens (said on stderr), every other weight the init
    run's; the run trains and saves a model of that size."""
    from mmcli.checkpoint import load_checkpoint
    from mmcli.model.vlm import load_model

    init = load_checkpoint(pretrained / "best")
    size = init.config["model"]["image_size"] * 2
    c = cfg(task="vqa", out="big", init=str(pretrained), model={"image_size": size}, max_steps=3, eval_every=3)
    s = train._build(c, train._open_run(c, Path(c.out)), torch.device("cpu"), None)
    assert s.model.cfg.image_size == size and s.model.vision.image_size == size
    assert s.model.image_pos.shape[1] == 4 * init.state_dict["image_pos"].shape[1]
    assert "at image size %d (image_pos " % size in capsys.readouterr().err
    own = s.model.state_dict()
    same = [k for k, v in init.state_dict.items() if k != "image_pos" and not k.startswith("vqa_head.")]
    assert same and all(torch.equal(own[k], init.state_dict[k]) for k in same)
    assert fit(c).steps == 3
    model, ckpt = load_model("big/best")
    assert ckpt.config["model"]["image_size"] == size and model.vision.image_size == size
    with pytest.raises(UserError, match="--model dropout=0.1 cannot be combined with --init.*image_size"):
        cfg(task="vqa", init=str(pretrained), model={"image_size": size, "dropout": 0.1})


def test_init_with_an_image_adapter_starts_as_the_init_model_and_trains_it(pretrained):
    """``--model image_adapter=N`` may join --init: a residual MLP on the backbone's tokens whose output
    layer starts at zero, so the new model begins as the init run's; training then moves it."""
    from mmcli.checkpoint import load_checkpoint

    init = load_checkpoint(pretrained / "best")
    c = cfg(task="vqa", out="ad", init=str(pretrained), model={"image_adapter": 16}, max_steps=3, eval_every=3)
    s = train._build(c, train._open_run(c, Path(c.out)), torch.device("cpu"), None)
    assert s.model.cfg.image_adapter == 16 and s.model.cfg.fusion == init.config["model"]["fusion"]
    plain = cfg(task="vqa", out="plain", init=str(pretrained))
    p = train._build(plain, train._open_run(plain, Path(plain.out)), torch.device("cpu"), None)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(s.model.vision(images), p.model.vision(images))
    result = fit(c)
    assert result.steps == 3
    from mmcli.model.vlm import load_model

    model, ckpt = load_model("ad/best")
    assert ckpt.config["model"]["image_adapter"] == 16
    assert model.vision.adapter[-1].weight.abs().sum() > 0  # trained away from its zero start
    with pytest.raises(UserError, match="--model dropout=0.1 cannot be combined with --init.*image_adapter"):
        cfg(task="vqa", init=str(pretrained), model={"image_adapter": 16, "dropout": 0.1})
    with pytest.raises(UserError, match="image_adapter must not be negative"):
        fit(cfg(task="vqa", out="neg", init=str(pretrained), model={"image_adapter": -1}))
