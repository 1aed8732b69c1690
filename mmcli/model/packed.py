"""Linear layers through oneDNN on a CPU: prepacked weights and GELU fused into the first MLP layer for
inference, oneDNN's products for training.

``pack_linears(model)`` swaps every ``nn.Linear`` of a model (mmcli's layers, the timm backbone's,
the tied LM head) of at least ``MIN_WEIGHT`` weights for a :class:`PackedLinear` that shares its
parameters: the state dict and the weight ties are unchanged. ``mmcli.load`` (caption, vqa,
retrieve) and the trainer apply it on a CPU.

* Inference (``torch.no_grad``): the weight is reordered once into oneDNN's blocked layout and
  multiplied through ``torch.ops.mkldnn._linear_pointwise`` (the op ``torch.compile`` uses for
  frozen CPU models); the first linear of an MLP applies the GELU in the same kernel (its
  activation module becomes an ``nn.Identity``). The packed weight is remade when the weight
  changes (``load_state_dict``, an optimizer step, ``.to``).
* fp32 training (gradients on) of at least ``MIN_TRAIN_ROWS`` rows: the forward product and the
  input's gradient go through oneDNN, the weight's gradient through ``mm``.
* Under CPU autocast (bf16 training and its validation) a PackedLinear is ``F.linear``: torch's
  bf16 CPU products already run on oneDNN, and the swap measured no gain there (1.00x).

Same precision as ``F.linear``: fp32 stays fp32 (oneDNN's fp32 kernels accumulate in fp32), bf16
stays bf16. Why: torch's fp32 CPU product is MKL's GEMM, which on the 2-core AMD EPYC this was
measured on runs the model's shapes (6,304 rows of 256 -> 1,024 and back) 1.3-1.6x slower than
oneDNN; for inference a separate GELU over those rows costs as much as the product (fp32 and
bf16), and the LM head over 8,000 tokens for 32 rows is 2.3x faster packed. BENCHMARKS.md has the
end-to-end numbers (``benchmarks/peer_hf.py``, ``--no-pack`` for the ablation).

On another device, under ``torch.compile``, or for other dtypes a PackedLinear is ``F.linear`` and
its activation.
"""

from __future__ import annotations

import platform

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.flop_counter

# nn.GELU(approximate=...) -> oneDNN's GELU algorithm
_GELU = {"none": "none", "tanh": "tanh"}


