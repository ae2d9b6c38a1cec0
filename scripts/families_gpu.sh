#!/usr/bin/env bash
# Issue 23 on one GPU: tuning that holds on every family.
#   PART=sweep:    sweep 32k and 128k on one sample of every workload family (seed 0) with the
#                  default's error bounding each family (--workload families --max-error default).
#   PART=transfer: the profile it wrote (PROFILE) against the untuned default on seed 7 of every family.
source "$(dirname "$0")/gpu_common.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$root
gpu=$($py -c "from pbs_tune.profile.target import present_gpu; print(present_gpu())")
if [ "${PART:-sweep}" = sweep ]; then
  $py -m pbs_tune sweep --gpu $gpu $(for n in ${LENGTHS:-32k 128k}; do echo --seqlen $n; done) --workload families --max-error default \
    --trials ${TRIALS:-30} --storage "sqlite:///$OUT/families.db" --profile "$OUT/families.yaml" --no-compile 2>&1 \
    | grep -v -i "warn\|^pbs-tune: \(calib\|dense\|  \|trial\)"
else
  $py -m pbs_tune.bench.transfer --profile "${PROFILE:?}" --gpu $gpu --out "$OUT/transfer_families.json" 2>&1 \
    | grep -v -i warn
fi
ls -la "$OUT"
