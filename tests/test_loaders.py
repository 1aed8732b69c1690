"""Datasets, collate and DataLoader setup over small images made in the test."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmcli.data.images import ImageCache, make_transform
from mmcli.data.loaders import (
    Batch,
    ImageDataset,
    ImageSource,
    LoaderConfig,
    PairDataset,
    VQADataset,
    collate,
    make_loader,
)
from mmcli.data.records import CaptionRecord, Split, VQARecord
from mmcli.tokenizer import AnswerVocab, Tokenizer

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}


@pytest.fixture
def data(tmp_path):
    paths = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 48), colour).save(p)
        paths.append(str(p))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    caps = [CaptionRecord(f"i{i}", p, (f"a {c} square", f"the {c} image")) for i, (p, c) in enumerate(zip(paths, ["red", "blue", "green", "white"]))]
    caps.append(CaptionRecord("bad", str(bad), ("a broken file",)))
    qs = [VQARecord(f"q{i}", r.image_id, r.image, "what color is it?", (r.captions[0].split()[1],), "color") for i, r in enumerate(caps)]
    tok = Tokenizer.train([c for r in caps for c in r.captions] + [q.question for q in qs], vocab_size=400)
    return Split(captions=caps, questions=qs), tok


def test_pair_dataset_batches_and_skips_bad_images(data):
    split, tok = data
    ds = PairDataset(split.pairs(), ImageSource(make_transform(CONFIG)), tok, max_len=6)
    batch = collate([ds[i] for i in range(len(ds))], pad_id=tok.pad_id)
    assert isinstance(batch, Batch)
    assert len(batch) == 8 and batch.images.shape == (8, 3, 32, 32)
    assert [s.path.endswith("bad.jpg") for s in batch.skipped] == [True]
    assert "bad.jpg" not in batch.skipped[0].reason  # the warning line names the file once
    assert batch.text.shape[0] == 8 and batch.text.shape[1] <= 6
    assert (batch.text[:, 0] == tok.bos_id).all()
    for row, n in zip(batch.text, batch.text_len):  # right padding with pad_id after each text
        assert (row[n:] == tok.pad_id).all() and (row[:n] != tok.pad_id).all()
    assert batch.text_ids[:2] == ["i0#0", "i0#1"]


def test_vqa_dataset_targets_and_answers(data):
    split, tok = data
    vocab = AnswerVocab.build([q.answers for q in split.questions])
    ds = VQADataset(split.questions, ImageSource(make_transform(CONFIG)), tok, vocab)
    batch = collate([ds[i] for i in range(len(ds))], pad_id=tok.pad_id)
    assert batch.targets.shape == (4, len(vocab.answers))
    assert (batch.text[:, 0] == tok.cls_id).all()
    for t, a in zip(batch.targets, batch.answers):
        assert t[vocab.index(a[0])] == 1.0 and t.sum() == 1.0


def test_image_dataset_with_cache_equals_files(data, tmp_path):
    split, _ = data
    transform = make_transform(CONFIG)
    good = split.captions[:4]
    cache = ImageCache.build([r.image for r in good], size=32, out=tmp_path / "cache", progress=False)
    a = collate([ImageDataset(good, ImageSource(transform))[i] for i in range(4)])
    b = collate([ImageDataset(good, ImageSource(transform, cache))[i] for i in range(4)])
    assert torch.allclose(a.images, b.images, atol=1e-6)
    assert a.references == [r.captions for r in good]


def test_loader_with_workers_shuffles_reproducibly(data):
    split, tok = data
    ds = PairDataset(split.pairs(), ImageSource(make_transform(CONFIG)), tok)
    cfg = LoaderConfig(batch_size=3, shuffle=True, workers=2, seed=5, pin_memory=False)
    order1 = [i for b in make_loader(ds, cfg, tok.pad_id) for i in b.text_ids]
    order2 = [i for b in make_loader(ds, cfg, tok.pad_id) for i in b.text_ids]
    assert order1 == order2 and sorted(order1) == sorted(p.text_id for p in split.pairs() if p.image_id != "bad")
    assert order1 != sorted(order1)


def test_distributed_sampler_under_a_process_group(data, tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    split, tok = data
    ds = PairDataset(split.pairs(), ImageSource(make_transform(CONFIG)), tok)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_loader(ds, LoaderConfig(batch_size=2, shuffle=True, workers=0), tok.pad_id)
        assert isinstance(loader.sampler, DistributedSampler)
    finally:
        dist.destroy_process_group()


def test_grouped_vqa_collate_shares_each_image(data):
    from mmcli.data.loaders import VQAImageDataset

    split, tok = data
    qs = split.questions[:4]
    extra = [VQARecord(f"x{i}", q.image_id, q.image, "is it red?", ("no",), "yes/no") for i, q in enumerate(qs[:2])]
    answers = AnswerVocab.build(q.answers for q in qs + extra)
    ds = VQAImageDataset(qs + extra, ImageSource(make_transform(CONFIG)), tok, answers)
    assert len(ds) == 4 and ds.n_questions == 6
    b = collate([ds[i] for i in range(4)], pad_id=tok.pad_id)
    assert len(b) == 4 and b.n_samples == 6 and b.text.shape[0] == 6 and b.targets.shape[0] == 6
    assert b.text_image.tolist() == [0, 0, 1, 1, 2, 3]
    assert b.text_ids == ["q0", "x0", "q1", "x1", "q2", "q3"]


def test_grouped_captions_collate_shares_each_image(data):
    from mmcli.data.loaders import CaptionImageDataset

    split, tok = data
    ds = CaptionImageDataset(split.captions, ImageSource(make_transform(CONFIG)), tok, max_len=6)
    assert len(ds) == 5 and ds.n_captions == 9
    b = collate([ds[i] for i in range(len(ds))], pad_id=tok.pad_id)
    assert len(b) == 4 and b.n_samples == 8 and [s.path.endswith("bad.jpg") for s in b.skipped] == [True]
    assert b.text_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    pairs = collate([PairDataset(split.pairs(), ds.images, tok, max_len=6)[i] for i in range(9)], pad_id=tok.pad_id)
    assert b.text_ids == pairs.text_ids and torch.equal(b.text, pairs.text)  # the pairs' caption rows
    one = CaptionImageDataset(split.captions, ds.images, tok, max_captions=1)
    assert one.n_captions == 5 and [t["text_id"] for t in one[0]["texts"]] == ["i0#0"]


def test_question_rows_are_made_once_per_distinct_text_and_answers(data):
    """Ids and targets come out as made afresh for every question; a repeated text or answer list gets
    the row made the first time; with nothing to be kept, every question is made again."""
    from mmcli.data.loaders import QuestionRows, VQAImageDataset

    split, tok = data
    qs = split.questions[:4]
    extra = [VQARecord(f"x{i}", q.image_id, q.image, q.question, q.answers, "color") for i, q in enumerate(qs)]
    answers = AnswerVocab.build(q.answers for q in qs)
    ds = VQAImageDataset(qs + extra, ImageSource(make_transform(CONFIG)), tok, answers, max_len=4)
    b = collate([ds[i] for i in range(4)], pad_id=tok.pad_id)
    for row, q in zip(range(b.text.shape[0]), [q for pair in zip(qs, extra) for q in pair]):
        fresh = [tok.cls_id] + tok.encode(q.question)[:3]
        assert b.text[row, : b.text_len[row]].tolist() == fresh
        target = torch.zeros(len(answers.answers))
        for idx, score in answers.soft_targets(q.answers).items():
            target[idx] = score
        assert torch.equal(b.targets[row], target)
    item = ds[0]["texts"]
    assert item[0]["text"] is item[1]["text"] and item[0]["target"] is item[1]["target"]  # made once
    assert len(ds.rows._ids) == 1 and len(ds.rows._targets) == 4  # one question text, four answer lists
    none = QuestionRows(tok, answers, max_len=4)
    none.MAX_TEXTS = none.MAX_BYTES = 0
    assert none.ids(qs[0].question) == ds.rows.ids(qs[0].question) and not none._ids and not none._targets
    assert torch.equal(none.target(qs[0].answers), ds.rows.target(qs[0].answers)) and not none._targets
    with pytest.raises(TypeError, match="expected a list of answers"):
        ds.rows.target("red")