def packing_available() -> bool:
    """Whether this is an x86-64 CPU (where it was measured; elsewhere torch's own products are kept)
    and this torch build has oneDNN's linear ops and they run here (a tiny probe)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), None)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), w, torch.zeros(2), "gelu", [], "tanh")
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):  # (an older op signature too)
        return False
    return tuple(y.shape) == (1, 2)


class PackedLinear(nn.Module):
    """An ``nn.Linear`` (its own weight and bias Parameters, shared) followed by ``activation``
    ("none" or "gelu") with GELU ``algorithm`` "none" (erf) or "tanh"; see the module docstring."""

    def __init__(self, linear: nn.Linear, activation: str = "none", algorithm: str = ""):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: ties and state dict kept
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation, self.algorithm = activation, algorithm
        self._packed: torch.Tensor | None = None
        self._key: tuple | None = None

    def extra_repr(self) -> str:
        act = f", {self.activation} ({self.algorithm})" if self.activation != "none" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if (x.device.type != "cpu" or x.numel() == 0 or torch.compiler.is_compiling()
                or torch.is_autocast_enabled("cpu")):
            # (the compiler fuses F.linear its own way; autocast casts F.linear's arguments, and its bf16
            # products already run on oneDNN: no gain measured there)
            return self._plain(x, w, b)
        if torch.is_grad_enabled():
            self._packed = self._key = None  # training: no stale packed copy kept
            if x.dtype != torch.float32 or w.dtype != torch.float32 or x.numel() < MIN_TRAIN_ROWS * x.shape[-1]:
                return self._plain(x, w, b)  # (bf16 weights: as under autocast; fewer rows: slower)
            return self._activate(_OneDNNLinear.apply(x, w, b))
        if x.dtype != w.dtype or w.dtype not in _DTYPES or w.is_inference():
            return self._plain(x, w, b)  # (weights made under inference_mode have no version to check)
        key = (w.data_ptr(), w.dtype, w._version)
        if key != self._key:  # packed once, again only when the weight changed
            self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
            self._key = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, b, self.activation, [], self.algorithm)

    def __getstate__(self) -> dict:
        """deepcopy and pickle without the packed weight (oneDNN's opaque tensor has no storage to copy)."""
        return {**super().__getstate__(), "_packed": None, "_key": None}

    def _plain(self, x, w, b) -> torch.Tensor:
        return self._activate(F.linear(x, w, b))

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        """The activation, where the product did not apply it."""
        return F.gelu(y, approximate=self.algorithm) if self.activation == "gelu" else y


_DTYPES = (torch.float32, torch.bfloat16)
# Smaller layers stay nn.Linear: oneDNN's fixed cost per call outweighs its faster kernel (fp32
# inference of a 64 x 192 layer measured 0.3-0.5x; 256 x 256 and up, 1.15x and up).
MIN_WEIGHT = 256 * 256
# Training products of fewer rows keep F.linear: forward plus backward measured 0.8-0.93x at 640 rows,
# 1.02x at 2,048 and 1.19x at 6,304 (a ViT's 197 tokens for 32 images).
MIN_TRAIN_ROWS = 4096


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b for training: the forward product and the input's gradient through oneDNN (the
    weight reordered once for the forward), the weight's gradient through ``mm`` (faster there)."""

    @staticmethod
    def forward(ctx, x, w, b):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(x2, torch.ops.mkldnn._reorder_linear_weight(w, None), b, "none", [], "")
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # (M, N) @ (N, K): W's transpose is the "weight" of this product
            gx = torch.ops.mkldnn._linear_pointwise(g2, w.t().contiguous(), None, "none", [], "")
            gx = gx.view(*grad.shape[:-1], w.shape[1])
        if ctx.needs_input_grad[1]:
            gw = g2.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _linear_pointwise_flops(x_shape, w_shape, *args, **kwargs) -> int:
    """FlopCounterMode counts oneDNN's linear as the matrix product it is (2 M K N)."""
    m = 1
    for d in x_shape[:-1]:
        m *= d
    return 2 * m * x_shape[-1] * w_shape[0]


try:
    torch.utils.flop_counter.register_flop_formula(torch.ops.mkldnn._linear_pointwise)(_linear_pointwise_flops)
except (AttributeError, RuntimeError):  # (a build without oneDNN: nothing is ever packed)
    pass


def _mlp_types() -> tuple[type, ...]:
    """Modules whose forward is fc1 -> act -> (dropout, norm) -> fc2, where the GELU can join fc1."""
    from .transformer import MLP

    types: list[type] = [MLP]
    try:
        from timm.layers import Mlp
    except ImportError:  # (timm is a dependency; an old one may not export it here)
        pass
    else:
        types.append(Mlp)
    return tuple(types)


def pack_linears(model: nn.Module) -> int:
    """Swap the model's ``nn.Linear`` layers of at least ``MIN_WEIGHT`` weights for :class:`PackedLinear`
    in place (for inference, GELU fused into an MLP's first layer); the number swapped. Nothing
    changes (0) where oneDNN's ops are missing."""
    if not packing_available():
        return 0
    mlps = _mlp_types()
    swapped = 0

    def big(m: nn.Module) -> bool:
        return type(m) is nn.Linear and m.in_features * m.out_features >= MIN_WEIGHT

    for parent in list(model.modules()):
        fused_act = None
        if isinstance(parent, mlps) and big(parent.fc1) and type(parent.act) is nn.GELU:
            fused_act = parent.act.approximate
        for name, child in list(parent.named_children()):
            if not big(child):
                continue
            if name == "fc1" and fused_act in _GELU:
                setattr(parent, name, PackedLinear(child, "gelu", _GELU[fused_act]))
            else:
                setattr(parent, name, PackedLinear(child))
            swapped += 1
        if fused_act in _GELU:
            parent.act = nn.Identity()
    return swapped
