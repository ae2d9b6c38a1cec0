#!/usr/bin/env bash
# On a GPU machine whose runtime lets Nsight Compute read counters: the attend kernels at one
# cell (default 8k, density 0.2), clocks left alone. Text reports go to $OUT (or ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
N=${N:-8192}; D=${D:-0.2}
for k in _attend_fwd _attend_fwd_tma; do
  ncu --clock-control none --kernel-name "$k" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 scripts/profile_attend.py "$N" "$D" 128x128w8s3 128x128w8s3-tma > "$OUT/ncu_${k}_${N}_${D}.txt" 2>&1
  grep -E "Duration|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|L2 Hit|Registers Per|Block Limit|Stall|Issue Slots Busy|No Eligible|Waves Per SM|Eligible Warps" \
    "$OUT/ncu_${k}_${N}_${D}.txt" | head -40
done
