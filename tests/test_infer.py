"""`mmcli caption`, `mmcli vqa` and the Python API (`mmcli.load`) on tiny models trained here on shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mmcli
from mmcli.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The shapes set written as files, and a tiny caption run and a tiny VQA run trained on it."""
    from mmcli.cli import main

    root = tmp_path_factory.mktemp("infer")
    assert main(["data", "shapes", "--out", str(root / "shapes"), "--n", "80", "--size", "64"]) == 0
    torch.set_num_threads(1)
    common = dict(preset="tiny", batch_size=16, lr=3e-3, warmup_steps=5, vocab_size=400, max_text_len=24,
                  log_every=10, test=False)
    fit(TrainConfig(task="caption", data=f"jsonl:{root}/shapes/captions.jsonl", out=str(root / "cap"),
                    max_steps=40, eval_every=40, **common))
    fit(TrainConfig(task="vqa", data=f"jsonl:{root}/shapes/questions.jsonl", out=str(root / "vqa"),
                    max_steps=60, eval_every=60, **common))
    fit(TrainConfig(task="vqa", data=f"jsonl:{root}/shapes/questions.jsonl", out=str(root / "late"), fusion="late",
                    max_steps=4, eval_every=4, **common))
    fit(TrainConfig(task="caption", data=f"jsonl:{root}/shapes/captions.jsonl", out=str(root / "concat"),
                    fusion="concat", max_steps=10, eval_every=10, **common))
    fit(TrainConfig(task="retrieval", data=f"jsonl:{root}/shapes/captions.jsonl", out=str(root / "ret"),
                    max_steps=60, eval_every=60, **common))
    return {"root": root, "images": root / "shapes" / "images", "cap": root / "cap", "vqa": root / "vqa",
            "late": root / "late", "concat": root / "concat", "ret": root / "ret"}


