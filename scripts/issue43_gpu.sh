#!/usr/bin/env bash
# Issue 43 in one device call (about 6 minutes): rebuild every shipped library (sm_90 natively from
# the H100 and H200 profiles, sm_80 / sm_89 / sm_100 cross-built) and verify sm_90 bit for bit and
# sm_80 / sm_89 through their PTX; the smoke test from a read-only wheel of the checkout holding
# them (the profile of the GPU present); then the op per workload family at 32k / 128k against
# cuDNN, this checkout beside main before the 8-bit kernels (aa6829f, carried as ab_old: make it with
#   git archive aa6829f pbs_tune | tar -x -C ab_old).
source "$(dirname "$0")/gpu_common.sh"
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
STEP=all timeout 300 bash scripts/libraries_gpu.sh 2>&1 | tee "$OUT/libraries.log"
$py -m pip uninstall -q -y pbs-tune 2>/dev/null
timeout 180 bash scripts/smoke_library_gpu.sh 2>&1 | tee "$OUT/smoke.log"
if [ -d ab_old/pbs_tune ]; then
  for round in $(seq ${AB_ROUNDS:-2}); do  # rounds alternate, so a drift of the GPU shows
    PYTHONPATH=$root/ab_old timeout 100 $py scripts/op_ab.py before-8bit >> "$OUT/op_ab.jsonl"
    PYTHONPATH=/tmp/site-ro timeout 100 $py scripts/op_ab.py now >> "$OUT/op_ab.jsonl"
  done
fi
date; ls -la "$OUT"
