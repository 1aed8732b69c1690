"""mmcli: a compact, offline-first vision-language toolkit for the command line."""

__version__ = "0.1.0"


def load(run_dir, device: str = "auto", precision: str = "auto", compile: bool = False):
    """A trained model for inference: ``mmcli.load("runs/easyvqa").answer("img.png", "what shape?")``.

    ``run_dir``: a run directory (its best/, else last/) or a checkpoint directory; ``precision``:
    auto, fp32, bf16 or fp16 (CUDA); ``compile``: captioning's decoding step compiled (``mmcli caption
    --compile``); see :mod:`mmcli.api` (imported here on first use, so ``import mmcli`` stays light)."""
    from .api import load as _load

    return _load(run_dir, device, precision, compile)
