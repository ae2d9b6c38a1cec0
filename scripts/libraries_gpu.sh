#!/usr/bin/env bash
# On a Hopper GPU: rebuild every shipped kernel library from scratch with this machine's Triton and
# verify it (pbs-tune verify: each kernel launched from the library against the JIT, stamped in the
# manifest only if it matched). sm_90 is built natively from the H100 and H200 profiles and must be
# bit-identical to the JIT; sm_80 / sm_89 are cross-built and their PTX (same build) run here; sm_100
# is cross-built and cannot run on Hopper, so it ships unverified (the loader runs the JIT there).
# The rebuilt libraries come back as $OUT/libraries.tar.gz.
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
rm -rf cache/sm_80 cache/sm_89 cache/sm_90 cache/sm_100
# Cross-builds need no GPU: in the background while the native build uses it.
( for pair in a100-sxm:80 l40s:89 b200:100; do
    $py -m pbs_tune compile --profile configs/${pair%%:*}.yaml --arch ${pair##*:} || echo "cross-build ${pair} failed"
  done ) > "$OUT/cross_build.log" 2>&1 &
cross=$!
for p in h100-sxm h200-sxm; do
  $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | grep -v FP_FUSION || echo "compile $p failed"
done
wait $cross; cat "$OUT/cross_build.log"
for p in a100-sxm l40s; do $py -m pbs_tune verify --profile configs/$p.yaml 2>&1 | grep -v FP_FUSION; done
$py - <<'PY' | tee "$OUT/libraries_verified.txt"
import json, glob
for m in sorted(glob.glob("cache/sm_*/manifest.json")):
    man = json.load(open(m))
    stamped = [r for r in man["kernels"] if r.get("verified")]
    how = {r["verified"]["how"] for r in stamped}
    print(m, man["built_with"], f"{len(stamped)}/{len(man['kernels'])} verified", how)
PY
tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
