"""Caption one split with a trained run's best/ and score it: BLEU-1..4, ROUGE-L, CIDEr-D (PTB tokenizer).

    python benchmarks/eval_captions.py runs/flickr8k-caption-s0 --data flickr8k:../shared/data/flickr8k \
        --split val --beam 3 --preds runs/flickr8k-caption-s0/val_beam3.json

Writes the predictions in the COCO results format ([{"image_id", "caption"}]), so
`mmcli score PREDS REFS` can rescore them, and prints the scores as JSON. (Until the
`mmcli caption` command exists, this is how RESULTS.md gets ROUGE-L, which validation
does not compute.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run directory (its best/ is used) or a checkpoint directory")
    ap.add_argument("--data", required=True, help="dataset spec, as for mmcli finetune")
    ap.add_argument("--split", default="val")
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--preds", help="write the captions here (COCO results JSON)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="the weights' dtype for decoding (bf16: as `mmcli caption --precision bf16`)")
    a = ap.parse_args()

    import torch

    from mmcli.data.images import make_transform
    from mmcli.data.loaders import ImageDataset, ImageSource, LoaderConfig, make_loader
    from mmcli.data.spec import load_dataset
    from mmcli.fileio import atomic_write_text
    from mmcli.metrics.captions import score_captions
    from mmcli.model.generate import beam_search, greedy
    from mmcli.model.vlm import load_model

    run = Path(a.run)
    model, ckpt = load_model(run / "best" if (run / "best").is_dir() else run)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.precision]
    model = model.to(dtype)
    tok, max_len = ckpt.tokenizer, model.cfg.max_text_len - 1
    split = load_dataset(a.data).split(a.split)
    source = ImageSource(make_transform(model.vision.data_config))
    loader = make_loader(ImageDataset(split.captions, source), LoaderConfig(batch_size=a.batch_size, workers=0))
    preds, refs, t0 = {}, {}, time.perf_counter()
    with torch.no_grad():
        for b in loader:
            b.images = b.images.to(dtype)
            if a.beam > 1:
                out = beam_search(model, b.images, tok.bos_id, tok.eos_id, max_len, beam=a.beam)
            else:
                out = greedy(model, b.images, tok.bos_id, tok.eos_id, max_len)
            for image_id, ids, r in zip(b.image_ids, out, b.references):
                preds[image_id], refs[image_id] = tok.decode(ids), list(r)
    seconds = time.perf_counter() - t0
    scores = score_captions(preds, refs, metrics=("bleu", "rouge_l", "cider_d")).scores
    if a.preds:
        atomic_write_text(a.preds, json.dumps([{"image_id": k, "caption": v} for k, v in preds.items()], indent=0) + "\n")
    print(json.dumps({"run": str(run), "split": a.split, "beam": a.beam, "precision": a.precision, "images": len(preds),
                      "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in scores.items()}}))


if __name__ == "__main__":
    main()
