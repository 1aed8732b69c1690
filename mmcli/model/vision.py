"""The vision tower: any timm backbone -> image tokens (B, N, dim).

This is the only module of mmcli that imports timm (house rule 7): the rest of
the code sees a :class:`VisionTower` with ``forward``, ``num_tokens`` and
``data_config``, never a timm model.

Decisions, in the order they happen:

* The backbone is ``timm.create_model(name, num_classes=0, global_pool="")``:
  no classifier and no pooling, so ``backbone(images)`` is the unpooled feature
  map of a CNN (B, C, h, w) or the token sequence of a ViT (B, N, C).
* ``img_size=image_size`` is passed first; a model whose constructor rejects it
  (a TypeError naming ``img_size``: ResNets, EfficientNets, ConvNeXts, ...)
  is built again without it. CNNs take any input size; ViTs need theirs fixed
  because of their position embedding. Trying is simpler and more exact than
  keeping a list of model families.
* ViT tokens are kept as timm returns them, prefix tokens included: the class
  token and any register tokens come first (``num_prefix_tokens`` of them),
  then the patches. Fusion attends over all of them; a caller that wants only
  patches drops ``tokens[:, :tower.num_prefix_tokens]``.
* ``drop_stages=k`` removes the backbone's last k feature stages (timm's
  ``prune_intermediate_layers``, after any weights are loaded): a ResNet cut after
  its third stage gives 4x finer image tokens (8x8 instead of 4x4 at 128 px) for
  about three quarters of the compute and a third of the parameters. Small
  images and small objects want it.
* Then a Linear(C, dim) and a LayerNorm(dim): the backbone's width becomes the
  text width and the tokens arrive normalised whatever the backbone's scale.
* ``pretrained=True`` is timm's own download (Hugging Face Hub, network);
  ``weights=FILE`` loads a local state dict instead (:func:`read_state_dict`),
  never unpickling anything but tensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import UserError, examples, first_line

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_FIND_NAMES = "python -c \"import timm; print(timm.list_models('*resnet*'))\""


class VisionTower(nn.Module):
    """A timm backbone plus a projection to the model width.

    Attributes set at construction (from one dry run at ``image_size``):
    ``feature_dim`` (backbone width C), ``num_tokens`` (N), ``num_prefix_tokens``
    (ViT class/register tokens at the start of the sequence, 0 for CNNs),
    ``weights_info`` (what ``weights=`` loaded, or None).
    """

    def __init__(self, name: str, dim: int, image_size: int, pretrained: bool = False,
                 weights: str | os.PathLike | None = None, freeze: bool = False, drop_stages: int = 0,
                 args: dict | None = None, adapter: int = 0):
        super().__init__()
        if pretrained and weights is not None:
            raise UserError(f"backbone {name}: choose timm's pretrained weights or a local weights file "
                            f"({weights}), not both")
        self.name, self.image_size, self.frozen = name, int(image_size), bool(freeze)
        self.backbone = _create_backbone(name, self.image_size, pretrained, args or {})
        self.weights_info = None if weights is None else load_backbone_weights(self.backbone, weights, name)
        if drop_stages:
            _drop_stages(self.backbone, name, int(drop_stages))
        self.feature_dim = int(self.backbone.num_features)
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        # timm models with NHWC output (Swin) declare output_fmt; other 4-D output is NCHW (checked by the probe)
        self._channels_last = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"
        self.num_tokens = self._probe_num_tokens()
        # a CNN's convolutions run faster on channels-last (NHWC) input than on NCHW, in oneDNN on a
        # CPU (benchmarks/profile_caption_step.py: a bf16 Flickr8k step about 10% faster) and in
        # cuDNN. The weights stay as they are (a state dict of contiguous tensors, as safetensors wants).
        self._nhwc_memory = _is_cnn(self.backbone)
        # timm attention modules that can take SDPA or their own matmul-softmax path (ViTs): set per forward
        # by mmcli's attention rule (mmcli.model.transformer.resolve_attention_impl)
        self._timm_attention = [m for m in self.backbone.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
        self.proj = nn.Linear(self.feature_dim, dim)
        # (ModelConfig.image_adapter) a residual MLP beside the projection; VLM zeroes its output layer
        self.adapter = (nn.Sequential(nn.Linear(self.feature_dim, adapter), nn.GELU(), nn.Linear(adapter, dim))
                        if adapter else None)
        self.norm = nn.LayerNorm(dim)
        self._flops: int | None = None
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), normalised as ``data_config`` says -> tokens (B, N, dim).

        (B, N, C) input is taken as the backbone's features already computed (a frozen backbone's,
        from ``mmcli.data.features.FeatureCache``): only the projection runs."""
        feats = images if images.ndim == 3 else self.features(images)
        x = self.proj(feats)
        if self.adapter is not None:
            x = x + self.adapter(feats)
        return self.norm(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's unprojected tokens (B, N, C)."""
        if self._nhwc_memory:
            images = images.contiguous(memory_format=torch.channels_last)
        if self._timm_attention:
            self._choose_attention(images.device.type)
        return self._to_tokens(self.backbone(images))

    def _choose_attention(self, device_type: str) -> None:
        """SDPA or timm's plain attention for this forward, as mmcli's own attention chooses: plain for
        bf16 training on a CPU (SDPA's flash backward is slow there; benchmarks/peer_hf.py)."""
        from .transformer import resolve_attention_impl

        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else next(self.backbone.parameters()).dtype
        fused = resolve_attention_impl(device_type, dtype) == "sdpa"
        for m in self._timm_attention:
            m.fused_attn = fused

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and self._channels_last:
            x = x.flatten(1, 2)  # (B, h, w, C) -> (B, h*w, C)
        elif x.ndim == 4:
            x = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, C, h*w) -> (B, h*w, C)
        elif x.ndim != 3:  # (B, N, C) from ViTs passes through untouched
            raise ValueError(f"backbone {self.name} returned shape {tuple(x.shape)}, expected 3 or 4 dimensions")
        return x

    def train(self, mode: bool = True) -> "VisionTower":
        """A frozen backbone stays in eval mode: BatchNorm statistics and dropout stay fixed."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    @property
    def data_config(self) -> dict:
        """Preprocessing for :func:`mmcli.data.images.make_transform`, from the backbone's own config.

        Plain values only: ``input_size`` (3, S, S) with S = ``image_size``,
        ``interpolation`` (str), ``mean``/``std`` (tuples of floats),
        ``crop_pct`` (float) and ``crop_mode`` (str).
        """
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=self.backbone)
        return {
            "input_size": (3, self.image_size, self.image_size),
            "interpolation": str(cfg.get("interpolation") or "bicubic"),
            "mean": tuple(float(v) for v in cfg["mean"]),
            "std": tuple(float(v) for v in cfg["std"]),
            "crop_pct": float(cfg.get("crop_pct") or 0.875),
            "crop_mode": str(cfg.get("crop_mode") or "center"),
        }

    def flops_per_image(self) -> int:
        """Forward FLOPs for one image (backbone and projection), counted once on a dry run and cached."""
        if self._flops is None:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                self._dry_run(self)
            self._flops = int(counter.get_total_flops())
        return self._flops

    # ----------------------------------------------------------------- helpers

    def _dry_run(self, fn) -> torch.Tensor:
        """Run ``fn`` on one blank image in eval mode without gradients (BatchNorm statistics untouched)."""
        was_training = self.training
        param = next(self.backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        try:
            self.eval()
            with torch.no_grad():
                return fn(torch.zeros(1, 3, self.image_size, self.image_size, device=device))
        finally:
            self.train(was_training)

    def _probe_num_tokens(self) -> int:
        try:
            raw = self._dry_run(self.backbone)
        except (RuntimeError, AssertionError, ValueError) as e:
            raise UserError(f"backbone {self.name} cannot take {self.image_size}x{self.image_size} images "
                            f"({first_line(e)}); try another --image-size") from None
        c = self.feature_dim
        if raw.ndim == 4 and raw.shape[1] != c and raw.shape[-1] == c:
            self._channels_last = True  # an NHWC model that does not declare output_fmt
        tokens = self._to_tokens(raw)
        if tokens.shape[-1] != c:
            raise ValueError(f"backbone {self.name}: token width {tokens.shape[-1]} != num_features {c}")
        return int(tokens.shape[1])


def _is_cnn(backbone: nn.Module) -> bool:
    """A convolutional network (not a transformer whose patch embedding is its one convolution)."""
    return not hasattr(backbone, "patch_embed") and any(isinstance(m, nn.Conv2d) for m in backbone.modules())


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``module`` (timm's BatchNormAct too) made a SyncBatchNorm, in
    place, keeping its parameters and statistics: under torchrun on GPUs, batch statistics
    then come from the global batch, as in one process. (PyTorch's SyncBatchNorm is CUDA only.)"""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(module)


