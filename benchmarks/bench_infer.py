"""Inference speed: captions per second (greedy and beam 3) and retrieval query latency.

    python benchmarks/bench_infer.py --model runs/flickr8k-caption-s0 --images 64 --rounds 3

Captioning: a trained caption run (``--model``; its best/) captions ``--images`` dev images of
../shared/data/flickr8k (decoded and transformed before timing, so only the model is timed)
in batches of ``--batch-size``, greedy and with beam 3, on the CPU; each round times both,
alternating which goes first, and the report gives medians and the tokens generated.
``--compare-unpacked`` also loads the run without oneDNN's linear layers (mmcli/model/packed.py,
which ``mmcli.load`` swaps in on a CPU) and times it in the same rounds: the speed-up is the
median of the per-round ratios. ``--compare-unfolded`` does the same with greedy decoding's
cross-attention not folded onto the image (``VLM.fold_cross_attention = False``: each layer's keys
and values of the image cached, as before the fold). Without
../shared the images are random noise (then captions are as long as the model makes them).

Retrieval: ``--index-size`` random L2-normalised embeddings of the model's width stand in for
an index; one query is one text embedded by the model plus the chunked top-10
(:func:`mmcli.search.top_k`); the report gives the median over ``--queries`` queries of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k"
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a caption run directory (small preset)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--index-size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-unpacked", action="store_true",
                    help="Also time the model loaded with F.linear layers (no oneDNN packing), interleaved.")
    ap.add_argument("--compare-unfolded", action="store_true",
                    help="Also time the model with the image's keys and values cached for decoding instead of "
                         "the folded cross-attention, interleaved.")
    a = ap.parse_args()

    import torch

    import mmcli
    from mmcli.search import top_k

    torch.set_num_threads(a.threads)
    model = mmcli.load(a.model, "cpu")
    models = {"packed": model}
    if a.compare_unpacked:
        from mmcli.model import packed

        available, packed.packing_available = packed.packing_available, lambda: False
        models["F.linear"] = mmcli.load(a.model, "cpu")
        packed.packing_available = available
    if a.compare_unfolded:
        models["keys and values cached"] = mmcli.load(a.model, "cpu")
        models["keys and values cached"].vlm.fold_cross_attention = False
    if FLICKR.is_dir():
        from mmcli.data.spec import load_dataset

        val = load_dataset(f"flickr8k:{FLICKR}").splits["val"]
        paths = [r.image for r in val.captions[: a.images]]
        batch = model.images_tensor(paths)
        source = f"{len(paths)} Flickr8k dev images"
    else:
        batch = torch.randn(a.images, 3, model.config.image_size, model.config.image_size)
        source = f"{a.images} random-noise images (no ../shared)"

    def run(m, beam: int) -> tuple[float, int]:
        t0, tokens = time.perf_counter(), 0
        for i in range(0, batch.shape[0], a.batch_size):
            tokens += sum(len(x) for x in m.caption_ids(batch[i: i + a.batch_size], beam=beam))
        return time.perf_counter() - t0, tokens

    for m in models.values():
        run(m, 1)  # warm-up
    times: dict[tuple[str, int], list[float]] = {(k, b): [] for k in models for b in (1, 3)}
    tokens: dict[tuple[str, int], int] = {}
    for r in range(a.rounds):
        for key in (list(times) if r % 2 == 0 else list(times)[::-1]):
            dt, tokens[key] = run(models[key[0]], key[1])
            times[key].append(dt)

    g = torch.Generator().manual_seed(0)
    E = model.config.embed_dim
    index = torch.nn.functional.normalize(torch.randn(a.index_size, E, generator=g), dim=-1)
    embed_t, search_t = [], []
    for q in range(a.queries):
        t0 = time.perf_counter()
        query = model.embed_texts([f"a dog runs on the grass number {q}"])
        t1 = time.perf_counter()
        top_k(query, index, 10)
        t2 = time.perf_counter()
        embed_t.append(t1 - t0)
        search_t.append(t2 - t1)

    cfg = model.config
    print(f"model: {a.model} ({cfg.backbone}, drop_stages={cfg.drop_stages}, {cfg.image_size} px, dim {cfg.dim}, "
          f"{cfg.text_layers}+{cfg.fusion_layers} layers, {cfg.fusion}); {source}; batch {a.batch_size}; "
          f"torch {torch.__version__}, {a.threads} threads; medians of {a.rounds} rounds")
    for (kind, beam), ts in times.items():
        med, n = statistics.median(ts), batch.shape[0]
        name = ("greedy" if beam == 1 else f"beam {beam}") + ("" if kind == "packed" else f" ({kind})")
        print(f"  {name:18s} {n / med:7.1f} captions/s  ({med:.2f} s for {n} images, "
              f"{tokens[kind, beam] / n:.1f} tokens per caption)")
        if kind != "packed":
            ratios = [u / p for u, p in zip(ts, times["packed", beam])]
            what = "oneDNN linear layers" if kind == "F.linear" else "the folded cross-attention"
            print(f"  {'':18s} {what} {statistics.median(ratios):.2f}x faster "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")
    print(f"retrieval over {a.index_size:,} embeddings (dim {E}), median of {a.queries} queries: "
          f"text embedding {1000 * statistics.median(embed_t):.1f} ms + top-10 search "
          f"{1000 * statistics.median(search_t):.1f} ms")


if __name__ == "__main__":
    main()
