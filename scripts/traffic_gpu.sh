#!/usr/bin/env bash
# Issue 22 on one GPU. STEP=build: rebuild both shipped kernel libraries for the current kernel
# sources, check the h200 one against the JIT, A/B the op against the previous sources (ab_old/:
# `git archive <rev> pbs_tune kernels`, kernels moved under pbs_tune/), and time the shipped
# profile on other GQA shapes and chunks from a read-only installed wheel. STEP=traffic: packed
# batches, chunked prefill and the fixture through apply. Results go to $OUT (or ./out).
source "$(dirname "$0")/gpu_common.sh"
if [ "${STEP:-build}" = build ]; then
  for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml || exit 1; done
  tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
  $py -m pbs_tune.bench.library --parts identity --profile configs/h200-sxm.yaml --out "$OUT/identity.json" 2>&1 | tail -3
fi
install_readonly_wheel
cd /tmp
if [ "${STEP:-build}" = build ]; then
  for round in 1 2; do
    PYTHONPATH=$root/ab_old $py "$root/scripts/op_ab.py" before >> "$OUT/op_ab.jsonl"
    PYTHONPATH=/tmp/site-ro $py "$root/scripts/op_ab.py" after >> "$OUT/op_ab.jsonl"
  done
  PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.traffic --parts shapes --out "$OUT/traffic_shapes.json" 2>&1 | grep -v "^pbs_tune: .*nearest"
else
  PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.traffic --parts "${PARTS:-packed,chunked,fixture}" \
    --fixture "$root/fixtures/byte-llama" --out "$OUT/traffic.json"
fi
ls -la "$OUT"
