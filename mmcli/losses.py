"""Loss functions, pure and outside the model; ``LOSSES`` names them for ``--objectives``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy over real tokens: position t predicts token t+1.

    logits (B, T, V) from ids (B, T) = bos w1 .. wn eos pad..; padding is ignored.
    ``label_smoothing`` eps: the target is 1 - eps on the true token plus eps spread evenly
    over the whole vocabulary (``F.cross_entropy``'s); 0 is the plain cross-entropy.
    """
    T = ids.shape[1]
    targets = ids[:, 1:]  # (B, T-1)
    # a prediction counts while its target is a real token (index < length)
    real = torch.arange(1, T, device=ids.device)[None, :] < lengths[:, None]
    return F.cross_entropy(logits[:, :-1][real], targets[real], label_smoothing=label_smoothing)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against the soft VQA scores, summed over answers, mean over questions."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch contrastive loss; row i of each side is a matching pair.

    Embeddings are L2-normalised (B, E). Under torchrun, gather the other ranks'
    embeddings before calling this (``mmcli.device.gather``, which keeps the gradient),
    so that they serve as negatives too: every rank then computes the global batch's loss.
    """
    scale = logit_scale.exp().clamp(max=100)  # CLIP's cap on the temperature
    logits = scale * image_emb @ text_emb.t()  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: (B, 2) logits, labels 1 = match, 0 = not."""
    return F.cross_entropy(logits, labels)


LOSSES = {"lm": lm_loss, "vqa": vqa_loss, "itc": itc_loss, "itm": itm_loss}
