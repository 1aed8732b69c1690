"""Text tokenizer (SentencePiece) and the answer vocabulary for classification VQA.

:class:`Tokenizer` wraps a SentencePiece model trained in memory on the training
texts (captions and questions). Special ids are fixed for every model:

    ====  =====  =======  =========================================
    id    piece  name     use
    ====  =====  =======  =========================================
    0     <pad>  pad_id   right padding in :meth:`Tokenizer.encode_batch`
    1     <unk>  unk_id   never produced for text (byte fallback), kept for SentencePiece
    2     <s>    bos_id   start of a caption
    3     </s>   eos_id   end of a caption
    4     <cls>  cls_id   the [CLS] position of VQA / ITM
    5     <sep>  sep_id   separator
    ====  =====  =======  =========================================

``<cls>`` and ``<sep>`` are SentencePiece *control* symbols, not user-defined
ones: they exist only as ids, so a caption that contains the text ``"<cls>"`` is
tokenized as ordinary characters and cannot inject a special token.

Text normalisation, in order: when ``lowercase`` is on (the default), the
Tokenizer itself applies Unicode NFKC then ``str.lower()`` (NFKC first, so that
e.g. fullwidth ``Ｈ`` also ends lower-case); then SentencePiece's ``nmt_nfkc`` rule
(NFKC, control characters dropped, every whitespace run collapsed to one space,
leading and trailing whitespace removed). :meth:`Tokenizer.normalize` returns
exactly that text, and ``decode(encode(t)) == normalize(t)`` for every string:
characters outside the vocabulary (emoji, unseen scripts) are encoded as their
UTF-8 bytes (``byte_fallback``) and come back on decoding.

File format (:meth:`Tokenizer.save`): ONE self-contained file, by convention
``tokenizer.model`` in a checkpoint folder, so it is written atomically in one
step and can never be separated from its options::

    mmcli-tokenizer 1\\n            magic line and format version
    {"lowercase": true}\\n          the options, one JSON line
    <serialized SentencePiece ModelProto>   the rest of the file, raw bytes

``tail -n +3 tokenizer.model > sp.model`` gives a plain SentencePiece model.

:class:`AnswerVocab` maps VQA answers to class indices and builds soft targets.
"""

from __future__ import annotations

import io
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .errors import UserError
from .fileio import atomic_write_bytes, atomic_write_text

MAGIC = b"mmcli-tokenizer 1"
# No "word": its byte-fallback pieces would decode the word boundary "\u2581" literally.
MODEL_TYPES = ("auto", "unigram", "bpe", "char")
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>", "<cls>", "<sep>")  # ids 0..5


