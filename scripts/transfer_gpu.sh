#!/usr/bin/env bash
# Issue 23 on one GPU. PART=launch: re-choose every launch of this GPU's profile over every workload
# family and the next seed (pbs-tune relaunch --sources all), rebuild the shared sm_90 library, then
# time the entries against the untuned default on held-out seeds of every family (bench/transfer.py).
# PART=oracle: PBS's density against the oracle's at the default's error (bench/oracle.py).
source "$(dirname "$0")/gpu_common.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$root
gpu=$($py -c "from pbs_tune.profile.target import present_gpu; print(present_gpu())")
if [ "${PART:-launch}" = launch ]; then
  $py -m pbs_tune.bench.transfer --profile configs/$gpu.yaml --gpu $gpu --out "$OUT/transfer_before.json" 2>&1 \
    | grep -v -i warn
  $py -m pbs_tune relaunch --profile configs/$gpu.yaml --out configs/$gpu.yaml --sources all --no-compile 2>&1 \
    | grep -v -i "warn\|^pbs-tune: \(calib\|dense\|  \)"
  for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | tail -1 || exit 1; done
  tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
  $py -m pbs_tune.bench.transfer --profile configs/$gpu.yaml --gpu $gpu --out "$OUT/transfer_after.json" 2>&1 \
    | grep -v -i warn
else
  $py -m pbs_tune.bench.oracle --seqlen ${SEQLEN:-32k} --out "$OUT/oracle.json" 2>&1 | grep -v -i warn
fi
ls -la "$OUT"
