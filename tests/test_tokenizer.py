"""mmcli.tokenizer: SentencePiece training, round trips, byte fallback, padding, files; AnswerVocab.

The Flickr8k training test (marked slow) needs ../shared/data/flickr8k.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcli.errors import UserError
from mmcli.tokenizer import AnswerVocab, Tokenizer

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"

CORPUS = [
    "A dog runs on the beach.", "Two cats sit on a red sofa!", "What color is the ball?",
    "A man rides a horse in the field.", "Is there a blue circle?", "A girl in a pink dress climbs stairs.",
    "How many triangles are there?", "The green square is left of the yellow star.",
] * 10


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400)


# ---------------------------------------------------------------- training and special ids


def test_special_ids_are_fixed(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3, 4, 5)
    assert tok.encode("a dog", bos=True, eos=True)[0] == 2
    assert tok.encode("a dog", bos=True, eos=True)[-1] == 3
    assert 262 < tok.vocab_size <= 400  # 6 specials + 256 bytes + pieces


def test_large_vocab_on_small_corpus_shrinks_instead_of_failing():
    t = Tokenizer.train(CORPUS, vocab_size=8000)
    assert 262 < t.vocab_size < 8000


@pytest.mark.parametrize("model_type", ["auto", "unigram", "bpe", "char"])
def test_model_types_round_trip(model_type):
    t = Tokenizer.train(CORPUS, vocab_size=300, model_type=model_type)
    assert t.decode(t.encode("A dog on the beach, 狗!")) == "a dog on the beach, 狗!"


# A corpus like easy-VQA's questions: few distinct sentences over a few dozen words.
QUESTIONS = [f"{w} {q}" for w in ("what", "which") for q in (
    "shape is present?", "color is the shape?", "shape is in the image?", "color is the circle?",
    "color is the triangle?", "color is the rectangle?")] + [
    f"does the image {neg}contain a {c} shape?" for neg in ("", "not ") for c in (
        "red", "green", "blue", "yellow", "teal", "brown", "gray", "black")] + [
    f"is there a {c} {s} in the image?" for c in ("red", "blue", "gray") for s in ("circle", "triangle", "rectangle")]


def test_auto_picks_bpe_where_unigram_splits_the_words_of_a_small_corpus():
    unigram = Tokenizer.train(QUESTIONS * 20, model_type="unigram")
    auto = Tokenizer.train(QUESTIONS * 20)
    n = lambda t: sum(len(t.encode(q)) for q in QUESTIONS)  # noqa: E731
    assert n(auto) < n(unigram)  # unigram's pieces are fragments: a question takes more of them
    assert auto.model_proto == Tokenizer.train(QUESTIONS * 20, model_type="bpe").model_proto
    assert [auto.decode([i]) for i in auto.encode("What color is the triangle?")] == [
        "what", "color", "is", "the", "triangle", "?"]
    assert auto.decode(auto.encode("Is there a purple star?")) == "is there a purple star?"  # unseen words: bytes


def test_auto_keeps_unigram_when_bpe_fills_the_vocabulary():
    # 1,500 random words: unigram stops a little below 2,000 pieces, BPE has merges to spare
    r = random.Random(0)
    words = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(3, 8))) for _ in range(1500)]
    corpus = [" ".join(r.choice(words) for _ in range(8)) for _ in range(3000)]
    unigram = Tokenizer.train(corpus, vocab_size=2000, model_type="unigram")
    assert unigram.vocab_size < 2000 == Tokenizer.train(corpus, vocab_size=2000, model_type="bpe").vocab_size
    assert Tokenizer.train(corpus, vocab_size=2000).model_proto == unigram.model_proto


def test_training_is_deterministic():
    a = Tokenizer.train(CORPUS, vocab_size=300)
    b = Tokenizer.train(iter(CORPUS), vocab_size=300)
    assert a.model_proto == b.model_proto


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 100}, "vocab size 100 is too small for the training texts: it needs at least"),
    ({"model_type": "word"}, "model type 'word': expected one of auto, unigram, bpe, char"),
])
def test_bad_training_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        Tokenizer.train(CORPUS, **kwargs)


def test_empty_corpus():
    with pytest.raises(UserError, match="training texts are empty"):
        Tokenizer.train(["", "  "])


def test_special_symbols_cannot_be_injected_by_text(tok):
    ids = tok.encode("<cls> a <sep> <pad> </s>")
    assert not set(ids) & {0, 2, 3, 4, 5}
    assert tok.decode(ids) == "<cls> a <sep> <pad> </s>"


# ---------------------------------------------------------------- normalisation and round trips


@pytest.mark.parametrize("text, expected", [
    ("  A   Dog\t\tRUNS \n", "a dog runs"),
    ("Ｈｅｌｌｏ ﬁne ½", "hello fine 1⁄2"),  # NFKC: fullwidth, ligature, fraction
    ("ℌ Ⅻ", "h xii"),  # NFKC before lower-casing, so these end lower-case too
    ("a\u00a0b\u3000c", "a b c"),  # exotic spaces collapse
    ("", ""),
])
def test_normalize(tok, text, expected):
    assert tok.normalize(text) == expected
    assert tok.decode(tok.encode(text)) == expected


def test_lowercase_off_keeps_case(tok):
    cased = Tokenizer.train(CORPUS, vocab_size=400, lowercase=False)
    assert cased.normalize("  A   Dog ") == "A Dog"
    assert cased.decode(cased.encode("Ｈello")) == "Hello"
    assert cased.encode("A") != cased.encode("a")
    assert tok.encode("A DOG") == tok.encode("a dog")


@pytest.mark.parametrize("text", ["a dog 🐕 on the beach 😀", "一只狗在海滩上", "café naïve Ærøskøbing ß",
                                  "Ελληνικά кириллица עברית", "\U0001f9ea\U0001fa90 x"])
def test_unseen_characters_survive_by_byte_fallback(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == tok.normalize(text) == text.lower()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet=" \t\n\u2581\u00a0aAbB.,é😀日", max_size=20))
def test_round_trip_property(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == tok.normalize(text)


def test_decode_skips_special_ids_and_takes_arrays(tok):
    ids = tok.encode("a red ball")
    assert tok.decode([2, 4] + ids + [5, 3, 0, 0]) == "a red ball"
    assert tok.decode(np.array(ids, dtype=np.int64)) == "a red ball"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


# ---------------------------------------------------------------- batches


def test_encode_batch_pads_right_and_reports_lengths(tok):
    texts = ["a dog", "two cats sit on a red sofa", ""]
    ids, lengths = tok.encode_batch(texts, max_len=64, bos=True, eos=True)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    assert ids.shape == (3, lengths.max())
    for row, n, text in zip(ids, lengths, texts):
        assert list(row[:n]) == tok.encode(text, bos=True, eos=True)
        assert (row[n:] == tok.pad_id).all()
    assert lengths[2] == 2  # bos, eos


def test_encode_batch_truncates_keeping_eos(tok):
    long = "a girl in a pink dress climbs stairs " * 5
    full = tok.encode(long, bos=True, eos=True)
    ids, lengths = tok.encode_batch([long, "a dog"], max_len=8, bos=True, eos=True)
    assert ids.shape == (2, 8) and lengths[0] == 8
    assert list(ids[0]) == full[:7] + [tok.eos_id]
    ids, lengths = tok.encode_batch([long], max_len=8)
    assert list(ids[0]) == tok.encode(long)[:8]


def test_encode_batch_pad_to_fixed_width(tok):
    ids, lengths = tok.encode_batch(["a dog"], max_len=10, pad_to=16)
    assert ids.shape == (1, 16) and (ids[0, lengths[0]:] == 0).all()
    assert tok.encode_batch([], max_len=10, pad_to=16)[0].shape == (0, 16)
    with pytest.raises(ValueError):
        tok.encode_batch(["a"], max_len=10, pad_to=5)
    with pytest.raises(ValueError):
        tok.encode_batch(["a"], max_len=1, bos=True, eos=True)
    with pytest.raises(TypeError):
        tok.encode_batch("a dog", max_len=10)


# ---------------------------------------------------------------- files


def test_save_load_gives_identical_ids(tok):
    tok.save("tokenizer.model")
    back = Tokenizer.load("tokenizer.model")
    assert back.model_proto == tok.model_proto and back.lowercase
    texts = ["A Dog runs 🐕", "what COLOR is the ball?"]
    assert [back.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert not list(Path(".").glob(".tokenizer.model.*"))  # no temp file left behind


def test_lowercase_option_travels_in_the_file():
    Tokenizer.train(CORPUS, vocab_size=300, lowercase=False).save("cased.model")
    back = Tokenizer.load("cased.model")
    assert back.lowercase is False and back.normalize("A Dog") == "A Dog"


def test_saved_file_holds_a_plain_sentencepiece_model(tok):
    import sentencepiece as spm
    tok.save("tokenizer.model")
    proto = Path("tokenizer.model").read_bytes().split(b"\n", 2)[2]
    assert spm.SentencePieceProcessor(model_proto=proto).encode("a dog") == tok.encode("a dog")


@pytest.mark.parametrize("content, message", [
    (None, "tokenizer file not found"),
    (b"", "not an mmcli tokenizer file"),
    (b"\x0a\x03abc garbage", "not an mmcli tokenizer file"),
    (b"mmcli-tokenizer 1\n{\"lowercase\": true}\nnot a model proto", "corrupt tokenizer file"),
    (b"mmcli-tokenizer 1\n{oops\n", "corrupt tokenizer file"),
    (b"mmcli-tokenizer 1\n{}\n", "corrupt tokenizer file"),
    (b"mmcli-tokenizer 1\n{\"lowercase\": \"no\"}\n", "corrupt tokenizer file .lowercase is 'no'"),
])
def test_bad_tokenizer_files(content, message):
    if content is not None:
        Path("tok.model").write_bytes(content)
    with pytest.raises(UserError, match=f"tok.model: {message}"):
        Tokenizer.load("tok.model")


def test_truncated_tokenizer_file(tok):
    tok.save("tok.model")
    data = Path("tok.model").read_bytes()
    Path("tok.model").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="tok.model: corrupt tokenizer file"):
        Tokenizer.load("tok.model")


def test_foreign_sentencepiece_model_is_rejected():
    import io

    import sentencepiece as spm
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=out, vocab_size=60, minloglevel=2)
    Path("tok.model").write_bytes(b"mmcli-tokenizer 1\n{\"lowercase\": true}\n" + out.getvalue())
    with pytest.raises(UserError, match="tok.model: corrupt tokenizer file .*special pieces"):
        Tokenizer.load("tok.model")


def test_save_into_missing_folder(tok):
    with pytest.raises(UserError, match="does not exist"):
        tok.save("nowhere/tokenizer.model")


# ---------------------------------------------------------------- answers


VQA = [
    ["yes"] * 10,
    ["no"] * 9 + ["yes"],
    ["red"] * 3 + ["blue"] * 2 + ["green", "dark red", "maroon", "pink", "Red "],
    ["2", "2", "two", "3"] + ["2"] * 6,
    ["blue"],
]


def test_answer_vocab_counts_each_answer_once_per_question_with_ties_by_string():
    vocab = AnswerVocab.build(VQA)
    # yes: 2 questions, blue: 2, then every other answer once, ties alphabetical
    assert vocab.answers[:2] == ["blue", "yes"]
    assert vocab.answers[2:] == sorted(vocab.answers[2:])
    assert "red" in vocab.answers and "Red " not in vocab.answers  # light normalisation
    assert AnswerVocab.build(VQA, top_k=3).answers == ["blue", "yes", "2"]
    assert AnswerVocab.build(VQA, min_count=2).answers == ["blue", "yes"]
    assert AnswerVocab.build(reversed(VQA)).answers == vocab.answers  # order-independent


def test_answer_vocab_index():
    vocab = AnswerVocab.build(VQA)
    assert vocab.index("blue") == 0 and vocab.index("  YES ") == 1
    assert vocab.index("purple") is None
    assert len(vocab) == len(vocab.answers)


def test_soft_targets():
    vocab = AnswerVocab.build(VQA)
    targets = vocab.soft_targets(VQA[2])
    assert targets[vocab.index("red")] == 1.0  # 3x "red" + "Red "
    assert targets[vocab.index("blue")] == pytest.approx(0.6667, abs=1e-4)
    assert targets[vocab.index("green")] == pytest.approx(0.3333, abs=1e-4)
    assert vocab.soft_targets(["blue"]) == {vocab.index("blue"): 1.0}
    assert vocab.soft_targets(["purple"] * 10) == {}
    assert vocab.soft_targets([]) == {}
    small = AnswerVocab.build(VQA, top_k=2)
    assert small.soft_targets(VQA[2]) == {small.index("blue"): pytest.approx(2 / 3)}  # others out of vocab


def test_coverage():
    vocab = AnswerVocab.build(VQA, min_count=2)  # blue, yes
    assert vocab.coverage(VQA) == pytest.approx(4 / 5)  # the "2" question has neither
    assert vocab.coverage([["purple"]]) == 0.0
    assert vocab.coverage([]) == 0.0


def test_bare_string_answers_are_rejected():
    with pytest.raises(TypeError):
        AnswerVocab.build(["yes", "no"])


def test_answer_vocab_save_load():
    vocab = AnswerVocab.build(VQA + [["café ☕"]])
    vocab.save("answers.json")
    back = AnswerVocab.load("answers.json")
    assert back.answers == vocab.answers
    assert back.soft_targets(VQA[2]) == vocab.soft_targets(VQA[2])


@pytest.mark.parametrize("content, message", [
    (None, "answer vocabulary file not found"),
    ("{not json", "cannot read the answer vocabulary"),
    ('["yes", "no"]', "not an mmcli answer vocabulary"),
    ('{"format": "mmcli-answer-vocab", "answers": ["yes", 3]}', "not an mmcli answer vocabulary"),
    ('{"format": "mmcli-answer-vocab", "answers": ["yes", "YES"]}', "answers must be distinct"),
])
def test_bad_answer_vocab_files(content, message):
    if content is not None:
        Path("answers.json").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=f"answers.json: {message}"):
        AnswerVocab.load("answers.json")


def test_bad_answer_vocab_options():
    with pytest.raises(UserError, match="top_k"):
        AnswerVocab.build(VQA, top_k=0)


# ---------------------------------------------------------------- real data


@pytest.mark.slow
def test_flickr8k_train_captions():
    if not FLICKR.is_dir():
        pytest.skip(f"{FLICKR} is missing (the shared data folder is not beside the repository)")
    lines = (FLICKR / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    captions = {}
    for line in lines:
        key, caption = line.split("\t", 1)
        captions.setdefault(key.split("#")[0], []).append(caption)
    split = lambda name: [c for img in (FLICKR / name).read_text().split() for c in captions[img]]  # noqa: E731
    train, dev = split("Flickr_8k.trainImages.txt"), split("Flickr_8k.devImages.txt")
    assert len(train) == 30000

    tok = Tokenizer.train(train, vocab_size=8000)
    assert 1000 < tok.vocab_size <= 8000
    assert Tokenizer.train(train, vocab_size=8000).model_proto == tok.model_proto
    ids, lengths = tok.encode_batch(dev, max_len=64, bos=True, eos=True)
    assert tok.unk_id not in ids
    assert all(tok.decode(row) == tok.normalize(c) for row, c in zip(ids, dev))
    assert np.median(lengths) < 20  # common words are single pieces
    assert len(tok.encode("dog")) == 1
