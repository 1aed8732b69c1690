"""Where the model looked: attention over the image for each generated word, or for an answer.

For ``cross`` fusion the map is the cross-attention of the multimodal layers; for ``concat``
it is the text-to-image part of their self-attention (renormalised over the image positions).
Heads and layers are averaged. A caption's words are decoded first (any decoder), then one
teacher-forced pass records the attention: the map of word t is that of the position whose
output predicted it. ``late`` fusion pools the image before it meets the text: it has no
attention to show, and says so.

``draw_panels`` renders one small panel per word (the image under its heat map, the word
beneath) into a PNG, written atomically, whose ``mmcli-panels`` text chunk lists the words.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch

from .errors import UserError


def _check(model) -> None:
    if model.config.fusion == "late":
        raise UserError(f"{model.path}: late fusion has no attention to show: it pools the image into one vector "
                        "before it meets the text (explain a concat or cross model)")


def _recording(model):
    """Turn on recording in the fusion layers' image attention; returns the modules."""
    blocks = model.vlm.fusion_blocks
    mods = [b.cross_attn if model.config.fusion == "cross" else b.self_attn for b in blocks]
    for m in mods:
        m.record = []
    return mods


def _image_maps(model, mods, queries: list[int]) -> torch.Tensor:
    """(len(queries), h, w) maps of the recorded attention of text positions ``queries`` (row 0)."""
    n_img = model.vlm.vision.num_tokens
    maps = []
    for m in mods:
        probs = m.record[0][0].mean(0)  # (Tq, Tk), heads averaged
        if model.config.fusion == "concat":  # text rows come after the image rows; keep the image keys
            probs = probs[n_img:, :n_img]
            probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-12)
        maps.append(probs[queries])
        m.record = None
    att = torch.stack(maps).mean(0)  # (Q, N)
    skip = model.vlm.vision.num_prefix_tokens  # ViT class / register tokens are not places
    att = att[:, skip:]
    side = math.isqrt(att.shape[1])
    if side * side != att.shape[1]:
        raise UserError(f"{model.path}: {att.shape[1]} image tokens do not make a square grid to draw")
    return att.reshape(-1, side, side)


@torch.no_grad()
def caption_attention(model, image, **decode) -> tuple[list[str], torch.Tensor]:
    """The caption's words of one image and one (h, w) attention map per word."""
    _check(model)
    batch = model.images_tensor([image])
    caption_ids = model.caption_ids(batch, **decode)[0]
    tok = model.tokenizer
    ids = torch.tensor([[tok.bos_id] + caption_ids], device=model.device)
    words = tok.words(ids[0].tolist())
    if not words:
        return [], torch.zeros(0, 1, 1)
    mods = _recording(model)
    try:
        model.vlm.lm_logits(batch, ids)
        maps = _image_maps(model, mods, list(range(ids.shape[1])))
    finally:
        for m in mods:
            m.record = None
    # position p predicts token p + 1: a word's map is the mean over the positions predicting its pieces
    per_word = torch.stack([maps[[p - 1 for p in where]].mean(0) for _, where in words])
    return [w for w, _ in words], per_word


@torch.no_grad()
def vqa_attention(model, image, question: str) -> tuple[str, torch.Tensor]:
    """The answer to one question and the (1, h, w) attention map of the position the answer is read from."""
    _check(model)
    mods = _recording(model)
    try:
        answer = model.answer(image, question, top_k=1)[0][0]
        maps = _image_maps(model, mods, [0])  # the <cls> position feeds the VQA head
    finally:
        for m in mods:
            m.record = None
    return answer, maps


def draw_panels(image, maps: torch.Tensor, labels: list[str], out: str | Path, title: str | None = None) -> int:
    """One panel per label: the image with its heat map over it and the label under it; written to
    ``out`` (PNG) atomically. Returns the number of panels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--explain draws with matplotlib, which is not installed: pip install 'mmcli[plot]'") from None
    from PIL import Image

    from .data.images import load_image
    from .fileio import atomic_write_bytes

    if not labels:
        raise UserError("nothing to explain: the caption is empty")
    pil = (image if hasattr(image, "convert") else load_image(image)).convert("RGB")
    side = 192
    pil = pil.resize((side, side))
    n = len(labels)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.3 * rows + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        heat = maps[k].float()
        heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)
        up = Image.fromarray((heat.numpy() * 255).astype("uint8")).resize((side, side), Image.BILINEAR)
        ax.imshow(pil)
        ax.imshow(up, cmap="jet", alpha=0.45)
        ax.set_title(labels[k], y=-0.16, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"mmcli-panels": json.dumps(labels)})
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return n
