"""Retrieval R@K / median / mean rank from a ranking file."""

from __future__ import annotations

import json

import pytest

from mmcli.errors import UserError
from mmcli.metrics.retrieval import load_ranking, load_retrieval_gt, retrieval_recall

# 2 images x 2 captions
GT = {"I1": ["c1a", "c1b"], "I2": ["c2a", "c2b"]}
RANKING = {
    "text_to_image": {
        "c1a": ["I1", "I2"],  # rank 1
        "c1b": ["I2", "I1"],  # rank 2
        "c2a": ["I2", "I1"],  # rank 1
        "c2b": ["I1", "I2"],  # rank 2
    },
    "image_to_text": {
        "I1": ["c2a", "c1b", "c1a", "c2b"],  # first own caption at 2
        "I2": ["c2b", "c1a", "c2a", "c1b"],  # at 1
    },
}


def test_hand_computed_both_directions():
    res = retrieval_recall(RANKING, GT, ks=(2, 1))
    assert res.ks == (1, 2)
    t2i, i2t = res.text_to_image, res.image_to_text
    assert t2i.ranks == {"c1a": 1, "c1b": 2, "c2a": 1, "c2b": 2}
    assert t2i.recall == {1: 50.0, 2: 100.0}
    assert t2i.median_rank == 1  # floor(median(1, 2, 1, 2)) as in VSE++
    assert t2i.mean_rank == 1.5
    assert t2i.n_queries == 4 and t2i.n_beyond_list == 0
    assert i2t.ranks == {"I1": 2, "I2": 1}
    assert i2t.recall == {1: 50.0, 2: 100.0}
    assert i2t.median_rank == 1 and i2t.mean_rank == 1.5 and i2t.n_queries == 2
    assert res.rsum == 300.0
    assert res.signature == "retrieval|dirs:t2i+i2t|k:1,2|i2t:first-caption"
    assert res.scores() == {"t2i_R@1": 50.0, "t2i_R@2": 100.0, "t2i_medr": 1, "t2i_meanr": 1.5,
                            "i2t_R@1": 50.0, "i2t_R@2": 100.0, "i2t_medr": 1, "i2t_meanr": 1.5,
                            "rsum": 300.0}
    assert res.counts() == {"text_to_image queries": 4, "image_to_text queries": 2}
    assert res.warnings == []


def test_default_ks_and_one_direction():
    res = retrieval_recall({"image_to_text": RANKING["image_to_text"]}, GT)
    assert res.text_to_image is None
    assert res.image_to_text.recall == {1: 50.0, 5: 100.0, 10: 100.0}
    assert res.rsum == 250.0
    assert res.signature.startswith("retrieval|dirs:i2t|k:1,5,10")
    assert res.as_dict()["image_to_text"]["ranks"] == {"I1": 2, "I2": 1}


def test_integer_ids_are_strings():
    res = retrieval_recall({"text_to_image": {10: [1, 2], 20: [1]}}, {1: [10], 2: [20]}, ks=[1])
    assert res.text_to_image.ranks == {"10": 1, "20": None}


def test_truncated_lists():
    gt = {"A": ["a"], "B": ["b"], "C": ["c"]}
    # one hit at 1, two targets missing from their truncated lists
    res = retrieval_recall({"text_to_image": {"a": ["A"], "b": ["A"], "c": []}}, gt, ks=(1, 5))
    t2i = res.text_to_image
    assert t2i.ranks == {"a": 1, "b": None, "c": None}
    assert t2i.recall == pytest.approx({1: 100 / 3, 5: 100 / 3})
    assert t2i.median_rank is None and t2i.mean_rank is None
    assert t2i.n_beyond_list == 2
    assert res.warnings == ["text_to_image: 2 of 3 queries have their target beyond the "
                            "(truncated) ranked list: a miss for every K, rank unknown"]
    assert res.scores()["t2i_medr"] is None and res.counts() == {"text_to_image queries": 3}
    # the median is still known when fewer than half are beyond the list
    res = retrieval_recall({"text_to_image": {"a": ["A"], "b": ["C", "B"], "c": ["A"]}}, gt)
    assert res.text_to_image.median_rank == 2 and res.text_to_image.mean_rank is None
    assert res.text_to_image.recall == pytest.approx({1: 100 / 3, 5: 200 / 3, 10: 200 / 3})


