"""The Python API beside the command line: ``mmcli.load(RUN_DIR)`` and what a trained model does.

    import mmcli
    model = mmcli.load("runs/easyvqa")            # RUN/best, else RUN/last, or a checkpoint directory
    model.answer("shape.png", "what color is the shape?")   # [("red", 0.998), ("blue", 0.001), ...]
    model.caption(["a.jpg", "b.jpg"], beam=3)     # ["a dog runs on the grass", ...]
    model.embed_images(["a.jpg"]), model.embed_texts(["a dog"])   # L2-normalised (N, E) tensors

Images are file paths or PIL images; each goes through the eval transform the model was
trained with (the backbone's resize and center crop). Nothing here trains or downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import UserError, first_line

ImageLike = Union[str, os.PathLike, "PIL.Image.Image"]  # noqa: F821


def load(run_dir: str | os.PathLike, device: str = "auto", precision: str = "auto", compile: bool = False) -> "Model":
    """A trained model from a run directory (its best/, else last/) or a checkpoint directory.

    ``precision``: the weights' dtype for inference: fp32, bf16 (fp16 on CUDA), or auto (bf16 on a
    CUDA GPU that has it, else fp32; :func:`mmcli.device.inference_dtype`). ``compile``: the decoding
    step compiled (:meth:`mmcli.model.vlm.VLM.compile_decoding`; captioning only, the first batch
    compiles)."""
    return Model.from_run(run_dir, device, precision, compile)


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """RUN/best, else RUN/last, else RUN itself when it is a checkpoint; one UserError line otherwise."""
    p = Path(run_dir)
    if not p.exists():
        raise UserError(f"{p}: no such model directory (give a run directory from `mmcli finetune` or `mmcli pretrain`)")
    if not p.is_dir():
        raise UserError(f"{p}: not a directory (give a run directory from `mmcli finetune` or `mmcli pretrain`)")
    for sub in ("best", "last"):  # (a save interrupted between its renames left .best.old: load_checkpoint reads it)
        if (p / sub / "config.json").is_file() or (p / f".{sub}.old" / "config.json").is_file():
            return p / sub
    if (p / "model.safetensors").is_file():
        return p
    raise UserError(f"{p}: no trained model in it (no best/ or last/ checkpoint; has its training saved one?)")


def _check_compiler(dev: torch.device) -> None:
    """One UserError line where ``torch.compile`` cannot build code for ``dev``: on a CPU inductor needs
    a C++ compiler, on CUDA Triton."""
    if dev.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as e:  # (its own error types vary between torch versions)
            raise UserError(f"--compile needs a C++ compiler on a CPU (torch.compile's inductor): {first_line(e)}") \
                from None
    elif dev.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise UserError("--compile needs Triton on CUDA (torch.compile's inductor): install torch's triton") \
                from None


class Model:
    """A loaded VLM with its tokenizer and answers, in eval mode, ready for inference."""

    def __init__(self, vlm, checkpoint, device: torch.device):
        from .data.images import make_transform

        self.vlm, self.checkpoint, self.device = vlm, checkpoint, device
        self.config = vlm.cfg
        self.tokenizer = checkpoint.tokenizer
        self.answers = checkpoint.answer_vocab
        self.max_text_len = int(checkpoint.config.get("train", {}).get("max_text_len", vlm.cfg.max_text_len))
        self.transform = make_transform(vlm.vision.data_config)
        if self.tokenizer is None:
            raise UserError(f"{checkpoint.path}: the checkpoint has no tokenizer")

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "auto", precision: str = "auto",
                 compile: bool = False) -> "Model":
        from .device import inference_dtype, resolve_device
        from .model.packed import pack_linears
        from .model.vlm import load_model

        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"unknown precision {precision!r}; choose from auto, fp32, bf16, fp16")
        vlm, ckpt = load_model(checkpoint_dir(run_dir))
        dev = resolve_device(device)
        # weights in the compute dtype, not autocast: no per-call casts (bf16 generation about 1.5x
        # faster than autocast over fp32 weights on a CPU; benchmarks/peer_hf.py)
        vlm = vlm.to(dev, inference_dtype(precision, dev)).eval()
        if dev.type == "cpu":  # oneDNN's prepacked linear layers, GELU fused (mmcli/model/packed.py)
            pack_linears(vlm)
        if compile and vlm.cfg.fusion != "late":
            _check_compiler(dev)
            vlm.compile_decoding()
        return cls(vlm, ckpt, dev)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (images are given to the model in it)."""
        return self.vlm.tok_emb.weight.dtype

    @property
    def path(self) -> Path:
        return Path(self.checkpoint.path)

    # ------------------------------------------------------------------ inputs
    def images_tensor(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images (paths or PIL images) -> one normalised (B, 3, S, S) batch on the model's device;
        an unreadable file raises :class:`mmcli.data.images.BadImage`."""
        from .data.images import load_image

        tensors = []
        for im in images:
            pil = im if hasattr(im, "convert") else load_image(im)
            tensors.append(self.transform(pil.convert("RGB")))
        return torch.stack(tensors).to(self.device, self.dtype)

    def _text(self, texts: Sequence[str], cls: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) right-padded and lengths (B,), as training made them."""
        rows = []
        for t in texts:
            if not t or not t.strip():
                raise UserError("empty text: give a question or a caption with at least one word")
            ids = self.tokenizer.encode(t)
            rows.append(([self.tokenizer.cls_id] + ids)[: self.max_text_len] if cls
                        else self.tokenizer.encode(t, bos=True, eos=True)[: self.max_text_len])
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids.to(self.device), torch.tensor([len(r) for r in rows], device=self.device)

    # ------------------------------------------------------------------ tasks
    @torch.no_grad()
    def caption(self, images: Sequence[ImageLike] | ImageLike, beam: int = 1, max_len: int | None = None,
                sample: bool = False, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                seed: int | None = None) -> list[str] | str:
        """Captions of the images (one string for one image): greedy, beam search (``beam`` > 1)
        or sampling (``sample=True``, with ``top_k``, ``top_p``, ``temperature``, ``seed``)."""
        one = not isinstance(images, (list, tuple))
        caps = self.caption_tensor(self.images_tensor([images] if one else images), beam, max_len, sample, top_k,
                                   top_p, temperature, seed)
        return caps[0] if one else caps

    @torch.no_grad()
    def caption_tensor(self, batch: torch.Tensor, beam: int = 1, max_len: int | None = None, sample: bool = False,
                       top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                       seed: int | None = None) -> list[str]:
        """:meth:`caption` of an already transformed batch (B, 3, S, S) (:meth:`images_tensor`)."""
        ids = self.caption_ids(batch, beam, max_len, sample, top_k, top_p, temperature, seed)
        return [self.tokenizer.decode(row) for row in ids]

    @torch.no_grad()
    def caption_ids(self, batch: torch.Tensor, beam: int = 1, max_len: int | None = None, sample: bool = False,
                    top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0,
                    seed: int | None = None) -> list[list[int]]:
        """The generated token ids of each image of a transformed batch (no <s>, no </s>)."""
        from .model.generate import beam_search, greedy
        from .model.generate import sample as draw

        if self.config.fusion == "late":
            raise UserError(f"{self.path}: a late-fusion model cannot generate captions (it has no token-level "
                            "attention to the image); use a caption run with concat or cross fusion")
        longest = self.max_text_len - 1  # (the model's positions hold <s> and the caption)
        if max_len is not None and not 1 <= max_len <= longest:
            raise UserError(f"max_len {max_len}: this model writes captions of 1 to {longest} tokens ({self.path})")
        tok, n = self.tokenizer, (max_len or longest)
        if sample:
            g = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
            return draw(self.vlm, batch, tok.bos_id, tok.eos_id, n, top_k=top_k, top_p=top_p,
                        temperature=temperature, generator=g)
        if beam > 1:
            return beam_search(self.vlm, batch, tok.bos_id, tok.eos_id, n, beam=beam)
        return greedy(self.vlm, batch, tok.bos_id, tok.eos_id, n)

    @torch.no_grad()
    def answer(self, image: ImageLike, question: str, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` answers to one question about one image, most likely first, each with
        its score (the sigmoid of its logit: the model is trained with per-answer binary targets)."""
        return self.answer_batch([image], [question], top_k)[0]

    @torch.no_grad()
    def answer_batch(self, images: Sequence[ImageLike], questions: Sequence[str],
                     top_k: int = 1) -> list[list[tuple[str, float]]]:
        """:meth:`answer` for question i about image i; each distinct image is encoded once."""
        if len(images) != len(questions):
            raise ValueError("one image per question")
        keys = [str(im) if not hasattr(im, "convert") else id(im) for im in images]
        first: dict = {}
        for im, k in zip(images, keys):
            first.setdefault(k, im)
        row = {k: i for i, k in enumerate(first)}
        return self.answer_tensor(self.images_tensor(list(first.values())), [row[k] for k in keys], questions, top_k)

    @torch.no_grad()
    def answer_tensor(self, batch: torch.Tensor, index: Sequence[int], questions: Sequence[str],
                      top_k: int = 1) -> list[list[tuple[str, float]]]:
        """Answers to ``questions``, question i about image ``index[i]`` of an already transformed
        batch (:meth:`images_tensor`), each image encoded once."""
        if self.vlm.vqa_head is None or self.answers is None:
            raise UserError(f"{self.path}: this model has no VQA head (it was trained for "
                            f"{self.checkpoint.config.get('train', {}).get('task', 'another task')}); "
                            "use a run from `mmcli finetune --task vqa`")
        img = self.vlm.encode_image(batch)
        ids, lengths = self._text(questions, cls=True)
        rows = torch.tensor(list(index), device=self.device)
        logits = self.vlm.vqa_head(self.vlm.understand(img, ids, lengths, img_index=rows)).float()
        scores, best = logits.sigmoid().topk(min(top_k, logits.shape[1]), dim=-1)
        return [[(self.answers.answers[j], float(p)) for j, p in zip(b.tolist(), s.tolist())]
                for b, s in zip(best, scores)]

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """L2-normalised image embeddings (N, embed_dim) for retrieval, on the CPU."""
        ie, _ = self.vlm.embed(img=self.vlm.encode_image(self.images_tensor(list(images))))
        return F.normalize(ie.float(), dim=-1).cpu()  # (unit length in fp32 too when computed in bf16)

    @torch.no_grad()
    def match(self, images: Sequence[ImageLike], text: str) -> list[float]:
        """The ITM head's probability (0..1) that ``text`` describes each of ``images``, in their order
        (``mmcli retrieve --rerank``); the text layers run once for all the images."""
        img = self.vlm.encode_image(self.images_tensor(list(images)))
        ids, lengths = self._text([text] * img.shape[0], cls=False)  # (<s> text </s>, as ITM trains)
        return self.vlm.itm_logits(img, ids, lengths).float().softmax(-1)[:, 1].tolist()

    @torch.no_grad()
    def embed_texts(self, texts: Iterable[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, embed_dim) for retrieval, on the CPU."""
        ids, lengths = self._text(list(texts), cls=False)  # (<s> text </s>, as retrieval trains)
        _, te = self.vlm.embed(ids=ids, lengths=lengths)
        return F.normalize(te.float(), dim=-1).cpu()
