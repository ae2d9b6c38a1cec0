#!/usr/bin/env bash
# On a Hopper GPU: rebuild every shipped kernel library from scratch with this machine's Triton and
# verify it (pbs-tune verify: each kernel launched from the library against the JIT, stamped in the
# manifest only if it matched). sm_90 is built natively from the H100 and H200 profiles and must be
# bit-identical to the JIT; sm_80 / sm_89 are cross-built and their PTX (same build) run here; sm_100
# is cross-built and cannot run on Hopper, so it ships unverified (the loader runs the JIT there).
# STEP=native: sm_90, with the cross-builds started in the background; STEP=others: wait for them and
# verify sm_80 / sm_89; default both. The libraries come back as $OUT/libraries.tar.gz after each step.
source "$(dirname "$0")/gpu_common.sh"
step=${STEP:-all}
pack() {
  $py - <<'PY' | tee "$OUT/libraries_verified.txt"
import json, glob
for m in sorted(glob.glob("cache/sm_*/manifest.json")):
    man = json.load(open(m))
    stamped = [r for r in man["kernels"] if r.get("verified")]
    print(m, man["built_with"], f"{len(stamped)}/{len(man['kernels'])} verified",
          sorted({r["verified"]["how"] for r in stamped}))
PY
  tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
}
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if [ "$step" != others ]; then
  rm -rf cache/sm_80 cache/sm_89 cache/sm_90 cache/sm_100 /tmp/cross.done
  # Cross-builds need no GPU: in the background while the native build uses it.
  ( for pair in a100-sxm:80 l40s:89 b200:100; do
      $py -m pbs_tune compile --profile configs/${pair%%:*}.yaml --arch ${pair##*:} || echo "cross-build ${pair} failed"
    done; touch /tmp/cross.done ) > /tmp/cross_build.log 2>&1 &
  for p in h100-sxm h200-sxm; do
    $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | grep -v FP_FUSION || echo "compile $p failed"
  done
  pack
fi
if [ "$step" != native ]; then
  while [ ! -f /tmp/cross.done ]; do sleep 2; done
  cp /tmp/cross_build.log "$OUT/cross_build.log"; cat /tmp/cross_build.log
  for p in a100-sxm l40s; do $py -m pbs_tune verify --profile configs/$p.yaml 2>&1 | grep -v FP_FUSION; done
  pack
fi