def test_caption_a_folder_skips_a_bad_file(trained, run_cli, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(trained["images"].iterdir())[:5]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"not a png")
    code, out, err = run_cli("caption", folder, "--model", trained["cap"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5 and all(line.split("\t")[1].strip() for line in lines)
    assert "skipping" in err and "broken.png" in err and "1 skipped" in err
    code, out, err = run_cli("caption", folder, "--model", trained["cap"], "--strict")
    assert code == 2 and "broken.png" in err and err.count("\n") == 1


def test_caption_jsonl_scores_and_batches_match_single_images(trained, run_cli, tmp_path):
    images = sorted(trained["images"].iterdir())[:6]
    code, out, err = run_cli("caption", *images, "--model", trained["cap"], "--batch-size", "4",
                             "--jsonl", tmp_path / "preds.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [p.stem for p in images]
    # the batch gives each image the caption it gets alone
    model = mmcli.load(trained["cap"])
    assert [r["caption"] for r in rows] == [model.caption(p) for p in images]
    assert model.caption(images[:2], beam=2) == [model.caption(p, beam=2) for p in images[:2]]
    # the references of those images, and `mmcli score` reads the predictions as they are
    refs = [json.loads(line) for line in (trained["root"] / "shapes" / "captions.jsonl").read_text().splitlines()]
    keep = {p.stem for p in images}
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs if r["image_id"] in keep))
    code, out, err = run_cli("score", tmp_path / "preds.jsonl", tmp_path / "refs.jsonl", "--json")
    assert code == 0, err
    assert 0 <= json.loads(out)["scores"]["cider_d"]


def test_vqa_one_question_and_a_batch_that_scores(trained, run_cli, tmp_path):
    image = sorted(trained["images"].iterdir())[0]
    code, out, err = run_cli("vqa", image, "how many shapes are there?", "--model", trained["vqa"], "--json",
                             "--top-k", "3")
    assert code == 0, err
    got = json.loads(out)
    assert len(got["answers"]) == 3 and got["answers"][0]["score"] >= got["answers"][1]["score"]

    questions = trained["root"] / "shapes" / "questions.jsonl"
    code, out, err = run_cli("vqa", "--questions", questions, "--model", trained["vqa"], "--out", tmp_path / "a.json")
    assert code == 0, err
    results = json.loads((tmp_path / "a.json").read_text())
    n = len(questions.read_text().splitlines())
    assert len(results) == n and {"question_id", "answer"} <= set(results[0])
    code, out, err = run_cli("score", tmp_path / "a.json", questions, "--task", "vqa", "--json")
    assert code == 0, err
    # trained on these very questions: above always giving the most common answer
    from collections import Counter

    answers = [json.loads(line)["answers"][0] for line in questions.read_text().splitlines()]
    majority = 100 * Counter(answers).most_common(1)[0][1] / len(answers)
    assert json.loads(out)["scores"]["vqa_accuracy"] > majority + 5


def test_api_answers_and_embeddings(trained):
    model = mmcli.load(trained["vqa"])
    image = sorted(trained["images"].iterdir())[0]
    top = model.answer(image, "how many shapes are there?", top_k=4)
    assert len(top) == 4 and all(0 <= p <= 1 for _, p in top)
    batch = model.answer_batch([image, image], ["how many shapes are there?", "how many shapes are there?"], 4)
    assert batch[0] == batch[1] and [a for a, _ in batch[0]] == [a for a, _ in top]
    e = model.embed_images([image, image])
    t = model.embed_texts(["a red circle", "two shapes"])
    assert e.shape == (2, model.config.embed_dim) == t.shape
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.slow  # (torch.compile: tens of seconds on a CPU)
def test_caption_compile_gives_the_eager_captions(trained, run_cli):
    """--compile: the decoding step compiled (VLM.compile_decoding) gives the eager captions, for batches
    of several sizes (a dynamic batch), beam search and the concat fusion; a single row decodes eagerly."""
    from torch._dynamo.utils import counters

    images = sorted(trained["images"].iterdir())[:7]
    code, eager, err = run_cli("caption", *images, "--model", trained["cap"], "--batch-size", "4")
    assert code == 0, err
    graphs = counters["stats"]["unique_graphs"]
    code, compiled, err = run_cli("caption", *images, "--model", trained["cap"], "--batch-size", "4", "--compile")
    assert code == 0, err
    assert compiled == eager
    assert counters["stats"]["unique_graphs"] > graphs  # the step did compile (no silent fallback to eager)
    for run in ("cap", "concat"):
        plain = mmcli.load(trained[run], precision="fp32")
        fast = mmcli.load(trained[run], precision="fp32", compile=True)
        assert "step" in fast.vlm.__dict__ and "step" not in plain.vlm.__dict__
        assert fast.caption(images[:3], beam=2) == plain.caption(images[:3], beam=2)
        assert fast.caption(images[:5]) == plain.caption(images[:5])
        assert fast.caption(images[0]) == plain.caption(images[0])  # one row: the eager step


def test_compile_without_a_cpp_compiler_is_one_line(trained, run_cli, monkeypatch):
    import torch._inductor.cpp_builder as builder

    def missing():
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(builder, "get_cpp_compiler", missing)
    image = sorted(trained["images"].iterdir())[0]
    code, out, err = run_cli("caption", image, "--model", trained["cap"], "--compile", "--device", "cpu")
    assert code == 2 and "--compile needs a C++ compiler" in err and err.count("\n") == 1, err


def test_a_failed_compile_decodes_eagerly_and_says_so(trained, monkeypatch, capsys):
    """A compiler that cannot build the step (no Python headers, a broken toolchain) raises before the
    step runs: decoding goes on eagerly, with one line on stderr, and the captions are the eager ones."""
    from torch._inductor.exc import InductorError

    calls = []

    def broken(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise InductorError(RuntimeError("C++ compile error\nlong compiler output"), None)
        return run

    images = sorted(trained["images"].iterdir())[:3]
    plain = mmcli.load(trained["cap"], precision="fp32")
    monkeypatch.setattr(torch, "compile", broken)
    fast = mmcli.load(trained["cap"], precision="fp32", compile=True)
    assert fast.caption(images) == plain.caption(images)
    assert fast.caption(images) == plain.caption(images)
    err = capsys.readouterr().err
    assert len(calls) == 1 and err.count("\n") == 1
    assert "--compile: torch.compile failed (RuntimeError: C++ compile error); decoding without it" in err


def test_compile_decoding_is_for_inference(trained):
    model = mmcli.load(trained["cap"])
    model.vlm.train()
    with pytest.raises(ValueError, match="inference model"):
        model.vlm.compile_decoding()


@pytest.mark.parametrize("args,message", [
    (("vqa", "IMG", "what?", "--model", "nowhere"), "nowhere: no such model directory"),
    (("vqa", "IMG", "what?", "--model", "CAP"), "has no VQA head"),
    (("vqa", "missing.png", "what?", "--model", "VQA"), "missing.png: no such image file"),
    (("vqa", "IMG", "  ", "--model", "VQA"), "the question is empty"),
    (("caption", "missing.png", "--model", "CAP"), "missing.png: no such image file or folder"),
    (("caption", "IMG", "--model", "CAP", "--beam", "2", "--sample"), "--sample and --beam"),
    (("vqa", "IMG", "what?", "--model", "LATE", "--explain", "x.png"), "late fusion has no attention to show"),
    (("caption", "IMG", "IMG2", "--model", "CAP", "--explain", "x.png"), "--explain draws one image's caption"),
    (("retrieve", "  ", "--images", "DIR", "--model", "RET"), "the query text is empty"),
    (("retrieve", "dog", "--images", "nodir", "--model", "RET"), "nodir: no such image folder"),
    (("retrieve", "dog", "--image", "IMG", "--images", "DIR", "--model", "RET"), "give one query"),
])
def test_errors_are_one_line(trained, run_cli, args, message):
    image = sorted(trained["images"].iterdir())[0]
    subst = {"IMG": image, "IMG2": sorted(trained["images"].iterdir())[1], "CAP": trained["cap"],
             "VQA": trained["vqa"], "LATE": trained["late"], "RET": trained["ret"], "DIR": trained["images"]}
    code, out, err = run_cli(*[subst.get(a, a) for a in args])
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("run", ["cap", "concat"])
def test_explain_caption_draws_one_panel_per_word(trained, run_cli, tmp_path, run):
    pytest.importorskip("matplotlib")
    from PIL import Image

    image = sorted(trained["images"].iterdir())[2]
    code, out, err = run_cli("caption", image, "--model", trained[run], "--explain", tmp_path / "att.png")
    assert code == 0, err
    words = out.strip().split("\t")[1].split()
    assert words == mmcli.load(trained[run]).caption(image).split()
    png = Image.open(tmp_path / "att.png")
    assert json.loads(png.info["mmcli-panels"]) == words and f"({len(words)} panels" in err


def test_explain_maps_are_distributions_over_the_image(trained, tmp_path):
    from mmcli.explain import caption_attention, vqa_attention

    image = sorted(trained["images"].iterdir())[3]
    for run in ("cap", "concat"):
        words, maps = caption_attention(mmcli.load(trained[run]), image)
        assert maps.shape[0] == len(words) > 0
        assert torch.allclose(maps.flatten(1).sum(-1), torch.ones(len(words)), atol=1e-4)
    model = mmcli.load(trained["vqa"])
    answer, maps = vqa_attention(model, image, "how many shapes are there?")
    assert answer == model.answer(image, "how many shapes are there?", top_k=1)[0][0]
    side = int(model.vlm.vision.num_tokens ** 0.5)
    assert maps.shape == (1, side, side) and abs(float(maps.sum()) - 1) < 1e-4


# ---------------------------------------------------------------------------- retrieve


def test_retrieve_finds_the_captioned_image_and_scores(trained, run_cli, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(trained["images"], folder)
    caps = trained["root"] / "shapes" / "captions.jsonl"
    code, out, err = run_cli("retrieve", "--eval", caps, "--images", folder, "--model", trained["ret"],
                             "--out", tmp_path / "ranking.json")
    assert code == 0, err
    code, out, err = run_cli("score", tmp_path / "ranking.json", tmp_path / "ranking.refs.json", "--task", "retrieval",
                             "--json")
    assert code == 0, err
    scores = json.loads(out)["scores"]
    n = len(list(folder.iterdir()))
    # chance: R@10 = 10 / n (12.5% for 80 images)
    assert scores["t2i_R@10"] > 3 * 100 * 10 / n, scores
    # a text query: the top results are a ranked table of this folder's images
    first = json.loads(caps.read_text().splitlines()[0])
    code, out, err = run_cli("retrieve", first["captions"][0], "--images", folder, "--model", trained["ret"],
                             "-k", "10", "--json", "--rerank", "5")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == list(range(1, 11)) and all(Path(r["image"]).parent == folder for r in rows)
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(4))  # the re-ranked top 5


def test_match_scores_each_image_as_one_at_a_time(trained):
    """Model.match (retrieve --rerank): ITM probabilities in [0, 1], one per image in order; the
    text encoded once for the batch gives what each image scored alone gives."""
    m = mmcli.load(trained["ret"], "cpu")
    images = sorted(trained["images"].iterdir())[:4]
    batched = m.match(images, "a red circle")
    alone = [m.match([p], "a red circle")[0] for p in images]
    assert len(batched) == 4 and all(0.0 <= p <= 1.0 for p in batched)
    assert batched == pytest.approx(alone, abs=1e-5)


def test_retrieve_index_is_reused_and_updated(trained, run_cli, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted(trained["images"].iterdir())
    for p in src[:6]:
        shutil.copy(p, folder / p.name)
    args = ("retrieve", "a red circle", "--images", folder, "--model", trained["ret"], "--json")
    code, out, err = run_cli(*args)
    assert code == 0 and "6 images (6 embedded, 0 reused, 0 removed)" in err, err
    assert (tmp_path / "imgs.mmcli-index").is_file()
    first = json.loads(out)
    code, out, err = run_cli(*args)
    assert "(0 embedded, 6 reused, 0 removed)" in err and json.loads(out) == first
    shutil.copy(src[6], folder / src[6].name)  # adding an image embeds only that image
    code, out, err = run_cli(*args)
    assert "7 images (1 embedded, 6 reused, 0 removed)" in err
    (folder / src[0].name).unlink()
    code, out, err = run_cli(*args)
    assert "6 images (0 embedded, 6 reused, 1 removed)" in err
    # the same results as an index built from nothing (the scores to float rounding: an image
    # embedded alone or in a batch of six goes through differently blocked kernels)
    code, out2, err = run_cli(*args, "--index", tmp_path / "fresh.idx")
    fresh, updated = json.loads(out2), json.loads(out)
    assert "(6 embedded, 0 reused" in err and [r["image"] for r in fresh] == [r["image"] for r in updated]
    assert [r["score"] for r in fresh] == pytest.approx([r["score"] for r in updated], abs=1e-5)


def test_retrieve_by_image(trained, run_cli, tmp_path):
    folder = trained["images"]
    query = sorted(folder.iterdir())[5]
    code, out, err = run_cli("retrieve", "--image", query, "--images", folder, "--model", trained["ret"], "--json",
                             "--index", tmp_path / "i.idx")
    assert code == 0, err
    assert Path(json.loads(out)[0]["image"]).name == query.name  # the image itself comes first
    code, out, err = run_cli("retrieve", "--image", query, "--images", folder, "--model", trained["ret"], "--json",
                             "--index", tmp_path / "i.idx", "--captions", trained["root"] / "shapes" / "captions.jsonl")
    assert code == 0, err
    assert len(json.loads(out)) == 5 and {"caption", "image_id", "score"} <= set(json.loads(out)[0])


def test_top_k_in_chunks_equals_one_product(monkeypatch):
    from mmcli import search

    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    whole = search.top_k(q, keys, 7)
    monkeypatch.setattr(search, "CHUNK", 64)
    chunked = search.top_k(q, keys, 7)
    assert torch.equal(whole[1], chunked[1]) and torch.allclose(whole[0], chunked[0])


def test_read_questions_vqa2_json_finds_coco_file_names(tmp_path):
    from mmcli.cli.infer import read_questions
    from mmcli.errors import UserError

    imgs = tmp_path / "val2014"
    imgs.mkdir()
    for i in (42, 7):
        (imgs / f"COCO_val2014_{i:012d}.jpg").write_bytes(b"")
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps({"questions": [{"question_id": 420, "image_id": 42, "question": "what is it?"},
                                               {"question_id": 70, "image_id": 7, "question": "how many?"}]}))
    rows = read_questions(qfile, imgs)
    assert [(r["question_id"], r["image"].name) for r in rows] == [
        (420, "COCO_val2014_000000000042.jpg"), (70, "COCO_val2014_000000000007.jpg")]
    qfile.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 99, "question": "what?"}]}))
    with pytest.raises(UserError, match="question 1: no image for image_id 99"):
        read_questions(qfile, imgs)
    qfile.write_text(json.dumps([{"question_id": 1, "image": "a.png", "question": " "}]))
    with pytest.raises(UserError, match="the question is empty"):
        read_questions(qfile, imgs)
