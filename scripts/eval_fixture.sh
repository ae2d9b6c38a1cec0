#!/usr/bin/env bash
# Evaluate the trained long-context fixture on a GPU (H100 numbers in benchmarks/results/):
# dense vs PBS (paper default, unpermuted, block 64) and per-head budgets calibrated on other texts.
# Usage: bash scripts/eval_fixture.sh OUT_DIR [FIXTURE_DIR]
set -euo pipefail
out=${1:?usage: eval_fixture.sh OUT_DIR [FIXTURE_DIR]}
fixture=${2:-fixtures/byte-llama}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pbs_tune.bench.real_attention --model "$fixture" --seqlen 32k --sequences 32 --prompts 200 \
  --layer-sequences 2 --variants dense,pbs_b128,unpermuted_b128,pbs_b64 --prefill-lengths 8k,32k,128k \
  --out "$out/fixture_real_attention.json"
python3 -m pbs_tune.bench.per_head --parts model --model "$fixture" --seqlen 32k --sequences 32 --prompts 200 \
  --margin 0.95 --out "$out/fixture_per_head.json"
