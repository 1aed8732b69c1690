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
    real, targets = next_token_targets(ids, lengths)
    return F.cross_entropy(logits[real], targets, label_smoothing=label_smoothing)


# rows of logits a chunk of token_cross_entropy works on: 128 x a vocabulary of 8,000 in fp32 is 4 MB, which
# stays in cache through the chunk's passes (benchmarks/probe_levers.py --probes ce_compile times 64 and 256 too)
CE_ROWS = 128
# False: token_cross_entropy is the plain loss on a CPU too (the ablation of benchmarks/peer_hf.py --ablate-train ce
# and benchmarks/ablate.py FUSED_CE=0)
FUSED_CE = True


class _TokenCrossEntropy(torch.autograd.Function):
    """``token_cross_entropy``'s loss, with its gradient made in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, logits, targets, label_smoothing: float, scale: float, need_grad: bool):
        n, v = logits.shape
        eps = label_smoothing
        grad = torch.empty_like(logits) if need_grad else None  # (validation: the loss alone)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)  # each row's log-sum-exp
        mean = torch.empty_like(lse) if eps else None  # each row's mean logit (label smoothing's term)
        buf = torch.empty(min(CE_ROWS, n), v, dtype=torch.float32, device=logits.device)
        ar = torch.arange(len(buf), device=logits.device)
        for i in range(0, n, CE_ROWS):
            m = min(CE_ROWS, n - i)
            x = buf[:m]
            x.copy_(logits[i:i + m])
            if eps:
                torch.mean(x, 1, out=mean[i:i + m])
            top = x.amax(1, keepdim=True)
            x.sub_(top).exp_()
            total = x.sum(1, keepdim=True)
            torch.add(top.squeeze(1), total.squeeze(1).log(), out=lse[i:i + m])
            if grad is None:
                continue
            # d loss / d logits = scale (softmax - (1 - eps) onehot - eps / V)
            x.mul_(scale / total)
            x[ar[:m], targets[i:i + m]] -= (1 - eps) * scale
            if eps:
                x.sub_(eps * scale / v)
            grad[i:i + m].copy_(x)
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()
        loss = (lse - (1 - eps) * picked).sum()
        if eps:
            loss = loss - eps * mean.sum()
        ctx.save_for_backward(grad)
        return loss * scale

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                        scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets, label_smoothing=..., reduction="sum") * scale`` for (n, V)
    logits of any float dtype and (n,) class indices, every row counted (no ``ignore_index``), as an fp32 scalar.

    On a CPU it works through the logits 128 rows at a time in one fp32 buffer that stays in cache, and
    writes the gradient (in the logits' dtype) in the same pass, where the plain loss makes an fp32 copy
    of all the logits, its log-softmax, a zero-filled gradient and its cast back: at a batch of 640 tokens
    and 8,000 words, 10-24 ms of a 650-860 ms profiled bf16 training step on the 2-core development machine
    (BENCHMARKS.md). The gradient is rounded once, as the plain loss's is, when the loss is
    backpropagated as it is (``scale`` carries the mean's division); the sum of a chunked fp32 reduction
    can differ from the plain one in the last bits. Elsewhere (CUDA: one fused kernel) it is the plain loss."""
    if logits.device.type != "cpu" or not FUSED_CE:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing, reduction="sum") * scale
    if not len(targets):
        return logits.sum() * 0.0
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _TokenCrossEntropy.apply(logits, targets, float(label_smoothing), float(scale), need_grad)


def next_token_targets(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(real (B, T) bool, targets (N,)): the positions whose next token is a real one, and
    those next tokens, in the order of ``x[real]`` for any (B, T, ...) x.

    Position t predicts token t + 1, so it counts while t + 1 < length; the last
    position never does (it has no next token).
    """
    T = ids.shape[1]
    real = torch.arange(1, T + 1, device=ids.device)[None, :] < lengths[:, None]  # (B, T)
    return real, ids[:, 1:][real[:, :-1]]


def length_buckets(lengths: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The row indices of ``lengths`` (B,) sorted by length and cut into ``n`` near-equal
    buckets, shortest first: each bucket can then be trimmed to its own longest row, so
    that right-padded text wastes no compute on its pads."""
    order = torch.argsort(lengths, stable=True)
    return [rows for rows in torch.tensor_split(order, max(1, min(n, len(order)))) if len(rows)]


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against the soft VQA scores, summed over answers, mean over questions."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             text_image: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric in-batch contrastive loss; row i of each side is a matching pair.

    Embeddings are L2-normalised: images (B_i, E), texts (B_t, E). Without ``text_image``
    B_i = B_t and row i of each side is a pair. With ``text_image`` (B_t,) int64, text row j
    belongs to image row ``text_image[j]`` (each image once with all its captions): a caption
    has one right image, and an image has several right captions, its target spread evenly over
    them (with one caption per image this is the plain loss). Under torchrun, gather the other
    ranks' embeddings before calling this (``mmcli.device.gather``, which keeps the gradient),
    so that they serve as negatives too: every rank then computes the global batch's loss.
    """
    scale = logit_scale.exp().clamp(max=100)  # CLIP's cap on the temperature
    logits = scale * image_emb @ text_emb.t()  # (B_i, B_t)
    if text_image is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    t2i = F.cross_entropy(logits.t(), text_image)  # each caption against the images
    owns = F.one_hot(text_image, logits.shape[0]).t().to(logits.dtype)  # (B_i, B_t): 1 where image i owns text j
    i2t = F.cross_entropy(logits, owns / owns.sum(1, keepdim=True).clamp(min=1))  # soft targets over its captions
    return (i2t + t2i) / 2


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: (B, 2) logits, labels 1 = match, 0 = not."""
    return F.cross_entropy(logits, labels)


LOSSES = {"lm": lm_loss, "vqa": vqa_loss, "itc": itc_loss, "itm": itm_loss}
