#!/usr/bin/env bash
# Issue 44 on a GPU: what the retrieval knobs cost on the synthetic families (scripts/knob_cost.py,
# $OUT/knob_cost.jsonl), from the read-only wheel the library smoke test installed (else the checkout).
source "$(dirname "$0")/gpu_common.sh"
[ -d /tmp/site-ro/pbs_tune ] && export PYTHONPATH=/tmp/site-ro
timeout ${KNOB_TIMEOUT:-200} $py scripts/knob_cost.py 2>&1 | grep -v FP_FUSION | tee "$OUT/knob_cost.jsonl" | cut -c1-200