class Tokenizer:
    """A SentencePiece model plus the options the Tokenizer applies around it."""

    pad_id, unk_id, bos_id, eos_id, cls_id, sep_id = range(6)

    def __init__(self, model_proto: bytes, lowercase: bool = True):
        self._sp = spm.SentencePieceProcessor()
        self._sp.load_from_serialized_proto(model_proto)  # RuntimeError if not a model
        pieces = tuple(self._sp.id_to_piece(i) for i in range(min(6, self._sp.vocab_size())))
        if pieces != SPECIAL_PIECES:
            raise ValueError(f"special pieces are {pieces}, expected {SPECIAL_PIECES}")
        self.lowercase = bool(lowercase)
        self._skip = {self.pad_id, self.bos_id, self.eos_id, self.cls_id, self.sep_id}

    # ----------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, model_type: str = "auto",
              lowercase: bool = True) -> Tokenizer:
        """Train on ``texts`` in memory, in about a second for 30,000 captions.

        ``vocab_size`` is an upper bound (``hard_vocab_limit=False``): it counts
        the 6 special pieces and the 256 byte pieces, and a corpus too small to
        support it gives fewer pieces instead of an error. For example unigram on
        the 30,000 Flickr8k train captions asks for 8000 and gets 4794; BPE gets
        the full 8000. A ``vocab_size`` below 262 + the corpus's characters is a
        :class:`UserError` that says the minimum.

        ``model_type="auto"`` (the default) is unigram, or BPE for a corpus too small for
        unigram: SentencePiece's unigram trainer seeds its vocabulary from substrings shared
        across *distinct* sentences, so a corpus of a few hundred distinct texts over a few dozen
        words gets letters and fragments for its commonest words (easy-VQA's 107 distinct
        questions: "what" becomes 4 pieces, 2.3 pieces per word, 14 per question). When unigram
        comes back below ``vocab_size``, BPE is trained too; it is kept when it also stops below
        ``vocab_size`` (it ran out of merges: every word of the corpus is a piece) and encodes the
        training texts in fewer tokens (easy-VQA: 1.16 pieces per word, 7 per question). A corpus
        that fills BPE's vocabulary keeps unigram (Flickr8k: unigram's 4,794 pieces).

        Reproducible: the same texts and options give byte-identical models.
        Training runs on one thread (``num_threads=1``): the thread count is
        stored in the model, multi-threaded unigram EM sums in a varying order,
        and one thread is fast enough. No sampling happens (every sentence is
        used), so no random seed is involved.
        """
        if model_type not in MODEL_TYPES:
            raise UserError(f"tokenizer model type {model_type!r}: expected one of {', '.join(MODEL_TYPES)}")
        prep = _preprocessor(lowercase)
        sentences = [prep(t) for t in texts]
        if not any(s.strip() for s in sentences):
            raise UserError("cannot train the tokenizer: the training texts are empty")
        if model_type != "auto":
            return cls(_train_sentencepiece(sentences, vocab_size, model_type), lowercase=lowercase)
        unigram = cls(_train_sentencepiece(sentences, vocab_size, "unigram"), lowercase=lowercase)
        if unigram.vocab_size >= vocab_size:
            return unigram
        bpe = cls(_train_sentencepiece(sentences, vocab_size, "bpe"), lowercase=lowercase)
        if bpe.vocab_size < vocab_size and bpe._count(sentences) < unigram._count(sentences):
            return bpe
        return unigram

    def _count(self, sentences: list[str]) -> int:
        """Tokens of the already preprocessed ``sentences``."""
        return sum(map(len, self._sp.encode(sentences)))

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> None:
        """Write the one-file format described in the module docstring, atomically."""
        header = MAGIC + b"\n" + json.dumps({"lowercase": self.lowercase}).encode() + b"\n"
        atomic_write_bytes(path, header + self.model_proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: tokenizer file not found") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read the tokenizer ({e.strerror or e})") from None
        parts = data.split(b"\n", 2)
        if len(parts) < 3 or parts[0] != MAGIC:
            raise UserError(f"{path}: not an mmcli tokenizer file (it must start with {MAGIC.decode()!r})")
        try:
            lowercase = json.loads(parts[1])["lowercase"]
            if not isinstance(lowercase, bool):
                raise TypeError(f"lowercase is {lowercase!r}, expected true or false")
            return cls(parts[2], lowercase=lowercase)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{path}: corrupt tokenizer file ({str(e).strip() or type(e).__name__})") from None

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (what reproducibility is checked on)."""
        return self._sp.serialized_model_proto()

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    # ----------------------------------------------------------------- text <-> ids

    def normalize(self, text: str) -> str:
        """The text as the model sees it, and as ``decode(encode(text))`` returns it."""
        return self._sp.normalize(_preprocessor(self.lowercase)(text)).replace("\u2581", " ").strip(" ")

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._sp.encode(_preprocessor(self.lowercase)(text), add_bos=bos, add_eos=eos)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, NumPy array or tensor), skipping pad/bos/eos/cls/sep."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._sp.decode([i for i in ids if i not in self._skip])

    def words(self, ids: Iterable[int]) -> list[tuple[str, list[int]]]:
        """The words of ``ids`` (special ids skipped), each with the positions in ``ids`` of its pieces:
        a piece that starts with SentencePiece's word mark begins a new word."""
        out: list[tuple[str, list[int]]] = []
        for pos, i in enumerate(int(i) for i in ids):
            if i in self._skip:
                continue
            piece = self._sp.id_to_piece(i)
            if piece.startswith("\u2581") or not out:
                out.append(([], []))  # type: ignore[arg-type]
            out[-1][0].append(i)
            out[-1][1].append(pos)
        return [(self._sp.decode(pieces).strip(), where) for pieces, where in out if self._sp.decode(pieces).strip()]

    def encode_batch(self, texts: Iterable[str], max_len: int, bos: bool = False, eos: bool = False,
                     pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode, truncate to ``max_len`` tokens and right-pad with ``pad_id``.

        Returns ``(ids, lengths)``: int64 arrays of shape (B, L) and (B,). ``L`` is
        ``pad_to`` when given (a fixed width, at least ``max_len``), else the
        longest sequence after truncation. ``bos``/``eos`` count towards
        ``max_len``; a truncated sequence with ``eos=True`` still ends in ``eos_id``.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts, not one string")
        if max_len < 1 + bos + eos:
            raise ValueError(f"max_len={max_len} leaves no room for text tokens")
        if pad_to is not None and pad_to < max_len:
            raise ValueError(f"pad_to={pad_to} is smaller than max_len={max_len}")
        prep = _preprocessor(self.lowercase)
        seqs = self._sp.encode([prep(t) for t in texts], add_bos=bos, add_eos=eos)
        seqs = [s if len(s) <= max_len else s[:max_len - 1] + [self.eos_id] if eos else s[:max_len]
                for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        width = pad_to if pad_to is not None else int(lengths.max(initial=0))
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        for row, s in zip(ids, seqs):
            row[:len(s)] = s
        return ids, lengths


def _train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str) -> bytes:
    """A serialized SentencePiece model of ``model_type`` trained on preprocessed ``sentences``."""
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out,
            vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
            byte_fallback=True, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            control_symbols=["<cls>", "<sep>"], num_threads=1, minloglevel=2)
    except RuntimeError as e:
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
        if m is None:
            raise
        raise UserError(f"tokenizer vocab size {m[1]} is too small for the training texts: "
                        f"it needs at least {m[2]}") from None
    return out.getvalue()


