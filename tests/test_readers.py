"""Dataset readers (mmcli.data.readers) and the dataset spec syntax (mmcli.data.spec)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from mmcli.data import readers, spec
from mmcli.data.readers import (read_coco, read_flickr8k, read_folder, read_jsonl, read_karpathy,
                                read_vqa2)
from mmcli.data.records import CaptionRecord, Dataset, Split, VQARecord
from mmcli.data.spec import SPEC_HELP, SPEC_KINDS, load_dataset, parse_spec
from mmcli.errors import UserError

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


def png(path: Path, color=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


# --------------------------------------------------------------------------- COCO


def coco_files(tmp_path: Path, images=None, annotations=None):
    folder = tmp_path / "imgs"
    png(folder / "a.png")
    png(folder / "sub" / "b.png")
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png"},
                                                      {"id": 2, "file_name": "sub/b.png"},
                                                      {"id": 3, "file_name": "c.png"}],
        "annotations": annotations if annotations is not None else [
            {"image_id": 2, "caption": " A blue square. "}, {"image_id": 1, "caption": "red"},
            {"image_id": 2, "caption": "blue"}],
    }
    return dump(tmp_path / "captions.json", data), folder


def test_coco(tmp_path):
    ann, folder = coco_files(tmp_path)
    ds = read_coco(ann, folder)
    assert list(ds.splits) == ["all"]
    recs = ds.split("all").captions
    assert recs == [
        CaptionRecord("1", str(folder / "a.png"), ("red",)),
        CaptionRecord("2", str(folder / "sub" / "b.png"), ("A blue square.", "blue")),
        CaptionRecord("3", str(folder / "c.png"), ()),  # no caption, missing file: found later by the loader
    ]
    assert ds.name == f"coco:{ann}:{folder}"


def test_coco_relative_paths_are_made_absolute(tmp_path):
    coco_files(tmp_path)
    ds = read_coco("captions.json", "imgs")  # the test runs inside tmp_path
    assert ds.split("all").captions[0].image == str(tmp_path / "imgs" / "a.png")


def test_coco_without_annotations_is_an_image_list(tmp_path):
    ann, folder = coco_files(tmp_path)
    dump(ann, {"images": [{"id": 1, "file_name": "a.png"}]})
    assert read_coco(ann, folder).split("all").captions == [CaptionRecord("1", str(folder / "a.png"), ())]


@pytest.mark.parametrize("images, annotations, needle", [
    ([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], [], "appears twice"),
    ([{"id": 1}], [], "missing 'file_name'"),
    ([{"id": [1], "file_name": "a.png"}], [], "id must be an integer or a string"),
    (["a.png"], [], "images entry 1: expected an object"),
    ([{"id": 1, "file_name": "a.png"}], [{"image_id": 9, "caption": "x"}], "not in 'images'"),
    ([{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": 5}], "caption must be a non-empty string"),
    ([{"id": 1, "file_name": "a.png"}], [{"image_id": 1, "caption": "  "}], "annotations entry 1"),
    ([{"id": 1, "file_name": "a.png"}], [{"caption": "x"}], "missing 'image_id'"),
    ([{"id": 1, "file_name": ""}], [], "image path must be a non-empty string"),
    ([], [], "contains no images"),
])
def test_coco_errors(tmp_path, images, annotations, needle):
    ann, folder = coco_files(tmp_path, images, annotations)
    with pytest.raises(UserError) as e:
        read_coco(ann, folder)
    one_line_error(e, str(ann), needle)


def test_coco_file_errors(tmp_path):
    ann, folder = coco_files(tmp_path)
    with pytest.raises(UserError) as e:
        read_coco(tmp_path / "nope.json", folder)
    one_line_error(e, "nope.json", "not found")
    with pytest.raises(UserError) as e:
        read_coco(ann, tmp_path / "no_images")
    one_line_error(e, "no_images", "image folder not found")
    with pytest.raises(UserError) as e:
        read_coco(ann, ann)
    one_line_error(e, "expected an image folder")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_coco(bad, folder)
    one_line_error(e, "bad.json", "invalid JSON")
    for data, needle in (([1, 2], "got a JSON list"), ({"images": {}}, "'images' must be a list"),
                         ({"annotations": []}, "it is missing"),
                         ({"images": [], "annotations": 3}, "'annotations' must be a list")):
        with pytest.raises(UserError) as e:
            read_coco(dump(bad, data), folder)
        one_line_error(e, "bad.json", needle)


# --------------------------------------------------------------------------- image root escape


@pytest.mark.parametrize("file_name", ["../outside.png", "sub/../../outside.png", "/etc/passwd"])
def test_image_paths_may_not_leave_the_root(tmp_path, file_name):
    ann, folder = coco_files(tmp_path, [{"id": 1, "file_name": file_name}], [])
    with pytest.raises(UserError) as e:
        read_coco(ann, folder)
    one_line_error(e, str(ann), "outside the image folder", repr(file_name))
    ds = read_coco(ann, folder, allow_outside_root=True)
    assert ds.split("all").captions[0].image == os.path.normpath(os.path.join(folder, file_name))


def test_image_paths_inside_the_root_are_fine(tmp_path):
    ann, folder = coco_files(tmp_path, [{"id": 1, "file_name": "sub/../a.png"},
                                        {"id": 2, "file_name": str(tmp_path / "imgs" / "sub" / "b.png")}], [])
    recs = read_coco(ann, folder).split("all").captions
    assert [r.image for r in recs] == [str(folder / "a.png"), str(folder / "sub" / "b.png")]


def test_sibling_folder_with_the_root_as_prefix_is_outside(tmp_path):
    ann, folder = coco_files(tmp_path, [{"id": 1, "file_name": "../imgs2/a.png"}], [])
    with pytest.raises(UserError, match="outside the image folder"):
        read_coco(ann, folder)


def test_every_root_reader_takes_allow_outside_root(tmp_path):
    kar = dump(tmp_path / "k.json", {"images": [
        {"filename": "x.png", "filepath": "..", "split": "train", "sentences": [{"raw": "x"}]}]})
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserError, match="outside"):
        read_karpathy(kar, tmp_path / "imgs")
    assert read_karpathy(kar, tmp_path / "imgs", allow_outside_root=True).split("train").captions[0].image \
        == str(tmp_path / "x.png")
    js = lines(tmp_path / "d" / "data.jsonl", [{"image": "../x.png", "caption": "x"}])
    with pytest.raises(UserError, match="outside"):
        read_jsonl(js)
    assert read_jsonl(js, allow_outside_root=True).split("all").captions[0].image == str(tmp_path / "x.png")
    root = flickr_root(tmp_path / "f", train=["../escape.jpg"], dev=["b.jpg"],
                       tokens=["../escape.jpg#0\tx", "b.jpg#0\ty"])
    with pytest.raises(UserError, match="outside"):
        read_flickr8k(root)
    assert read_flickr8k(root, allow_outside_root=True).split("train").captions[0].image \
        == str(root / "escape.jpg")


# --------------------------------------------------------------------------- Karpathy


def karpathy_file(tmp_path: Path, images: list) -> tuple[Path, Path]:
    (tmp_path / "imgs").mkdir(parents=True, exist_ok=True)
    return dump(tmp_path / "dataset.json", {"dataset": "coco", "images": images}), tmp_path / "imgs"


def kimg(name, split, sentences=("a cat", "a dog"), **extra):
    return {"filename": name, "split": split, "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
            "imgid": 0, **extra}


def test_karpathy_coco_style(tmp_path):
    path, folder = karpathy_file(tmp_path, [
        kimg("a.jpg", "train", filepath="train2014", cocoid=11),
        kimg("b.jpg", "restval", filepath="val2014", cocoid=12),
        kimg("c.jpg", "val", (" A horse. ",), filepath="val2014", cocoid=13),
        kimg("d.jpg", "test", filepath="val2014", cocoid=14),
        kimg("e.jpg", "train", filepath="train2014", cocoid=15),
    ])
    ds = read_karpathy(path, folder)
    assert list(ds.splits) == ["train", "val", "test"]
    assert [r.image_id for r in ds.split("train").captions] == ["11", "12", "15"]
    assert ds.split("train").captions[1].image == str(folder / "val2014" / "b.jpg")
    assert ds.split("val").captions == [CaptionRecord("13", str(folder / "val2014" / "c.jpg"), ("A horse.",))]
    assert ds.split("test").captions[0].captions == ("a cat", "a dog")
    assert "restval" in ds.info


def test_karpathy_flickr_style_ids_are_file_names_and_empty_splits_dropped(tmp_path):
    tokens_only = {"filename": "z.jpg", "split": "train", "sentences": [{"tokens": ["a", "b"]}]}
    path, folder = karpathy_file(tmp_path, [kimg("x.jpg", "train"), kimg("y.jpg", "test"), tokens_only])
    ds = read_karpathy(path, folder)
    assert list(ds.splits) == ["train", "test"]
    assert [r.image_id for r in ds.split("train").captions] == ["x.jpg", "z.jpg"]
    assert ds.split("train").captions[1].captions == ("a b",)
    assert ds.split("train").captions[0].image == str(folder / "x.jpg")


@pytest.mark.parametrize("images, needle", [
    ([kimg("a.jpg", "dev")], "unknown split 'dev'"),
    ([kimg("a.jpg", "train"), kimg("a.jpg", "test")], "appears twice"),
    ([kimg("a.jpg", "train", cocoid=1), kimg("b.jpg", "val", cocoid=1)], "image 1 appears twice"),
    ([{"filename": "a.jpg", "split": "train"}], "missing 'sentences'"),
    ([{"filename": "a.jpg", "split": "train", "sentences": "a cat"}], "'sentences' must be a list"),
    ([{"filename": "a.jpg", "split": "train", "sentences": [{"tokens": []}]}], "sentence 1"),
    ([{"filename": "a.jpg", "split": "train", "sentences": ["a cat"]}], "expected an object with 'raw'"),
    ([kimg("a.jpg", "train", filepath=3)], "filepath must be a string"),
    ([kimg("a.jpg", "train", cocoid=None)], "cocoid must be an integer"),
    ([kimg(7, "train")], "filename must be a non-empty string"),
    ([], "contains no images"),
])
def test_karpathy_errors(tmp_path, images, needle):
    path, folder = karpathy_file(tmp_path, images)
    with pytest.raises(UserError) as e:
        read_karpathy(path, folder)
    one_line_error(e, str(path), needle)


# --------------------------------------------------------------------------- Flickr8k


def flickr_root(root: Path, train, dev, tokens, test=None, image_dir="images") -> Path:
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")
    if test is not None:
        (root / "Flickr_8k.testImages.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    return root


TOKENS = ["a.jpg#1\tA second caption .", "a.jpg#0\tA first caption .", "b.jpg#0\tB caption",
          "c.jpg#0\tC caption", "orphan.jpg#0\tnot in any split", "", "b.jpg#2\tB third"]


def test_flickr8k(tmp_path):
    root = flickr_root(tmp_path / "f8k", ["b.jpg", "a.jpg", ""], ["c.jpg"], TOKENS)
    ds = read_flickr8k(root)
    assert list(ds.splits) == ["train", "val"]  # no test file: no test split
    train = ds.split("train").captions
    assert train == [
        CaptionRecord("b.jpg", str(root / "images" / "b.jpg"), ("B caption", "B third")),
        CaptionRecord("a.jpg", str(root / "images" / "a.jpg"), ("A first caption .", "A second caption .")),
    ]
    assert ds.split("val").captions[0].image_id == "c.jpg"
    assert "1 images" in ds.info["unused_captions"]
    assert ds.name == f"flickr8k:{root}"


def test_flickr8k_test_split_and_old_image_folder_name(tmp_path):
    root = flickr_root(tmp_path, ["a.jpg"], ["b.jpg"], TOKENS, test=["c.jpg"], image_dir="Flicker8k_Dataset")
    ds = read_flickr8k(root)
    assert list(ds.splits) == ["train", "val", "test"]
    assert ds.split("test").captions[0].image == str(root / "Flicker8k_Dataset" / "c.jpg")


@pytest.mark.parametrize("train, dev, tokens, needle", [
    (["a.jpg"], ["z.jpg"], TOKENS, "1 images have no caption"),
    (["a.jpg", "a.jpg"], ["b.jpg"], TOKENS, "line 2: image a.jpg is already listed"),
    (["a.jpg"], ["a.jpg"], TOKENS, "already listed at Flickr_8k.trainImages.txt line 1"),
    (["a.jpg"], ["b.jpg"], ["a.jpg#0\tx", "a.jpg#0\ty", "b.jpg#0\tz"], "line 2: caption a.jpg#0 appears twice"),
    (["a.jpg"], ["b.jpg"], ["a.jpg\tno index"], "line 1: expected 'IMAGE#K<TAB>caption'"),
    (["a.jpg"], ["b.jpg"], ["a.jpg#x\tbad index"], "line 1"),
    (["a.jpg"], ["b.jpg"], ["a.jpg#0\tok", "b.jpg#0\t  "], "line 2: caption must be a non-empty string"),
])
def test_flickr8k_errors(tmp_path, train, dev, tokens, needle):
    root = flickr_root(tmp_path, train, dev, tokens)
    with pytest.raises(UserError) as e:
        read_flickr8k(root)
    one_line_error(e, needle)


def test_flickr8k_missing_pieces(tmp_path):
    with pytest.raises(UserError) as e:
        read_flickr8k(tmp_path / "nowhere")
    one_line_error(e, "nowhere", "Flickr8k folder not found")
    root = flickr_root(tmp_path, ["a.jpg"], ["b.jpg"], TOKENS)
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(UserError) as e:
        read_flickr8k(root)
    one_line_error(e, "Flickr_8k.devImages.txt", "file not found")
    (root / "images").rmdir()
    with pytest.raises(UserError) as e:
        read_flickr8k(root)
    one_line_error(e, "no image folder")


def test_flickr8k_crlf_and_unicode_line_separators(tmp_path):
    root = flickr_root(tmp_path, ["a.jpg\r"], ["b.jpg\r"], ["a.jpg#0\ta\u2028cat\r", "b.jpg#0\ta dog\r"])
    ds = read_flickr8k(root)
    assert ds.split("train").captions[0].captions == ("a\u2028cat",)
    assert ds.split("val").captions[0].image_id == "b.jpg"


def test_flickr8k_accepts_a_space_instead_of_the_tab(tmp_path):
    root = flickr_root(tmp_path, ["a.jpg"], ["b.jpg"], ["a.jpg#0 a cat", "b.jpg#0\ta dog"])
    assert read_flickr8k(root).split("train").captions[0].captions == ("a cat",)


def test_flickr8k_shared_data():
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        pytest.skip(f"{FLICKR8K} is missing (the shared data folder is not beside the repository)")
    ds = read_flickr8k(FLICKR8K)
    assert list(ds.splits) == ["train", "val"]  # the test split is held out on purpose
    train, val = ds.split("train").captions, ds.split("val").captions
    assert (len(train), len(val)) == (6000, 1000)
    assert all(len(r.captions) == 5 for r in train + val)
    assert not {r.image_id for r in train} & {r.image_id for r in val}
    assert os.path.isfile(train[0].image) and os.path.isfile(val[-1].image)
    assert load_dataset(f"flickr8k:{FLICKR8K}").name == f"flickr8k:{FLICKR8K}"


# --------------------------------------------------------------------------- VQA v2


def vqa_files(tmp_path: Path, naming="COCO_val2014_{:012d}.jpg", subtype="val2014", annotations=True,
              questions=None):
    folder = tmp_path / "val2014"
    for n in (42, 7):
        png(folder / naming.format(n))
    qs = questions if questions is not None else [
        {"question_id": 420, "image_id": 42, "question": "What color is it?"},
        {"question_id": 421, "image_id": 42, "question": "Is it red?"},
        {"question_id": 70, "image_id": 7, "question": "How many?"},
    ]
    qdata = {"questions": qs, "data_type": "mscoco"}
    if subtype:
        qdata["data_subtype"] = subtype
    qpath = dump(tmp_path / "questions.json", qdata)
    if not annotations:
        return qpath, None, folder
    ten = lambda a, b: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i in range(9)] + \
        [{"answer": b, "answer_confidence": "maybe", "answer_id": 10}]
    anns = [
        {"question_id": 70, "image_id": 7, "answers": ten("2", "two"), "answer_type": "number",
         "question_type": "how many", "multiple_choice_answer": "2"},
        {"question_id": 420, "image_id": 42, "answers": ten("red", "Red"), "answer_type": "other",
         "question_type": "what color is", "multiple_choice_answer": "red"},
        {"question_id": 421, "image_id": 42, "answers": ten("yes", "yes"), "answer_type": "yes/no",
         "question_type": "is it", "multiple_choice_answer": "yes"},
    ]
    return qpath, dump(tmp_path / "annotations.json", {"annotations": anns}), folder


def test_vqa2(tmp_path):
    q, a, folder = vqa_files(tmp_path)
    ds = read_vqa2(q, a, folder)
    recs = ds.split("all").questions
    assert recs[0] == VQARecord("420", "42", str(folder / "COCO_val2014_000000000042.jpg"), "What color is it?",
                                ("red",) * 9 + ("Red",), "other", "what color is")
    assert [r.question_id for r in recs] == ["420", "421", "70"]
    assert len(recs[2].answers) == 10 and recs[2].answer_type == "number"
    assert ds.split("all").images() == {"42": str(folder / "COCO_val2014_000000000042.jpg"),
                                        "7": str(folder / "COCO_val2014_000000000007.jpg")}


@pytest.mark.parametrize("naming, subtype", [("{:012d}.jpg", "val2014"), ("{}.jpg", "val2014"),
                                             ("COCO_train2014_{:012d}.jpg", None), ("{:012d}.jpg", None)])
def test_vqa2_image_file_naming(tmp_path, naming, subtype):
    q, a, folder = vqa_files(tmp_path, naming=naming, subtype=subtype)
    recs = read_vqa2(q, a, folder).split("all").questions
    assert recs[2].image == str(folder / naming.format(7))


def test_vqa2_naming_probe_skips_a_missing_first_image(tmp_path):
    q, a, folder = vqa_files(tmp_path)
    (folder / "COCO_val2014_000000000042.jpg").unlink()
    assert read_vqa2(q, a, folder).split("all").questions[0].image == str(folder / "COCO_val2014_000000000042.jpg")


def test_vqa2_without_annotations(tmp_path):
    q, _, folder = vqa_files(tmp_path, annotations=False)
    ds = read_vqa2(q, None, folder)
    assert all(r.answers == () and r.answer_type is None for r in ds.split("all").questions)
    assert "answers" in ds.info


@pytest.mark.parametrize("questions, needle", [
    ([{"question_id": 1, "image_id": 42, "question": "a"}, {"question_id": 1, "image_id": 7, "question": "b"}],
     "question id 1 appears twice"),
    ([{"question_id": 1, "image_id": "x", "question": "a"}], "image_id must be a COCO image number"),
    ([{"question_id": 1, "image_id": 42}], "missing 'question'"),
    ([{"question_id": 1.5, "image_id": 42, "question": "a"}], "question_id must be an integer"),
    ([], "contains no questions"),
])
def test_vqa2_question_errors(tmp_path, questions, needle):
    q, _, folder = vqa_files(tmp_path, annotations=False, questions=questions)
    with pytest.raises(UserError) as e:
        read_vqa2(q, None, folder)
    one_line_error(e, "questions.json", needle)


def test_vqa2_annotation_errors(tmp_path):
    q, a, folder = vqa_files(tmp_path)
    good = json.loads(a.read_text())["annotations"]
    cases = [
        (good + [good[0]], "question id 70 appears twice"),
        (good[1:], "no annotation for question 70"),
        (good + [{**good[0], "question_id": 99}], "1 annotations are for questions not in"),
        ([{**good[0], "answers": ["2"] * 10}] + good[1:], "'answer' string"),
        ([{**good[0], "answers": None}] + good[1:], "'answers' must be a list"),
        ([{**good[0], "answer_type": 3}] + good[1:], "answer_type must be a string"),
        ([], "contains no annotations"),
    ]
    for anns, needle in cases:
        dump(a, {"annotations": anns})
        with pytest.raises(UserError) as e:
            read_vqa2(q, a, folder)
        one_line_error(e, "annotations.json", needle)


def test_vqa2_no_matching_image_files(tmp_path):
    q, a, folder = vqa_files(tmp_path, naming="img_{}.png")
    with pytest.raises(UserError) as e:
        read_vqa2(q, a, folder)
    one_line_error(e, str(folder), "no image file for COCO image 42", "COCO_val2014_000000000042.jpg", "42.jpg")


# --------------------------------------------------------------------------- JSONL


def test_jsonl_captions_merge_and_questions(tmp_path):
    png(tmp_path / "d" / "img" / "a.png")
    path = lines(tmp_path / "d" / "data.jsonl", [
        {"image": "img/a.png", "caption": "a red square"},
        {"image": "img/b.png", "captions": ["one", "two"]},
        "",
        {"image": "img/a.png", "captions": ["another"]},
        {"image": "img/a.png", "question": "what color?", "answers": ["red", "red"], "answer_type": "color"},
        {"image": "img/b.png", "question": "shape?", "answer": "circle", "question_id": "q9"},
        {"image": str(tmp_path / "d" / "img" / "c.png")},
    ])
    ds = read_jsonl(path)
    split = ds.split("all")
    d = tmp_path / "d" / "img"
    assert split.captions == [CaptionRecord("img/a.png", str(d / "a.png"), ("a red square", "another")),
                              CaptionRecord("img/b.png", str(d / "b.png"), ("one", "two")),
                              CaptionRecord(str(d / "c.png"), str(d / "c.png"), ())]
    assert split.questions == [
        VQARecord("5", "img/a.png", str(d / "a.png"), "what color?", ("red", "red"), "color", None),
        VQARecord("q9", "img/b.png", str(d / "b.png"), "shape?", ("circle",), None, None),
    ]
    assert ds.name == f"jsonl:{path}"


def test_jsonl_splits_and_ids(tmp_path):
    path = lines(tmp_path / "data.jsonl", [
        {"image": "a.png", "caption": "x", "split": "val", "image_id": 1},
        {"image": "b.png", "caption": "y", "split": "train", "image_id": 2},
        {"image": "a.png", "caption": "z", "split": "train", "image_id": 1},
        {"image": "a.png", "caption": "w", "split": "val", "image_id": 1},
        {"image": "a.png", "question": "q?", "answers": [], "image_id": 1, "question_id": 1, "split": "val"},
        {"image": "a.png", "question": "q?", "image_id": 1, "question_id": 1, "split": "train"},
    ])
    ds = read_jsonl(path)
    assert list(ds.splits) == ["val", "train"]  # order of first appearance
    assert ds.split("val").captions == [CaptionRecord("1", str(tmp_path / "a.png"), ("x", "w"))]
    assert [r.image_id for r in ds.split("train").captions] == ["2", "1"]
    assert ds.split("val").questions[0].answers == ()
    assert ds.split("train").questions[0].question_id == "1"  # ids are unique per split


def test_jsonl_one_object_and_json_list(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"image": "a.png", "caption": "x"}), encoding="utf-8")
    assert len(read_jsonl(one).split("all").captions) == 1
    many = dump(tmp_path / "many.json", [{"image": "a.png", "caption": "x"}, {"image": "b.png"}])
    assert len(read_jsonl(many).split("all").captions) == 2


@pytest.mark.parametrize("rows, needle", [
    (['{"image": "a.png", "caption": "x"}', '{"image": "b.png", "caption": '], "line 2"),
    ([{"caption": "x"}], "line 1: missing 'image'"),
    ([{"image": 3, "caption": "x"}], "image path must be a non-empty string"),
    ([{"image": "a.png", "caption": "x", "captions": ["y"]}], "both 'caption' and 'captions'"),
    ([{"image": "a.png", "captions": "x"}], "'captions' must be a list"),
    ([{"image": "a.png", "captions": ["x", 3]}], "each caption must be a non-empty string"),
    ([{"image": "a.png", "captoin": "x"}], "unexpected key 'captoin' in a caption line"),
    ([{"image": "a.png", "caption": "x", "answer": "y"}], "unexpected key 'answer'"),
    ([{"image": "a.png", "question": "q", "caption": "x"}], "unexpected key 'caption' in a question line"),
    ([{"image": "a.png", "question": "q", "answer": "y", "answers": ["y"]}], "both 'answer' and 'answers'"),
    ([{"image": "a.png", "question": "q", "answers": "y"}], "'answers' must be a list"),
    ([{"image": "a.png", "question": "q", "answer": 3}], "answers must be strings"),
    ([{"image": "a.png", "question": ""}], "question must be a non-empty string"),
    ([{"image": "a.png", "question": "q", "question_id": 1}, {"image": "a.png", "question": "r", "question_id": 1}],
     "line 2: question id 1 appears twice"),
    ([{"image": "a.png", "image_id": "x"}, {"image": "b.png", "image_id": "x"}], "image id 'x' is already used"),
    ([{"image": "a.png", "image_id": "x"}, {"image": "a.png", "question": "q", "image_id": "y"}],
     "already has image id 'x'"),
    ([{"image": "a.png", "split": ""}], "split must be a non-empty string"),
    ([{"image": "a.png", "image_id": None}], "image_id must be an integer or a string"),
    (['[1, 2]'], "line 1: expected a JSON object"),
    (['{"image": "a.png", "image": "b.png"}'], "appears twice in one object"),
])
def test_jsonl_errors(tmp_path, rows, needle):
    path = lines(tmp_path / "data.jsonl", rows)
    with pytest.raises(UserError) as e:
        read_jsonl(path)
    one_line_error(e, "data.jsonl", needle)


def test_jsonl_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="contains no images"):
        read_jsonl(dump(tmp_path / "none.json", []))
    with pytest.raises(UserError, match="got a JSON str"):
        read_jsonl(dump(tmp_path / "str.json", "hello"))


# --------------------------------------------------------------------------- folder


def test_folder(tmp_path):
    root = tmp_path / "pics"
    for name in ("b.PNG", "a.jpg", "sub/c.jpeg", "sub/deeper/d.webp", "e.TIFF", "f.gif", "g.bmp", "h.tif",
                 "notes.txt", ".hidden.jpg", ".cache/x.jpg", "noext"):
        png(root / name) if name.endswith(".jpg") else touch(root / name)  # never opened anyway
    ds = read_folder(root)
    recs = ds.split("all").captions
    assert [r.image_id for r in recs] == ["a.jpg", "b.PNG", "e.TIFF", "f.gif", "g.bmp", "h.tif",
                                          "sub/c.jpeg", "sub/deeper/d.webp"]
    assert recs[-1] == CaptionRecord("sub/deeper/d.webp", str(root / "sub" / "deeper" / "d.webp"), ())
    assert ds.name == f"folder:{root}"


def test_folder_errors(tmp_path):
    with pytest.raises(UserError) as e:
        read_folder(tmp_path / "none")
    one_line_error(e, "none", "folder not found")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(UserError) as e:
        read_folder(tmp_path / "empty")
    one_line_error(e, "empty", "no image files")
    with pytest.raises(UserError, match="is a file"):
        read_folder(tmp_path / "empty" / "readme.txt")


# --------------------------------------------------------------------------- spec


def fake_dataset(name="fake") -> Dataset:
    return Dataset(name=name, splits={"all": Split(captions=[CaptionRecord("1", "x.png", ("c",))])})


def fake_module(monkeypatch, name: str, **functions) -> None:
    """Stand in for mmcli.data.NAME (the spec imports it lazily)."""
    module = types.ModuleType(f"mmcli.data.{name}")
    module.__dict__.update(functions)
    monkeypatch.setitem(sys.modules, f"mmcli.data.{name}", module)


def test_spec_kinds_and_help():
    assert set(SPEC_KINDS) == {"easyvqa", "shapes", "flickr8k", "coco", "karpathy", "vqa2", "jsonl", "folder"}
    for kind in SPEC_KINDS:
        assert kind in SPEC_HELP
    assert "[" not in SPEC_HELP  # rich markup in --help
    assert all(len(line) <= 80 for line in SPEC_HELP.splitlines())


@pytest.mark.parametrize("text, kwargs", [("shapes", {}), ("shapes:100", {"n_images": 100}),
                                          ("shapes:100:32", {"n_images": 100, "size": 32}),
                                          ("SHAPES:7", {"n_images": 7})])
def test_spec_shapes(monkeypatch, text, kwargs):
    calls = []
    fake_module(monkeypatch, "shapes", load_shapes=lambda **kw: calls.append(kw) or fake_dataset())
    ds = load_dataset(text)
    assert calls == [kwargs]
    assert ds.name == text


def test_spec_easyvqa(monkeypatch):
    calls = []
    fake_module(monkeypatch, "easyvqa", load_easyvqa=lambda *a, **kw: calls.append((a, kw)) or fake_dataset())
    assert load_dataset("easyvqa").name == "easyvqa"
    assert calls == [((), {})]


@pytest.mark.parametrize("text, needle", [
    ("", "unknown kind ''"),
    ("mnist", "unknown kind 'mnist'"),
    ("easyvqa:extra", "expected easyvqa"),
    ("shapes:1:2:3", "expected shapes, shapes:N or shapes:N:SIZE"),
    ("shapes:", "N in shapes:N:SIZE must be an integer"),
    ("shapes:abc", "N in shapes:N:SIZE must be an integer"),
    ("shapes:0", "N in shapes:N:SIZE must be an integer from 1"),
    ("shapes:-5", "N in shapes:N:SIZE must be an integer"),
    ("shapes:²", "N in shapes:N:SIZE must be an integer"),
    ("shapes:10:8", "SIZE in shapes:N:SIZE must be an integer from 16 to 1024"),
    ("flickr8k", "expected flickr8k:DIR"),
    ("flickr8k:", "empty path"),
    ("flickr8k:C:/data", "paths may not contain ':'"),
    ("coco:a.json", "expected coco:ANNOTATIONS:IMAGES"),
    ("coco:a.json:", "empty path"),
    ("karpathy:a.json", "expected karpathy:JSON:IMAGES"),
    ("vqa2:q.json:imgs", "expected vqa2:QUESTIONS:ANNOTATIONS:IMAGES"),
    ("vqa2::a.json:imgs", "empty path"),
    ("jsonl:a:b", "expected jsonl:FILE"),
    ("folder", "expected folder:DIR"),
])
def test_spec_errors(text, needle):
    with pytest.raises(UserError) as e:
        load_dataset(text)
    msg = one_line_error(e, needle)
    assert msg.endswith("(kinds: easyvqa, shapes, flickr8k, coco, karpathy, vqa2, jsonl, folder)")


def test_spec_disk_readers(tmp_path):
    ann, folder = coco_files(tmp_path)
    assert load_dataset(f"coco:{ann}:{folder}").split("all").captions[0].image_id == "1"
    assert load_dataset("coco:captions.json:imgs").name == "coco:captions.json:imgs"  # relative to the cwd
    kar, kfolder = karpathy_file(tmp_path / "k", [kimg("a.jpg", "test")])
    assert list(load_dataset(f"karpathy:{kar}:{kfolder}").splits) == ["test"]
    root = flickr_root(tmp_path / "f", ["a.jpg"], ["b.jpg"], TOKENS)
    assert list(load_dataset(f"flickr8k:{root}").splits) == ["train", "val"]
    q, a, vfolder = vqa_files(tmp_path / "v")
    assert load_dataset(f"vqa2:{q}:{a}:{vfolder}").split("all").questions[0].answers[0] == "red"
    assert load_dataset(f"vqa2:{q}::{vfolder}").split("all").questions[0].answers == ()
    js = lines(tmp_path / "d.jsonl", [{"image": "a.png", "caption": "x"}])
    assert load_dataset(f"jsonl:{js}").split("all").captions[0].captions == ("x",)
    assert load_dataset(f"folder:{folder}").split("all").captions[0].image_id == "a.png"


def test_spec_allow_outside_root_and_home(tmp_path, monkeypatch):
    js = lines(tmp_path / "d" / "d.jsonl", [{"image": "../a.png", "caption": "x"}])
    with pytest.raises(UserError, match="outside"):
        load_dataset(f"jsonl:{js}")
    assert load_dataset(f"jsonl:{js}", allow_outside_root=True).split("all").captions[0].image == \
        str(tmp_path / "a.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("jsonl:~/d/d.jsonl") == ("jsonl", [str(tmp_path / "d" / "d.jsonl")])


def test_spec_real_easyvqa():
    pytest.importorskip("easy_vqa", reason="the easy-vqa package is not installed")
    pytest.importorskip("mmcli.data.easyvqa", reason="mmcli.data.easyvqa is not written yet")
    ds = load_dataset("easyvqa")
    assert ds.name == "easyvqa"
    assert sum(len(s.questions) for s in ds.splits.values()) == 38575 + 9673


def test_spec_real_shapes():
    shapes = pytest.importorskip("mmcli.data.shapes", reason="mmcli.data.shapes is not written yet")
    assert hasattr(shapes, "load_shapes")
    ds = load_dataset("shapes:8:32")
    assert ds.name == "shapes:8:32"
    images = {i for s in ds.splits.values() for i in s.images()}
    assert 0 < len(images) <= 8 * len(ds.splits)


def test_readers_module_exports():
    assert set(readers.__all__) >= {"read_coco", "read_karpathy", "read_flickr8k", "read_vqa2", "read_jsonl",
                                    "read_folder"}
    assert spec.readers is readers
