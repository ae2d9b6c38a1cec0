#!/usr/bin/env bash
# Re-tune a shipped profile on its GPU (issue 45, item 4), in parts that each fit one device call:
# every call sweeps some lengths of one shape with every knob in the space (block, segment,
# threshold, estimator, launch, tail_blocks, column_blocks), calibrated on one sample of every
# workload family with the paper default's error bounding each (--workload families --max-error
# default), each entry checked on the families' next seed. The Optuna study and the profile live
# in retune/ (git-ignored): bring back $OUT/retune/ and carry retune/ into the next call, which
# resumes the study (a length whose study is complete is left as it is).
#   SHAPE=32/8/128 LENGTHS="16k 32k" TRIALS=24 TIMEOUT=200 bash scripts/retune_gpu.sh
#   STEP=check bash scripts/retune_gpu.sh   # the re-tuned profile against the untuned default, held out
# Needs optuna on the GPU machine: carry .whl/ with optuna, alembic, colorlog, sqlalchemy and mako
# wheels for Python 3.12. When every length is done: copy retune/<gpu>.yaml over configs/<gpu>.yaml
# (keeping its other shapes), then bash scripts/rebuild_gpu.sh for the libraries.
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$root
gpu=${GPU:-$($py -c "from pbs_tune.profile.target import present_gpu; print(present_gpu())")}
mkdir -p retune
IFS=/ read -r heads kv_heads head_dim <<< "${SHAPE:-32/8/128}"
if [ "${STEP:-sweep}" = sweep ]; then
  for n in ${LENGTHS:-16k 32k}; do
    timeout $(( ${TIMEOUT:-200} + 120 )) $py -m pbs_tune sweep --gpu "$gpu" --seqlen "$n" --heads "$heads" \
      --kv-heads "$kv_heads" --head-dim "$head_dim" --dtype "${DTYPE:-bfloat16}" --workload families --max-error default \
      --trials "${TRIALS:-24}" --timeout "${TIMEOUT:-200}" --storage "sqlite:///$root/retune/$gpu.db" \
      --profile "$root/retune/$gpu.yaml" --no-compile 2>&1 | grep -v -i "warn\|^pbs-tune: \(calib\|dense\|  \|trial\)"
  done
else
  $py -m pbs_tune.bench.transfer --profile "$root/retune/$gpu.yaml" --gpu "$gpu" \
    --lengths "$(echo ${LENGTHS:-16k 32k} | tr " " ",")" --out "$OUT/retune_check_$gpu.json" \
    2>&1 | grep -v -i warn | tail -20
fi
mkdir -p "$OUT/retune" && cp retune/* "$OUT/retune/" 2>/dev/null
ls -la "$OUT/retune"
