#!/usr/bin/env bash
# Issue 45's last A/B of the 8-bit attend modes (removed since; about 5 minutes on one Hopper GPU):
# the attend kernel per mode against 16-bit, densities 0.1-0.6 at 32k and 128k, from two carried
# versions that still have them, ab_magic/ (the fixes tried) and ab_head/ (before them), then Nsight
# Compute on ab_magic's kernels where the runtime lets it read counters. Make the two as
# benchmarks/results/h100_precision_fixes_tried_2026-12-07.patch says (main at 39d5d70, and it with the
# patch). Libraries and the smoke test of the checkout itself: scripts/rebuild_gpu.sh.
source "$(dirname "$0")/gpu_common.sh"
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for ver in ab_magic ab_head; do
  [ -d "$ver/pbs_tune" ] && [ $SECONDS -lt 300 ] || { echo "skip $ver at ${SECONDS}s"; continue; }
  PYTHONPATH=$root/$ver timeout $((545 - SECONDS)) $py -m pbs_tune.bench.precision --parts kernel \
    --lengths ${LENGTHS:-32k,128k} --out "$OUT/precision_kernel_$ver.json" 2>&1 | grep -v FP_FUSION | tee "$OUT/precision_kernel_$ver.log" | tail -14
done
cat > /tmp/one_attend.py <<'PY'
import os, sys, torch
from pbs_tune import LaunchConfig
from pbs_tune.bench.kernels import random_blocks
from pbs_tune.op.pbs_attention import attend_blocks
from pbs_tune.op.permutation import identity_permutation
from pbs_tune.op.precision import attend_inputs
from pbs_tune.op.selection import block_list_from_mask
n, p = 32768, os.environ["PRECISION"]
q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
perm = identity_permutation(k, v)
blocks = block_list_from_mask(random_blocks(1, 32, n, 128, 0.3, "cuda"), perm.positions, 128)
low = None if p == "input" else attend_inputs(q, perm.k, perm.v, p)
for label in sys.argv[1:]:
    for _ in range(3):
        attend_blocks(q, perm, blocks, launch=LaunchConfig.parse(label), precision=p, low=low)
torch.cuda.synchronize()
PY
for mode in input int8 int8+fp8; do
  [ $SECONDS -lt 500 ] || break
  PRECISION=$mode PYTHONPATH=$root/ab_magic timeout $((555 - SECONDS)) ncu --clock-control none \
    --kernel-name regex:_attend_fwd --launch-skip 2 --launch-count 2 --section SpeedOfLight \
    --section ComputeWorkloadAnalysis --section InstructionStats --section WarpStateStats \
    $py /tmp/one_attend.py 128x128w8s3 128x128w8s3-tma > "$OUT/ncu_${mode/+/_}.txt" 2>&1
  grep -E "==ERROR==|LibraryNotLoaded|Duration|Issue Slots Busy|Executed Ipc A" "$OUT/ncu_${mode/+/_}.txt" | head -8
done
date
