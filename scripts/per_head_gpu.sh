#!/usr/bin/env bash
# Model-aware tuning on a GPU (H100 numbers in benchmarks/results/): per-head sweeps on the trained
# fixture (captured on calibration-split text) and on the mixed workload, then the held-out
# comparison of per-layer plans with the paper default (bench/per_head.py).
# Usage: bash scripts/per_head_gpu.sh OUT_DIR   (needs optuna: pip install -e .)
set -euo pipefail
out=${1:?usage: per_head_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
python3 - "$work/calib.txt" <<'PY'
import sys
from pbs_tune.tune.byte_llama import text_bytes
from pbs_tune.tune.fixtures import python_sources
text = text_bytes(python_sources("calibration"), 40000).tobytes().decode("utf-8", errors="replace")
open(sys.argv[1], "w", encoding="utf-8").write(text)
PY
python3 -m pbs_tune capture --model fixtures/byte-llama --text "$work/calib.txt" --seqlen 32k --out "$work/fixture.safetensors"
for name in fixture mixed; do
  extra=(--per-head --trials 12 --no-compile --storage "sqlite:///$work/$name.db" --profile "$out/${name}_per_head.yaml")
  if [ $name = fixture ]; then
    extra+=(--heads 8 --kv-heads 2 --calib "$work/fixture.safetensors" --max-error 0.25)
  fi
  start=$SECONDS
  python3 -m pbs_tune sweep --gpu auto --seqlen 32k "${extra[@]}" 2>&1 | grep -v "^\s*$"
  echo "$name per-head sweep: $((SECONDS - start)) s"
done
python3 -m pbs_tune.bench.per_head --parts model --model fixtures/byte-llama --seqlen 32k --sequences 32 \
  --prompts 200 --out "$out/fixture_per_head.json"
python3 -m pbs_tune.bench.per_head --parts mixed --lengths 32k,128k --out "$out/mixed_per_head.json"
# More calibration samples: each left-out check then fits three (the 32k bound failed with two).
python3 -m pbs_tune.bench.per_head --parts mixed --lengths 32k,128k --calib-samples 4 --out "$out/mixed_per_head_4.json"
