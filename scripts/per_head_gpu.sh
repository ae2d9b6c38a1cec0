#!/usr/bin/env bash
# Model-aware tuning on a GPU (numbers in benchmarks/results/h200_per_head_sweeps_default_bound.txt):
# per-head sweeps bounded by the paper default's error (--max-error default), each checked on data
# no trial saw: the trained fixture (captured on calibration-split text, held out on evaluation-split
# text) and the mixed workload (4 samples of seed 0, held out on 4 of seed 1); then the held-out
# comparison of per-layer plans with the paper default (bench/per_head.py).
# Usage: bash scripts/per_head_gpu.sh OUT_DIR   (needs optuna: pip install -e .)
set -euo pipefail
out=${1:?usage: per_head_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
python3 - "$work" <<'PY'
import sys
from pbs_tune.models.byte_llama import text_bytes
from pbs_tune.models.fixtures import python_sources
for split in ("calibration", "evaluation"):
    text = text_bytes(python_sources(split), 2 * 32768 + 1000).tobytes().decode("utf-8", errors="replace")
    open(f"{sys.argv[1]}/{split}.txt", "w", encoding="utf-8").write(text)
PY
for split in calibration evaluation; do
  python3 -m pbs_tune capture --model fixtures/byte-llama --text "$work/$split.txt" --seqlen 32k --sequences 2 \
    --out "$work/fixture_$split.safetensors"
done
common=(--per-head --max-error default --no-compile)
start=$SECONDS
python3 -m pbs_tune sweep --gpu auto --seqlen 32k "${common[@]}" --trials 12 --heads 8 --kv-heads 2 \
  --calib "$work/fixture_calibration.safetensors" --holdout-calib "$work/fixture_evaluation.safetensors" \
  --storage "sqlite:///$work/fixture.db" --profile "$out/fixture_per_head.yaml" 2>&1 | grep -v "^\s*$"
echo "fixture per-head sweep: $((SECONDS - start)) s"
for len in 32k 128k; do  # 128k: the trials stop after 210 s, then the held-out check runs
  start=$SECONDS
  python3 -m pbs_tune sweep --gpu auto --seqlen $len "${common[@]}" --samples 4 --trials 16 --timeout 210 \
    --storage "sqlite:///$work/mixed.db" --profile "$out/mixed_per_head.yaml" 2>&1 | grep -v "^\s*$"
  echo "mixed per-head sweep at $len: $((SECONDS - start)) s"
done
python3 -m pbs_tune.bench.per_head --parts model --model fixtures/byte-llama --seqlen 32k --sequences 32 \
  --prompts 200 --out "$out/fixture_per_head.json"
python3 -m pbs_tune.bench.per_head --parts mixed --lengths 32k,128k --calib-samples 4 --margin 1.0 \
  --out "$out/mixed_per_head_4.json"
