#!/usr/bin/env bash
# Issue 24 on one GPU: rebuild both shipped kernel libraries, A/B the op against the previous
# sources (ab_old/: `git archive <rev> pbs_tune`), the stage breakdown, the crossover with CUDA
# graphs (rewriting dense_faster of this GPU's profile: UPDATE=0 to only measure) and the fixture's
# 8k prefill, then first calls from a read-only installed wheel. Results go to $OUT (or ./out).
source "$(dirname "$0")/gpu_common.sh"
for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | tail -1 || exit 1; done
gpu=$($py -c "from pbs_tune.profile.target import present_gpu; print(present_gpu())")
$py -m pbs_tune.bench.crossover --profile configs/$gpu.yaml $([ "${UPDATE:-1}" = 1 ] && echo --update) \
  --fixture fixtures/byte-llama --out "$OUT/crossover.json" 2>&1 | grep -v "Warn\|Loading"
tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
install_readonly_wheel
cd /tmp
PYTHONPATH=$root/ab_old $py "$root/scripts/op_ab.py" before >> "$OUT/op_ab.jsonl"
PYTHONPATH=/tmp/site-ro $py "$root/scripts/op_ab.py" after >> "$OUT/op_ab.jsonl"
PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.stages --out "$OUT/stages.json" | tail -8
PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.library --parts firstcall --lengths 32k --label wheel-readonly \
  --out "$OUT/firstcall.json" 2>&1 | tail -4
ls -la "$OUT"