def _drop_stages(backbone: nn.Module, name: str, k: int) -> None:
    """Remove the last ``k`` feature stages of a timm backbone in place."""
    n = len(getattr(backbone, "feature_info", None) or ())
    if k < 0 or not hasattr(backbone, "prune_intermediate_layers") or k >= n:
        have = f"has {n} feature stages" if n else "cannot be cut into stages"
        raise UserError(f"backbone {name} {have}; cannot drop {k} of them")
    backbone.prune_intermediate_layers(indices=[n - 1 - k], prune_norm=True, prune_head=True)


def _create_backbone(name: str, image_size: int, pretrained: bool, args: dict) -> nn.Module:
    """``timm.create_model(name, ...)`` without a head or pooling; ``args`` are more keyword arguments of
    the model's constructor (a ViT's ``depth``, ``embed_dim``, ``num_heads``: another size of a family)."""
    # names with a scheme ("hf-hub:org/model") are resolved by timm itself
    if ":" not in name and not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}; list the names with {_FIND_NAMES}")
    kwargs = {**args, "pretrained": pretrained, "num_classes": 0, "global_pool": ""}
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as e:
            # CNNs take any input size and have no img_size argument; the model
            # class is built before any download, so nothing is fetched twice
            if "img_size" not in str(e):
                raise
            return timm.create_model(name, **kwargs)
    except Exception as e:  # user inputs (name, size, network) are the likely cause
        if pretrained:
            raise UserError(f"backbone {name}: could not get timm's pretrained weights ({first_line(e)}); "
                            "this downloads from the Hugging Face Hub and needs the network; offline, "
                            "pass a local file with --backbone-weights FILE") from None
        given = f" with {', '.join(f'{k}={v}' for k, v in args.items())}" if args else ""
        raise UserError(f"backbone {name}: cannot build it at image size {image_size}{given} ({first_line(e)})") from None


