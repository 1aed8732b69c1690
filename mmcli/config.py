"""Configuration: frozen dataclasses and a plain dict of presets.

A ``ModelConfig`` is saved in every checkpoint (``config.json``), so a run
directory alone rebuilds its model. No YAML, no registry: ``PRESETS["small"]``
is the CPU default, ``dataclasses.replace`` changes a field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .errors import UserError

FUSIONS = ("late", "concat", "cross")
TASKS = ("caption", "vqa", "retrieval", "pretrain")
# which fusion modes can serve which task: late fusion has no token-level
# interaction with the image, so it cannot generate captions (nor pretrain with
# the lm objective: mmcli.train refuses that; itc and itm alone are fine)
TASK_FUSIONS = {
    "caption": ("concat", "cross"),
    "vqa": FUSIONS,
    "retrieval": FUSIONS,
    "pretrain": FUSIONS,
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a vision-language model."""

    backbone: str = "resnet18"  # any timm model name
    # more keyword arguments of the timm model's constructor, e.g. {"depth": 4, "embed_dim": 256} for a
    # smaller ViT of the same family (--model backbone.depth=4,backbone.embed_dim=256)
    backbone_args: dict = field(default_factory=dict)
    image_size: int = 224
    pretrained: bool = False  # timm weights from the hub (needs the network) ...
    backbone_weights: str | None = None  # ... or from a local file
    freeze_backbone: bool = False
    drop_stages: int = 0  # remove the backbone's last N stages: finer image tokens, less compute
    dim: int = 256  # width of the text and fusion layers
    heads: int = 4
    text_layers: int = 2  # unimodal (self-attention only) text layers
    fusion_layers: int = 2  # multimodal layers
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    vocab_size: int = 8000
    max_text_len: int = 32
    fusion: str = "cross"  # late | concat | cross
    n_answers: int = 0  # VQA classifier size (0: no VQA head)
    embed_dim: int = 256  # ITC projection size
    image_pool: str = "attn"  # attn | mean: how the pooled image embedding is made
    # hidden width of a residual MLP on the backbone's tokens beside the linear projection (0: none), for a
    # frozen backbone: a trainable non-linearity on each cached token (its output layer starts at zero)
    image_adapter: int = 0

    def __post_init__(self):
        for name in ("dim", "heads", "vocab_size", "max_text_len", "image_size", "embed_dim"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("text_layers", "fusion_layers", "image_adapter", "drop_stages", "n_answers"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}")
        if not (math.isfinite(self.mlp_ratio) and int(self.dim * self.mlp_ratio) >= 1):
            raise UserError(f"mlp_ratio must give the MLP a hidden width of at least 1, got {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fusion not in FUSIONS:
            raise UserError(f"unknown fusion {self.fusion!r}; choose from {', '.join(FUSIONS)}")
        if self.dim % self.heads:
            raise UserError(f"model width {self.dim} is not divisible by {self.heads} heads")
        if self.image_pool not in ("attn", "mean"):
            raise UserError(f"unknown image pooling {self.image_pool!r}; choose attn or mean")

    def check_task(self, task: str) -> None:
        """Refuse a task this fusion mode cannot do, with the reason."""
        if task not in TASK_FUSIONS:
            raise UserError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        if self.fusion not in TASK_FUSIONS[task]:
            raise UserError(
                f"--fusion {self.fusion} cannot do {task}: late fusion combines pooled vectors and has "
                f"no token-level attention to generate text; use {' or '.join(TASK_FUSIONS[task])}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"model config has unknown fields {', '.join(unknown)} (a newer mmcli?)")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # trains a test in seconds on a CPU (timm's 0.4M-parameter test ResNet)
    "tiny": ModelConfig(
        backbone="test_resnet", image_size=64, dim=64, heads=2, text_layers=1, fusion_layers=1, embed_dim=64, vocab_size=1000
    ),
    # the CPU default
    "small": ModelConfig(backbone="resnet18", image_size=128, dim=256, heads=4, text_layers=2, fusion_layers=2),
    # for GPUs
    "base": ModelConfig(
        backbone="vit_small_patch16_224", image_size=224, dim=512, heads=8, text_layers=4, fusion_layers=4, embed_dim=256
    ),
}


# ModelConfig fields a run sets from elsewhere: `--model` refuses them and says where they come from
SET_ELSEWHERE = {
    "vocab_size": "the tokenizer's size (TrainConfig.vocab_size is its upper bound)",
    "n_answers": "the answers of the VQA data",
    "max_text_len": "TrainConfig.max_text_len",
    "fusion": "--fusion",
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_model_overrides(spec: str) -> dict:
    """``"drop_stages=1,dropout=0.2"`` -> ``{"drop_stages": 1, "dropout": 0.2}`` (``--model``).

    Keys are ModelConfig fields; each value is converted to its field's type: int, float,
    bool (true/false, 1/0, yes/no, on/off) or str, and ``none`` for an optional one. An
    unknown key, a field set elsewhere (:data:`SET_ELSEWHERE`), a repeated key or a value
    of the wrong type is one UserError line. Whether the values make a model (e.g. ``dim``
    divisible by ``heads``) is checked when the ModelConfig is built.
    """
    import typing

    hints = typing.get_type_hints(ModelConfig)
    known = [f.name for f in fields(ModelConfig) if f.name not in SET_ELSEWHERE]
    out: dict = {}
    for part in spec.split(","):
        if not part.strip():
            continue  # (a trailing comma)
        key, eq, text = (x.strip() for x in part.partition("="))
        if key.startswith("backbone.") and eq:  # backbone.depth=4 -> backbone_args["depth"] = 4
            name = key[len("backbone."):]
            if not name.isidentifier():
                raise UserError(f"--model {key}: {name!r} is not a keyword argument name")
            args = out.setdefault("backbone_args", {})
            if name in args:
                raise UserError(f"--model: {key} is given twice")
            args[name] = _plain_value(text)
            continue
        if key == "backbone_args":
            raise UserError("--model backbone_args: give each argument as backbone.NAME=VALUE, e.g. backbone.depth=4")
        if key in SET_ELSEWHERE:
            raise UserError(f"--model {key}: not a --model setting; it comes from {SET_ELSEWHERE[key]}")
        if key not in hints:
            raise UserError(f"--model: unknown model field {key!r}; choose from {', '.join(known)}")
        if not eq:
            raise UserError(f"--model {key}: no value; write KEY=VALUE, e.g. {key}={getattr(ModelConfig(), key)}")
        if key in out:
            raise UserError(f"--model: {key} is given twice")
        out[key] = _field_value(key, text, hints[key])
    return out


def _plain_value(text: str):
    """A backbone argument's value: an int, a float, true/false, none, else the string."""
    import math

    low = text.lower()
    if low in _TRUE + _FALSE and low not in ("1", "0"):
        return low in _TRUE
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            break
        return value
    return text


def _field_value(key: str, text: str, hint):
    """``text`` as a value of the field's type ``hint`` (int, float, bool, str, optionally None)."""
    import math
    import typing

    args = typing.get_args(hint)  # (str, NoneType) for `str | None`
    base = next((a for a in args if a is not type(None)), hint)
    if type(None) in args and text.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if base is int:
            return int(text)
        if base is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if not text:
            raise ValueError
        return text
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}.get(base, "a non-empty string")
        raise UserError(f"--model {key}={text}: expected {what}"
                        f"{' or none' if type(None) in args else ''}") from None


def preset(name: str, **changes) -> ModelConfig:
    """A preset with some fields changed: ``preset("small", fusion="concat")``."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)
