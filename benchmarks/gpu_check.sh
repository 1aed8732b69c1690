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
# base.txt, fold.txt, and status.txt (each step's exit status; the script exits 1 if any step failed, after
# running them all: a lent GPU's minutes are few, so one failure does not cost the other numbers).
#
# Nothing is installed: the checkout's mmcli is imported through PYTHONPATH, with python3 (or $PYTHON).
# It needs torch with CUDA, timm, transformers, typer, rich, sentencepiece, sacrebleu, safetensors, pillow and
# pytest, which the lent machines' image holds (../.library/device/KINDS.md); here `pip install -e
# '.[test,bench]'` gives them. rouge-score and easy-vqa are not needed (the checks use synthetic data).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh         # every step at toy sizes on this machine's CPU, in about a
#                                                # minute: that the script runs, before a GPU's minutes are spent
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
: >"$OUT/status.txt"
exec 3>&2  # the script's stderr, for step's messages (each step's own stderr goes to its log)
step() {  # step NAME COMMAND...: run it, record its exit status (in a file: a step piped to tee runs in a subshell)
  local name=$1
  shift
  "$@"
  local rc=$?
  echo "$name $rc" >>"$OUT/status.txt"
  [ "$rc" -eq 0 ] || echo "gpu_check: step '$name' failed (exit $rc)" >&3
}

if [ "${SMOKE:-0}" = 1 ]; then  # toy sizes on the CPU: the same steps, nothing measured
  DEV=cpu
  PEER=(--image-size 32 --patch 16 --dim 32 --enc-layers 1 --dec-layers 1 --heads 2 --vocab 64 --text-len 4
        --batch 2 --rounds 1 --warmup 0)
  TRAIN=(--batch 2 --image-size 64 --steps 1)
  WARMUP=(0 0)
  PRESETS=(tiny)
  FOLD=(--rounds 1 --steps 1)
else
  DEV=cuda
  PEER=(--rounds 7 --warmup 2)
  TRAIN=(--batch 64 --steps 10)
  WARMUP=(3 2)  # training, generation
  PRESETS=(base small)
  FOLD=(--rounds 3)
fi

preflight() {
  if [ "$DEV" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || return 1
  fi
  "$PY" - "$DEV" <<'EOF'
import sys

import mmcli, timm, torch, transformers  # noqa: F401  (what the steps import)

print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| timm", timm.__version__, "| transformers", transformers.__version__, "| mmcli from", mmcli.__file__)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    print(torch.cuda.get_device_name(0))
EOF
}
preflight 2>&1 | tee "$OUT/gpu.txt"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  echo "preflight 1" >>"$OUT/status.txt"
  echo "gpu_check: the preflight failed (above); nothing else was run" >&2
  exit 1
fi

tests() { "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15; }
step tests tests | tee "$OUT/tests.txt"
step peer_hf "$PY" benchmarks/peer_hf.py --device "$DEV" "${PEER[@]}" --json "$OUT/peer_hf.json" 2>&1 \
  | grep -v Warning | tee "$OUT/peer_hf.txt"
bench_train() { "$PY" benchmarks/bench_train.py --device "$DEV" --precision bf16 "${TRAIN[@]}" "$@"; }
presets() {
  local p
  for p in "${PRESETS[@]}"; do
    echo "== $p preset, bf16 training"
    bench_train --preset "$p" --warmup "${WARMUP[0]}" || return
    echo "== $p preset, bf16 greedy generation of 20 tokens"
    bench_train --preset "$p" --warmup "${WARMUP[1]}" --generate || return
  done
  echo "== ${PRESETS[0]} preset, bf16, full vs frozen backbone vs cached features"
  bench_train --preset "${PRESETS[0]}" --frozen-compare
}
step presets presets 2>&1 | tee "$OUT/base.txt"
step fold "$PY" benchmarks/bench_fold.py --device "$DEV" "${FOLD[@]}" 2>&1 | tee "$OUT/fold.txt"
cat "$OUT/status.txt"
! awk '$2 != 0 { bad = 1 } END { exit !bad }' "$OUT/status.txt"
