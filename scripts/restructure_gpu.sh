#!/usr/bin/env bash
# Issue 33 on a GPU machine: the restructured package's GPU paths, in one run, from a copy of the
# checkout at another path. The shipped libraries as they are (BUILD=0: no kernel source changed):
# bound from a read-only wheel and a relocated read-only checkout with no JIT call, identical to the
# JIT through `launch.using()`; then a small real sweep (Target's arch and shared memory, launch
# pruning, the launch judged over every source, held-out checks, the native library build) and a
# relaunch of its entry. Needs optuna's wheels carried in .whl (see the device README).
source "$(dirname "$0")/gpu_common.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
BUILD=0 bash scripts/bench_library.sh 2>&1 | tail -30
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
rm -rf /tmp/sw && mkdir -p /tmp/sw
set -o pipefail
$py -m pbs_tune sweep --gpu auto --seqlen 16k --heads 8 --kv-heads 2 --trials ${TRIALS:-6} \
    --storage sqlite:////tmp/sw/s.db --profile /tmp/sw/gpu.yaml 2>&1 | tee "$OUT/sweep.txt" | tail -25
$py -m pbs_tune show --profile /tmp/sw/gpu.yaml 2>&1 | tee "$OUT/show.txt"
$py -m pbs_tune relaunch --profile /tmp/sw/gpu.yaml --sources own --out /tmp/sw/relaunched.yaml 2>&1 \
    | tee "$OUT/relaunch.txt" | tail -5
cp /tmp/sw/gpu.yaml /tmp/sw/relaunched.yaml "$OUT/" 2>/dev/null
ls /tmp/sw/cache/*/ | head; ls -la "$OUT"