def _preprocessor(lowercase: bool):
    """What the Tokenizer does before SentencePiece's own normalisation."""
    if lowercase:
        return lambda text: unicodedata.normalize("NFKC", text).lower()
    return lambda text: text


# ============================================================================ answers


def normalize_answer(answer: str) -> str:
    """Light answer normalisation: lower-case, strip, collapse whitespace runs.

    VQA v2 answers are stored already processed by the official pipeline, so
    nothing heavier is applied when building the vocabulary; scoring applies
    :func:`mmcli.metrics.vqa.normalize_answer` to predictions and references.
    """
    return " ".join(answer.lower().split())


class AnswerVocab:
    """The answers a VQA classifier can output, most frequent first (index 0)."""

    def __init__(self, answers: Sequence[str]):
        self.answers = [normalize_answer(a) for a in answers]
        self._index = {a: i for i, a in enumerate(self.answers)}
        if len(self._index) != len(self.answers):
            raise ValueError("answers must be distinct after normalisation")

    @classmethod
    def build(cls, answer_lists: Iterable[Sequence[str]], top_k: int = 3129, min_count: int = 1) -> AnswerVocab:
        """Keep the ``top_k`` answers given for the most questions.

        An answer counts once per question however many annotators gave it (ten
        ``"yes"`` on one question count 1), so a count is a number of questions
        and ``min_count`` is "answered for at least this many questions".
        Answers with equal counts are ordered by the answer string. Empty
        answers are never kept.
        """
        if top_k < 1 or min_count < 1:
            raise UserError(f"answer vocabulary: top_k ({top_k}) and min_count ({min_count}) must be >= 1")
        counts: Counter[str] = Counter()
        for answers in answer_lists:
            counts.update({normalize_answer(a) for a in _as_list(answers)} - {""})
        ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
        return cls(ranked[:top_k])

    def __len__(self) -> int:
        return len(self.answers)

    def index(self, answer: str) -> int | None:
        return self._index.get(normalize_answer(answer))

    def soft_targets(self, answers: Sequence[str]) -> dict[int, float]:
        """VQA soft scores ``{class index: min(1, count / 3)}`` over in-vocabulary answers.

        With fewer than 3 answers the divisor is the number of answers, so one
        answer scores 1.0 (and two identical ones too). Ten answers with "red"
        3 times, "blue" twice, "green" once give 1.0, 0.667, 0.333.
        """
        answers = _as_list(answers)
        divisor = min(3, len(answers))
        counts = Counter(normalize_answer(a) for a in answers)
        return {self._index[a]: min(1.0, c / divisor) for a, c in counts.items() if a in self._index}

    def coverage(self, answer_lists: Iterable[Sequence[str]]) -> float:
        """Fraction of questions with at least one in-vocabulary answer (0.0 for none)."""
        hits = [any(self.index(a) is not None for a in _as_list(answers)) for answers in answer_lists]
        return sum(hits) / len(hits) if hits else 0.0

    def save(self, path: str | os.PathLike) -> None:
        text = json.dumps({"format": "mmcli-answer-vocab", "version": 1, "answers": self.answers},
                          ensure_ascii=False, indent=0)
        atomic_write_text(path, text + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerVocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: answer vocabulary file not found") from None
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or e
            raise UserError(f"{path}: cannot read the answer vocabulary ({reason})") from None
        ok = isinstance(data, dict) and data.get("format") == "mmcli-answer-vocab"
        answers = data.get("answers") if ok else None
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise UserError(f"{path}: not an mmcli answer vocabulary (expected "
                            '{"format": "mmcli-answer-vocab", "answers": [strings]})')
        try:
            return cls(answers)
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None


def _as_list(answers: Sequence[str]) -> Sequence[str]:
    if isinstance(answers, str):  # a bare string would be counted character by character
        raise TypeError(f"expected a list of answers, got the string {answers!r}")
    return answers
