#!/usr/bin/env bash
# Issue 43 in one device call: rebuild and verify every shipped library, then the smoke test from a
# read-only wheel of the checkout holding them.
source "$(dirname "$0")/gpu_common.sh"
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 360 bash scripts/libraries_gpu.sh 2>&1 | tee "$OUT/libraries.log"
$py -m pip uninstall -q -y pbs-tune 2>/dev/null
timeout 190 bash scripts/smoke_library_gpu.sh 2>&1 | tee "$OUT/smoke.log"
date; ls -la "$OUT"
