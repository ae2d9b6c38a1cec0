#!/usr/bin/env bash
# Issue 37 on one Hopper GPU: build the shipped kernel libraries (sm_90 here, natively; sm_80, sm_89
# and sm_100 for the A100, L40S and B200 profiles without those GPUs), check the sm_90 one against the
# JIT, and run the sm_80 and sm_89 builds as PTX on this GPU against the sm_90 portable kernel.
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml || exit 1; done
pids=()
for p in a100-sxm l40s b200; do
  ($py -m pbs_tune compile --profile configs/$p.yaml > "/tmp/compile-$p.log" 2>&1; echo "$p: exit $?" >> /tmp/compile-$p.log) &
  pids+=($!)
done
wait "${pids[@]}"
cat /tmp/compile-*.log | grep -v FP_FUSION | tee "$OUT/compile.txt"
tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
du -sh cache/sm_* | tee -a "$OUT/compile.txt"
$py -m pbs_tune.bench.library --parts identity --lengths 32k --out "$OUT/aot_identity.json" 2>&1 | tail -3
$py -m pbs_tune.bench.ptx_on_hopper --out "$OUT/ptx_on_hopper.json" 2>&1 | grep -v FP_FUSION
ls -la "$OUT"
