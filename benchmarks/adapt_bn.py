"""A run's checkpoint with its backbone's BatchNorm statistics estimated again on another dataset's
train images (the weights as they were).

    python benchmarks/adapt_bn.py runs/shapes-vqa-s0 runs/shapes-vqa-s0-bn-easyvqa --data easyvqa
    mmcli finetune --task vqa --init runs/shapes-vqa-s0-bn-easyvqa --freeze-backbone --feature-cache ...

This is an experiment for the frozen-backbone question of RESULTS.md ("A frozen backbone with cached
features"). A frozen CNN backbone normalises easy-VQA's images with the means and variances it
gathered on the shapes set. The script keeps every weight and computes each BatchNorm layer's
running mean and variance again, as plain averages over the batches of the train split's images. It
uses the eval transform, which is what the feature cache sees; with ``--seed`` it carves the split
as training does, and never reads the validation or test images. Its output is a checkpoint
directory that ``--init`` takes: the run's ``best/`` (else ``last/``) with the statistics replaced.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a training run (its best/, else last/) or a checkpoint directory")
    ap.add_argument("out", help="the new checkpoint directory")
    ap.add_argument("--data", default="easyvqa", help="dataset spec whose train images give the statistics")
    ap.add_argument("--seed", type=int, default=0,
                    help="the seed that carves a validation split where the data has none")
    ap.add_argument("--batch-size", type=int, default=256)
    a = ap.parse_args()

    from mmcli.checkpoint import save_checkpoint
    from mmcli.data.images import load_image, make_transform
    from mmcli.errors import UserError
    from mmcli.model.vlm import load_model
    from mmcli.train import TrainConfig, _splits, init_checkpoint

    try:
        model, ckpt = load_model(init_checkpoint(a.run))
        train, _, _ = _splits(TrainConfig(task="vqa", data=a.data, seed=a.seed))
        paths = sorted({r.image for r in (*train.questions, *train.captions)})
        norms = [m for m in model.vision.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            raise UserError(f"{a.run}: its backbone ({model.vision.name}) has no BatchNorm layer")
        transform = make_transform(model.vision.data_config)
        t0 = time.perf_counter()
        momenta = [m.momentum for m in norms]
        for m in norms:  # momentum None: the running statistics become the plain average over the batches
            m.reset_running_stats()
            m.momentum, m.training = None, True
        with torch.no_grad():
            for i in range(0, len(paths), a.batch_size):
                model.vision.features(torch.stack([transform(load_image(p)) for p in paths[i:i + a.batch_size]]))
        for m, momentum in zip(norms, momenta):
            m.momentum, m.training = momentum, False
        save_checkpoint(a.out, config=ckpt.config, model=model, tokenizer=ckpt.tokenizer,
                        answer_vocab=ckpt.answer_vocab)
    except UserError as e:
        sys.exit(f"adapt_bn: {e}")
    print(f"{len(norms)} BatchNorm layers estimated again over {len(paths)} train images of {a.data} in "
          f"{time.perf_counter() - t0:.1f} s; the checkpoint: {a.out}")


if __name__ == "__main__":
    main()