# --- scoring errors -------------------------------------------------------------


def _with(direction, block):
    return {direction: block}


def test_error_unknown_query():
    block = dict(RANKING["text_to_image"], cX=["I1"])
    with pytest.raises(UserError, match=r"text_to_image: 1 query id\(s\) are not caption ids"
                                        r".*'cX'"):
        retrieval_recall(_with("text_to_image", block), GT)


def test_error_unknown_ranked_item():
    block = dict(RANKING["text_to_image"], c1a=["I1", "I9"])
    with pytest.raises(UserError, match=r"ranked id\(s\) are not image ids.*'I9'$"):
        retrieval_recall(_with("text_to_image", block), GT)


def test_error_swapped_directions_hint():
    with pytest.raises(UserError, match="directions swapped"):
        retrieval_recall({"image_to_text": {"I1": ["I2"], "I2": ["I1"]}}, GT)


def test_error_duplicate_ranked_item():
    block = dict(RANKING["image_to_text"], I1=["c1a", "c2a", "c1a"])
    with pytest.raises(UserError, match=r"image_to_text query 'I1': 'c1a' appears twice"):
        retrieval_recall(_with("image_to_text", block), GT)


def test_error_missing_query():
    block = {k: v for k, v in RANKING["text_to_image"].items() if k != "c2b"}
    with pytest.raises(UserError, match=r"1 caption\(s\) of the ground truth have no ranked "
                                        r"list: 'c2b'"):
        retrieval_recall(_with("text_to_image", block), GT)


@pytest.mark.parametrize("ranking,message", [
    ([], "expected an object with 'text_to_image'"),
    ({}, "neither 'text_to_image' nor 'image_to_text'"),
    ({"text2image": {}}, "unknown key"),
    ({"text_to_image": []}, "must be an object mapping each query id"),
    ({"text_to_image": {}}, "'text_to_image' has no queries"),
    ({"text_to_image": {"c1a": "I1"}}, "expected a ranked list of ids, got str"),
    ({"text_to_image": {"c1a": [["I1"]]}}, "a ranked item must be an integer or a string"),
])
def test_error_ranking_shapes(ranking, message):
    with pytest.raises(UserError, match=message):
        retrieval_recall(ranking, GT)


@pytest.mark.parametrize("gt,message", [
    ({}, "no images"),
    ([], "expected a mapping"),
    ({"I1": []}, "has no captions"),
    ({"I1": "c1a"}, "expected a list of caption ids"),
    ({"I1": ["c1"], "I2": ["c1"]}, "caption 'c1' is listed for image 'I1' and again"),
])
def test_error_gt_shapes(gt, message):
    with pytest.raises(UserError, match=message):
        retrieval_recall(RANKING, gt)


@pytest.mark.parametrize("ks", [(), (0,), (1, 1), ("5",), (True,), 5])
def test_error_bad_ks(ks):
    with pytest.raises(UserError, match="ks"):
        retrieval_recall(RANKING, GT, ks=ks)


# --- loading ------------------------------------------------------------------


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    return path


def test_load_ranking(tmp_path):
    assert load_ranking(_write(tmp_path, "rank.json", RANKING)) == RANKING
    got = load_ranking(_write(tmp_path, "r2.json", {"image_to_text": {"1": [3, 4]},
                                                    "text_to_image": None}))
    assert got == {"image_to_text": {"1": ["3", "4"]}}


