#!/usr/bin/env bash
# After a change to pbs_tune/kernels/ (about 6-8 minutes on one Hopper GPU): rebuild every shipped
# library (sm_90 natively from the H100 and H200 profiles, sm_80 / sm_89 / sm_100 cross-built) and
# verify sm_90 bit for bit and sm_80 / sm_89 through their PTX; the smoke test from a read-only wheel
# of the checkout holding them (the profile of the GPU present: load time, first calls, no JIT);
# then the op per workload family at 32k / 128k against cuDNN, this checkout beside an earlier
# version carried as AB_DIR (default ab_head; make it with: git archive REV pbs_tune | tar -x -C ab_head),
# rounds alternating so a drift of the GPU shows. Results under $OUT.
source "$(dirname "$0")/gpu_common.sh"
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
STEP=all timeout ${LIBRARY_S:-300} bash scripts/libraries_gpu.sh 2>&1 | tee "$OUT/libraries.log"
$py -m pip uninstall -q -y pbs-tune 2>/dev/null
RUNS=${RUNS:-1} timeout 180 bash scripts/smoke_library_gpu.sh 2>&1 | tee "$OUT/smoke.log"
ab=${AB_DIR:-ab_head}
if [ -d "$ab/pbs_tune" ]; then
  for round in $(seq ${AB_ROUNDS:-2}); do
    PYTHONPATH=$root/$ab timeout 100 $py scripts/op_ab.py "$ab" >> "$OUT/op_ab.jsonl"
    PYTHONPATH=/tmp/site-ro timeout 100 $py scripts/op_ab.py now >> "$OUT/op_ab.jsonl"
  done
fi
date; ls -la "$OUT"
