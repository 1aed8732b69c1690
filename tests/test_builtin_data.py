"""The built-in datasets (easy-VQA, synthetic shapes) and the blind VQA baselines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mmcli.data import shapes
from mmcli.data.baselines import majority_answer_accuracy, question_only_accuracy
from mmcli.data.easyvqa import load_easyvqa, question_type
from mmcli.data.records import VQARecord
from mmcli.errors import UserError

# ---------------------------------------------------------------------------
# easy-VQA
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def easyvqa():
    return load_easyvqa()


def test_easyvqa_counts_and_splits(easyvqa):
    s = easyvqa.splits
    assert list(s) == ["train", "val", "test"]
    assert [len(s[k].images()) for k in s] == [3600, 400, 1000]
    assert len(s["train"].questions) + len(s["val"].questions) == 38_575
    assert len(s["test"].questions) == 9_673
    assert not set(s["train"].images()) & set(s["val"].images())  # val is carved out by image
    assert {i.split("/")[0] for i in s["val"].images()} == {"train"}
    assert {i.split("/")[0] for i in s["test"].images()} == {"test"}
    qids = [q.question_id for split in s.values() for q in split.questions]
    assert len(qids) == len(set(qids)) == 38_575 + 9_673
    answers = {q.answers for split in s.values() for q in split.questions}
    assert all(len(a) == 1 for a in answers) and len(answers) == 13
    assert {q.answer_type for split in s.values() for q in split.questions} == {"yes/no", "color", "shape"}


def test_easyvqa_images_are_64x64(easyvqa):
    for split in easyvqa.splits.values():
        paths = list(split.images().values())
        for path in paths[:: max(1, len(paths) // 5)]:
            with Image.open(path) as im:
                assert im.size == (64, 64)


def test_easyvqa_val_is_seeded(easyvqa):
    a, b, c = easyvqa, load_easyvqa(seed=0), load_easyvqa(val_fraction=0.25, seed=1)
    assert a.splits["val"].images() == b.splits["val"].images()
    assert len(c.splits["val"].images()) == 1000 and c.splits["val"].images() != a.splits["val"].images()
    with pytest.raises(UserError):
        load_easyvqa(val_fraction=1.0)


@pytest.mark.parametrize("question, expected", [
    ("is there not a red shape?", "is there not a"),
    ("does the image contain a circle?", "does the image contain a"),
    ("is no teal shape present?", "is no"),
    ("what color is the shape?", "what color is the"),
    ("what is the color of the triangle?", "what is the color of the"),
    ("what shape is in the image?", "what shape is in the image"),
])
def test_easyvqa_question_type(question, expected):
    assert question_type(question) == expected


def test_easyvqa_baselines(easyvqa):
    s = easyvqa.splits
    train, test = s["train"].questions + s["val"].questions, s["test"].questions
    assert round(majority_answer_accuracy(train, test), 1) == 37.3
    assert round(question_only_accuracy(train, test), 1) == 67.0


def test_baselines_small():
    def q(text, *answers):
        return VQARecord(text + str(len(answers)), "i", "i.png", text, answers)

    train = [q("color?", "red"), q("color?", "red"), q("color?", "blue"), q("shape?", "circle"),
             q("big?", "yes"), q("big?", "no"), q("big?", "no"), q("big?", "no")]
    test = [q("color?", "red"), q("shape?", "square"), q("new?", "no"), q("big?", "no", "no", "no", "yes")]
    assert majority_answer_accuracy(train, test) == pytest.approx(100 * (0 + 0 + 1 + 0.75) / 4)
    assert question_only_accuracy(train, test) == pytest.approx(100 * (1 + 0 + 1 + 0.75) / 4)
    assert majority_answer_accuracy([], test) == 0.0 and question_only_accuracy(train, []) == 0.0


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------


def _relative(ds, folder: Path):
    """The records with image paths relative to the cache folder (to compare two caches)."""
    out = {}
    for name, split in ds.splits.items():
        out[name] = ([(r.image_id, str(Path(r.image).relative_to(folder)), r.captions) for r in split.captions],
                     [(q.question_id, str(Path(q.image).relative_to(folder)), q.question, q.answers,
                       q.answer_type, q.question_type) for q in split.questions])
    return out


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def test_shapes_deterministic(tmp_path):
    a = shapes.load_shapes(30, size=32, seed=0, cache_dir=tmp_path / "a")
    b = shapes.load_shapes(30, size=32, seed=0, cache_dir=tmp_path / "b")
    c = shapes.load_shapes(30, size=32, seed=1, cache_dir=tmp_path / "a")
    fa, fb, fc = (shapes.cache_folder(30, 32, s, tmp_path / d) for s, d in [(0, "a"), (0, "b"), (1, "a")])
    assert fa.name == "shapes-n30-s32-seed0"
    assert _relative(a, fa) == _relative(b, fb)
    assert _bytes(fa) == _bytes(fb) and len(_bytes(fa)) == 30
    assert _relative(c, fc) != _relative(a, fa)
    assert sum(_bytes(fa)[k] != _bytes(fc)[k] for k in _bytes(fa)) >= 25
    # image i does not depend on the number of images
    d = shapes.load_shapes(12, size=32, seed=0, cache_dir=tmp_path / "a")
    fd = shapes.cache_folder(12, 32, 0, tmp_path / "a")
    assert _bytes(fd) == {k: v for k, v in _bytes(fa).items() if int(k[:-4]) < 12}
    captions = {r.image_id: r.captions for s in a.splits.values() for r in s.captions}
    assert all(captions[r.image_id] == r.captions for s in d.splits.values() for r in s.captions)


def test_shapes_dataset_layout(tmp_path):
    ds = shapes.load_shapes(40, size=48, seed=3, cache_dir=tmp_path)
    assert list(ds.splits) == ["train", "val", "test"]
    assert [len(s.captions) for s in ds.splits.values()] == [32, 4, 4]
    ids = [r.image_id for s in ds.splits.values() for r in s.captions]
    qids = [q.question_id for s in ds.splits.values() for q in s.questions]
    assert len(set(ids)) == 40 and len(set(qids)) == len(qids)
    for split in ds.splits.values():
        for r in split.captions:
            assert len(set(r.captions)) == 5
            with Image.open(r.image) as im:
                assert im.size == (48, 48) and im.mode == "RGB"
    types = {(q.question_type, q.answer_type) for s in ds.splits.values() for q in s.questions}
    assert {t for _, t in types} == {"number", "color", "shape", "yes/no", "other"}
    assert {t for t, _ in types} == {"count", "color", "shape", "exist", "position"}


def _answer(item: shapes.Item, question: str) -> str:
    """Answer a generated question again, from the scene alone."""
    by_name = {s.name: s for s in item.shapes}

    def where(a, b):  # the clear relations of a seen from b, from the coordinates
        out = set()
        if abs(a.x - b.x) > shapes.MARGIN:
            out.add("left of" if a.x < b.x else "right of")
        if abs(a.y - b.y) > shapes.MARGIN:
            out.add("above" if a.y < b.y else "below")
        return out

    q = question.rstrip("?")
    if q in ("how many shapes are there", "how many shapes are in the image", "how many objects can you see"):
        return str(len(item.shapes))
    if m := re.fullmatch(r"how many (\w+?)s are there", q):
        return str(sum(s.kind == m[1] for s in item.shapes))
    if m := re.fullmatch(r"how many (\w+) shapes are there", q):
        return str(sum(s.color == m[1] for s in item.shapes))
    if m := re.fullmatch(r"what color is the (\w+)|what is the color of the (\w+)|which color does the (\w+) have", q):
        [s] = [s for s in item.shapes if s.kind in m.groups()]
        return s.color
    if m := re.fullmatch(r"what shape is (\w+)|what is the (\w+) shape|which shape is (\w+)", q):
        [s] = [s for s in item.shapes if s.color in m.groups()]
        return s.kind
    if m := re.fullmatch(r"(?:is there|does the image contain|can you see) an? (.+)", q):
        words = m[1].split()
        found = [s for s in item.shapes if all(w in (s.color, s.kind, "shape") for w in words)]
        return "yes" if found else "no"
    if m := re.fullmatch(r"is the (\w+ \w+) (left of|right of|above|below) the (\w+ \w+)", q):
        return "yes" if m[2] in where(by_name[m[1]], by_name[m[3]]) else "no"
    if m := re.fullmatch(r"(?:what is|which shape is) (left of|right of|above|below) the (\w+ \w+)", q):
        b = by_name[m[2]]
        [a] = [s for s in item.shapes if s is not b and m[1] in where(s, b)]
        opposite = shapes.OPPOSITE[m[1]]
        assert all(opposite in where(s, b) for s in item.shapes if s not in (a, b))  # unambiguous
        return a.name
    raise AssertionError(f"unknown question {question!r}")


def test_shapes_answers_and_captions_match_the_scene():
    seen = set()
    for i in range(300):
        item = shapes.make_item(7, i)
        n = len(item.shapes)
        assert 1 <= n <= 4 and len({s.name for s in item.shapes}) == n
        for q, a, answer_type, question_type in item.questions:
            assert _answer(item, q) == a, (i, q, a)
            seen.add((question_type, a if answer_type == "yes/no" else answer_type))
        counted, listed = item.captions[0], item.captions[2]
        assert counted.startswith(f"{shapes.NUMBERS[n]} shape")
        assert all(s.name in listed and f"{s.size} {s.name}" in counted for s in item.shapes)
    assert {("exist", "yes"), ("exist", "no"), ("position", "yes"), ("position", "no"), ("position", "other")} <= seen


def test_shapes_pixels_match_the_scene():
    palette = dict(shapes.COLORS, background=(230, 230, 230))
    for i in range(40):
        item = shapes.make_item(0, i)
        im = shapes.render(0, i, 64)
        for s in item.shapes:
            pixel = im.getpixel((int(s.x * 64), int(s.y * 64)))
            nearest = min(palette, key=lambda c: sum((p - q) ** 2 for p, q in zip(pixel, palette[c])))
            assert nearest == s.color, (i, s, pixel)


def test_shapes_cache_reuse_and_recovery(tmp_path, monkeypatch):
    folder = shapes.cache_folder(20, 32, 0, tmp_path)
    first = shapes.load_shapes(20, size=32, seed=0, cache_dir=tmp_path)
    manifest = folder / "manifest.json"
    assert json.loads(manifest.read_text())["n_images"] == 20
    original = _bytes(folder)

    def no_render(*args, **kwargs):
        raise AssertionError("the complete cache was rendered again")

    with monkeypatch.context() as m:
        m.setattr(shapes, "write_images", no_render)
        assert _relative(shapes.load_shapes(20, size=32, seed=0, cache_dir=tmp_path), folder) == _relative(first, folder)

    # a half-written cache: no manifest, a truncated image -> rendered again
    manifest.unlink()
    (folder / "images" / "00003.png").write_bytes(b"\x89PNG")
    shapes.load_shapes(20, size=32, seed=0, cache_dir=tmp_path)
    assert manifest.exists() and _bytes(folder) == original
    # a manifest of another generator version, or a missing image -> rendered again
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 0'))
    (folder / "images" / "00007.png").unlink()
    shapes.load_shapes(20, size=32, seed=0, cache_dir=tmp_path)
    assert _bytes(folder) == original and json.loads(manifest.read_text())["version"] == shapes.VERSION
    assert not list(folder.rglob("*.tmp"))


def test_shapes_cache_location_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCLI_CACHE", str(tmp_path / "env-cache"))
    ds = shapes.load_shapes(10, size=16, seed=2)
    assert (tmp_path / "env-cache" / "shapes-n10-s16-seed2" / "manifest.json").exists()
    assert ds.info["cache"] == str(tmp_path / "env-cache" / "shapes-n10-s16-seed2")


def test_shapes_parallel_rendering_is_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "IMAGES_PER_PROCESS", 10)
    shapes.write_images(tmp_path / "one", 30, 32, 5, workers=1)
    shapes.write_images(tmp_path / "two", 30, 32, 5, workers=2)
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "two")


def test_shapes_bad_parameters(tmp_path):
    for kwargs in ({"n_images": 0}, {"size": 8}, {"seed": -1}):
        with pytest.raises(UserError):
            shapes.load_shapes(**{"n_images": 5, **kwargs}, cache_dir=tmp_path)


def test_write_shapes_jsonl(tmp_path):
    out = shapes.write_shapes_jsonl(tmp_path / "out", n_images=20, size=32, seed=4)
    assert out == tmp_path / "out"
    caps = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    qs = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert len(caps) == 20 and [c["image"] for c in caps][:2] == ["images/00000.png", "images/00001.png"]
    assert all((out / row["image"]).is_file() for row in caps + qs)
    assert {c["split"] for c in caps} == {"train", "val", "test"}
    ds = shapes.load_shapes(20, size=32, seed=4, cache_dir=tmp_path / "cache")
    records = {q.question_id: q for s in ds.splits.values() for q in s.questions}
    assert len(qs) == len(records)
    for row in qs:
        r = records[row["question_id"]]
        assert (row["question"], tuple(row["answers"]), row["answer_type"], row["question_type"]) == (
            r.question, r.answers, r.answer_type, r.question_type)
    cached = shapes.cache_folder(20, 32, 4, tmp_path / "cache")
    assert _bytes(out) == _bytes(cached)


def test_write_shapes_jsonl_reads_back(tmp_path):
    readers = pytest.importorskip("mmcli.data.readers")
    out = shapes.write_shapes_jsonl(tmp_path, n_images=20, size=32, seed=0)
    expected = shapes.load_shapes(20, size=32, seed=0, cache_dir=tmp_path / "cache")
    for name in ("captions.jsonl", "questions.jsonl"):
        ds = readers.read_jsonl(out / name)
        assert set(ds.splits) == set(expected.splits)
        for split, s in ds.splits.items():
            e = expected.splits[split]
            if name == "captions.jsonl":
                assert [(r.image_id, r.captions) for r in s.captions] == [(r.image_id, r.captions) for r in e.captions]
            else:
                assert [(q.question_id, q.question, q.answers) for q in s.questions] == [
                    (q.question_id, q.question, q.answers) for q in e.questions]
