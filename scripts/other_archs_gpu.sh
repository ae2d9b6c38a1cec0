#!/usr/bin/env bash
# Issue 37 on one Hopper GPU. On a CPU first: the A100/L40S/B200 libraries
# (pbs-tune compile --profile configs/<gpu>.yaml) and the PTX of their sm_80/sm_89 builds
# (python -m pbs_tune.bench.ptx_on_hopper prepare; carry .ptx). Here: rebuild the sm_90 library
# natively (BUILD90=1), check it against the JIT, and run the sm_80 and sm_89 PTX on this GPU against
# the sm_90 portable kernel.
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if [ "${BUILD90:-0}" = 1 ]; then
  for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml || exit 1; done
  tar czf "$OUT/libraries.tar.gz" cache/sm_90/ configs/h1*.yaml configs/h2*.yaml
fi
$py -m pbs_tune.bench.library --parts identity --lengths 32k --out "$OUT/aot_identity.json" 2>&1 | tail -3
$py -m pbs_tune.bench.ptx_on_hopper run --out "$OUT/ptx_on_hopper.json" 2>&1 | grep -v FP_FUSION
ls -la "$OUT"