# ============================================================================ local weights


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a local weights file, never unpickling anything else.

    ``.safetensors`` goes through the safetensors parser; ``.pth``, ``.pt`` and
    ``.bin`` through ``torch.load(weights_only=True)``, which refuses any Python
    object that is not a tensor, container or plain value. A checkpoint that
    wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped,
    and a DistributedDataParallel ``module.`` prefix removed.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise UserError(f"{path}: weights file not found")
    if suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"{path}: unknown weights format {suffix or '(no extension)'!r}; "
                        f"expected one of {', '.join(WEIGHT_SUFFIXES)}")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(p, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{path}: not a valid safetensors file ({first_line(e)})") from None
    from ..checkpoint import safe_torch_load

    return _unwrap_state_dict(safe_torch_load(p, "cpu", what="PyTorch weights file"), path)


def _unwrap_state_dict(obj, path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"model": {"state_dict": {...}}} at most
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module")
                      if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise UserError(f"{path}: no state dict of named tensors found in it")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike, name: str = "") -> str:
    """Load ``path`` into ``backbone`` with strict key and shape checks; return a one-line report.

    Classifier-head tensors in the file are ignored (the backbone is built with
    ``num_classes=0``); BatchNorm ``num_batches_tracked`` counters may be absent.
    A ViT position embedding saved at another image size is resampled to this
    one, as timm does for its own pretrained weights.
    """
    state = read_state_dict(path)
    heads = _classifier_prefixes(backbone)
    kept = {k: v for k, v in state.items() if not k.startswith(heads)}
    ignored = len(state) - len(kept)
    own = backbone.state_dict()
    _resample_pos_embed(backbone, kept)

    missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in kept if k not in own]
    shapes = [f"{k} {tuple(kept[k].shape)} vs {tuple(own[k].shape)}"
              for k in kept if k in own and kept[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(lst)} {what} ({examples(lst)})" for lst, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (shapes, "with another shape (file vs model)"))
                 if lst]
        raise UserError(f"{path}: does not fit backbone {name or type(backbone).__name__} "
                        f"(saved from another architecture?): {'; '.join(parts)}")
    backbone.load_state_dict(kept, strict=False)
    return f"loaded {len(kept)} tensors from {path}" + (f" (ignored {ignored} classifier tensors)" if ignored else "")


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def resample_position_grids(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """A VLM state dict saved at another image size, its position embeddings resampled in place to
    ``model``'s grid of image tokens: mmcli's ``image_pos`` and a timm ViT's ``pos_embed`` (1, prefix +
    h*w, C), bicubic over the square grid with the prefix (class) tokens kept, as timm resamples a ViT's
    for its pretrained weights. For ``--init RUN --model image_size=N``; every other weight of a
    backbone is the same at any image size. Returns what was resampled, e.g. ``["image_pos 8x8 ->
    16x16"]``; a grid that is not square is one UserError line."""
    from timm.layers import resample_abs_pos_embed

    own = model.state_dict()
    prefix = int(getattr(model.vision, "num_prefix_tokens", 0))
    backbone = model.vision.backbone
    vit_prefix = _pos_embed_prefix(backbone)
    done = []
    for name, n_prefix in (("image_pos", prefix), ("vision.backbone.pos_embed", vit_prefix)):
        theirs, mine = state.get(name), own.get(name)
        if theirs is None or mine is None or theirs.shape == mine.shape:
            continue
        grids = [(t.shape[1] - n_prefix) if t.ndim == 3 else -1 for t in (theirs, mine)]
        old, new = (math.isqrt(max(g, 0)) for g in grids)
        square = min(grids) > 0 and (old * old, new * new) == tuple(grids)
        if not square or theirs.shape[2] != mine.shape[2]:
            raise UserError(f"{name}: {tuple(theirs.shape)} in the checkpoint and {tuple(mine.shape)} in the model "
                            "are not square grids of positions of one width; cannot resample it to this image size")
        grid = resample_abs_pos_embed(theirs.float(), new_size=[new, new], num_prefix_tokens=n_prefix)
        state[name] = grid.to(theirs.dtype)
        done.append(f"{name} {old}x{old} -> {new}x{new}")
    return done


def _resample_pos_embed(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A timm ViT's ``pos_embed`` (1, prefix + gh*gw, C) from another image size, resized in place."""
    own = getattr(backbone, "pos_embed", None)
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    theirs = state.get("pos_embed")
    if own is None or grid is None or theirs is None or theirs.shape == own.shape or theirs.ndim != 3:
        return
    from timm.layers import resample_abs_pos_embed

    try:
        state["pos_embed"] = resample_abs_pos_embed(theirs, new_size=list(grid),
                                                    num_prefix_tokens=_pos_embed_prefix(backbone))
    except (RuntimeError, ValueError):
        pass  # not a square grid of the same width: reported as a shape mismatch


def _pos_embed_prefix(backbone: nn.Module) -> int:
    """How many leading positions of a timm ViT's ``pos_embed`` belong to its prefix (class, register)
    tokens rather than to the grid of patches."""
    return 0 if getattr(backbone, "no_embed_class", False) else int(getattr(backbone, "num_prefix_tokens", 1))
