"""Run an mmcli command with one of the model's speed switches turned off, and say where its time went.

    python benchmarks/ablate.py pack_text=0 -- finetune --task vqa --out runs/ab-padded ...
    python benchmarks/ablate.py -- finetune --task vqa --out runs/ab-packed ...   # nothing turned off

The switches are class attributes that exist for ablations: of ``VLM``, ``pack_text`` (the text layers
on the real tokens alone, ``VLM.encode_text``, and the LM loss on a batch's real tokens in one call,
``VLM.lm_real_logits``, instead of length buckets), ``fold_cross_attention`` (greedy decoding's folded
cross-attention), ``share_image_kv`` (the LM loss's length buckets share the images' keys and
values, ``VLM.image_kv``) and ``pack_fusion`` (the cross-attention fusion layers of VQA's and ITM's
texts on the real tokens alone, ``VLM.fuse``); of ``Attention``, ``fold_context`` (a cross-attention
without a cache folded where that takes far fewer FLOPs, ``Attention.fold_pays``) and ``attend_by_context``
(packed rows over shared images attend laid out by image, ``Rows.by_context``); of ``Dropout``,
``fast_masks`` (dropout masks from 15-bit numbers on a CPU; 0: torch's ``bernoulli_`` masks); of ``mmcli.losses``,
``FUSED_CE`` (the LM loss's cross-entropy chunked with its gradient made in the forward pass on a CPU,
``losses.token_cross_entropy``; 0: ``F.cross_entropy`` on an fp32 copy of the logits). After the command,
one line on stderr gives the seconds spent in the training loop's parts, summed over the run: the
losses' forward passes (``train._batch_loss``), ``backward``, the optimizer steps
(``train._optimizer_step``) and validation (``train.validate``). The whole-run
comparisons in BENCHMARKS.md alternate the two commands (with and without the switch) on the same
seed, each into its own ``--out``.
"""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SWITCHES = ("pack_text", "fold_cross_attention", "share_image_kv", "pack_fusion", "fold_context", "attend_by_context",
            "fast_masks", "FUSED_CE")


def switch_owner(name: str):
    """The class (or module) whose attribute ``name`` is the switch (benchmarks/peer_hf.py --ablate-train too)."""
    from mmcli import losses
    from mmcli.model.transformer import Attention, Dropout
    from mmcli.model.vlm import VLM

    return {"fold_context": Attention, "attend_by_context": Attention, "fast_masks": Dropout,
            "FUSED_CE": losses}.get(name, VLM)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: ablate.py [SWITCH=0|1 ...] -- MMCLI ARGS (switches: " + ", ".join(SWITCHES) + ")",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    settings, command = argv[:cut], argv[cut + 1:]
    import torch

    from mmcli import train
    from mmcli.cli import main as mmcli_main

    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in SWITCHES or value not in ("0", "1"):
            print(f"ablate.py: {setting!r}: give SWITCH=0 or SWITCH=1, SWITCH one of {', '.join(SWITCHES)}",
                  file=sys.stderr)
            return 2
        setattr(switch_owner(name), name, value == "1")

    spent = {"forward (losses)": 0.0, "backward": 0.0, "optimizer": 0.0, "validation": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    train._batch_loss = timed(train._batch_loss, "forward (losses)")
    train._optimizer_step = timed(train._optimizer_step, "optimizer")
    train.validate = timed(train.validate, "validation")
    torch.Tensor.backward = timed(torch.Tensor.backward, "backward")
    on = {name: getattr(switch_owner(name), name) for name in SWITCHES}
    atexit.register(lambda: print(f"ablate.py {on}: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()),
                                  file=sys.stderr))
    return mmcli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