def test_load_gt_formats(tmp_path):
    assert load_retrieval_gt(_write(tmp_path, "gt.json", GT)) == GT
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}],
            "annotations": [{"id": 11, "image_id": 1, "caption": "x"},
                            {"id": 21, "image_id": 2, "caption": "y"},
                            {"id": 12, "image_id": 1, "caption": "z"}]}
    want = {"1": ["11", "12"], "2": ["21"]}
    assert load_retrieval_gt(_write(tmp_path, "coco.json", coco)) == want
    del coco["images"]
    assert load_retrieval_gt(_write(tmp_path, "coco2.json", coco)) == want
    lines = "".join(json.dumps({"image_id": a["image_id"], "caption_id": a["id"]}) + "\n"
                    for a in coco["annotations"])
    assert load_retrieval_gt(_write(tmp_path, "gt.jsonl", lines)) == want
    assert load_retrieval_gt(_write(tmp_path, "one.jsonl", '{"image_id": 1, "caption_id": 11}')
                             ) == {"1": ["11"]}


def test_load_and_score_end_to_end(tmp_path):
    gt = load_retrieval_gt(_write(tmp_path, "gt.json", GT))
    ranking = load_ranking(_write(tmp_path, "rank.json", RANKING))
    assert retrieval_recall(ranking, gt, ks=(1, 2)).rsum == 300.0


@pytest.mark.parametrize("loader", [load_ranking, load_retrieval_gt])
def test_load_errors_common(tmp_path, loader):
    with pytest.raises(UserError, match=r"nope\.json: file not found"):
        loader(tmp_path / "nope.json")
    bad = _write(tmp_path, "bad.json", '{\n  "I1": ["c1"]\n    "I2": ["c2"]\n}')
    with pytest.raises(UserError) as err:
        loader(bad)
    assert str(err.value) == f"{bad}: invalid JSON at line 3 column 5 (Expecting ',' delimiter)"
    with pytest.raises(UserError, match="file is empty"):
        loader(_write(tmp_path, "e.json", ""))
    with pytest.raises(UserError, match="got str"):
        loader(_write(tmp_path, "s.json", '"hello"'))


def test_load_ranking_errors(tmp_path):
    with pytest.raises(UserError, match="not JSON lines"):
        load_ranking(_write(tmp_path, "r.jsonl", '{"text_to_image": {}}\n'))
    with pytest.raises(UserError, match=r"r\.json: text_to_image query 'c1': 'I1' appears twice"):
        load_ranking(_write(tmp_path, "r.json", {"text_to_image": {"c1": ["I1", "I1"]}}))


def test_load_gt_errors(tmp_path):
    with pytest.raises(UserError, match=r"line 2: caption '11' appears twice"):
        load_retrieval_gt(_write(tmp_path, "g.jsonl", '{"image_id": 1, "caption_id": 11}\n'
                                                      '{"image_id": 2, "caption_id": 11}\n'))
    with pytest.raises(UserError, match=r"line 1: missing 'caption_id'"):
        load_retrieval_gt(_write(tmp_path, "g.jsonl", '{"image_id": 1, "id": 11}\n'))
    coco = {"images": [{"id": 1}, {"id": 2}], "annotations": [{"id": 11, "image_id": 1}]}
    with pytest.raises(UserError, match=r"1 image\(s\) in 'images' have no caption "
                                        r"annotation: '2'"):
        load_retrieval_gt(_write(tmp_path, "c.json", coco))
    coco = {"images": [{"id": 1}], "annotations": [{"id": 11, "image_id": 1},
                                                   {"id": 12, "image_id": 3}]}
    with pytest.raises(UserError, match=r"not in 'images': '3'"):
        load_retrieval_gt(_write(tmp_path, "c.json", coco))
    with pytest.raises(UserError, match=r"entry 1: missing 'id'"):
        load_retrieval_gt(_write(tmp_path, "c.json", {"annotations": [{"image_id": 1}]}))
    with pytest.raises(UserError, match="has 'images' but no 'annotations'"):
        load_retrieval_gt(_write(tmp_path, "k.json", {"images": [{"sentids": [1]}]}))
    with pytest.raises(UserError, match="no images"):
        load_retrieval_gt(_write(tmp_path, "n.json", {}))
