#!/usr/bin/env bash
# Issue 43 in one device call: rebuild and verify the sm_90 library, the smoke test from a read-only
# wheel of the checkout holding it, then verify the other archs' rebuilt libraries (their PTX). Carry .whl with a
# numpy < 2.5 wheel (see libraries_gpu.sh): the cross-builds need it.
source "$(dirname "$0")/gpu_common.sh"
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
STEP=native timeout 240 bash scripts/libraries_gpu.sh 2>&1 | tee "$OUT/libraries.log"
$py -m pip uninstall -q -y pbs-tune 2>/dev/null
timeout 180 bash scripts/smoke_library_gpu.sh 2>&1 | tee "$OUT/smoke.log"
STEP=others timeout 120 bash scripts/libraries_gpu.sh 2>&1 | tee -a "$OUT/libraries.log"
date; ls -la "$OUT"
