#!/usr/bin/env bash
# The GPU checks in one short run (about 5 minutes on one H100/H200), for a machine with a CUDA GPU:
#   1. the CUDA tests (tests/test_cuda.py: training in fp32/bf16/fp16/auto, grouped pretraining with the
#      feature cache, resume, cached decoding, bf16 inference weights);
#   2. mmcli against the Hugging Face model of the same shape (benchmarks/peer_hf.py --device cuda):
#      training fp32/bf16, greedy and beam-3 generation, ratios and MFU;
#   3. the base preset: bf16 training samples/s and MFU, and greedy generation images/s
#      (benchmarks/bench_train.py), plus the small preset for scale;
#   4. one cross-attention layer folded onto its context or projecting it (benchmarks/bench_fold.py: mmcli
#      folds on a CPU only, where it was measured).
# Everything it prints goes to $OUT (default gpu-results/) as well: gpu.txt, tests.txt, peer_hf.txt/json,
# base.txt, fold.txt. Needs torch with CUDA, timm, transformers and the other packages of
# `pip install -e '.[test,bench]'`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$OUT/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
python benchmarks/peer_hf.py --device cuda --rounds 7 --warmup 2 --json "$OUT/peer_hf.json" 2>/dev/null | tee "$OUT/peer_hf.txt"
{
  for p in base small; do
    echo "== $p preset, bf16 training, batch 64"; python benchmarks/bench_train.py --preset $p --device cuda --precision bf16 --batch 64 --steps 10 --warmup 3
    echo "== $p preset, bf16 greedy generation of 20 tokens, batch 64"; python benchmarks/bench_train.py --preset $p --device cuda --precision bf16 --batch 64 --steps 10 --warmup 2 --generate
  done
  echo "== base preset, bf16, full vs frozen backbone vs cached features"; python benchmarks/bench_train.py --preset base --device cuda --precision bf16 --batch 64 --frozen-compare --steps 10
} 2>&1 | tee "$OUT/base.txt"
python benchmarks/bench_fold.py --device cuda --rounds 3 2>&1 | tee "$OUT/fold.txt"
