#!/usr/bin/env bash
# Issue 35 on a GPU machine: Qwen2.5-Coder-0.5B (staged in /tmp/qwen by scripts/stage_qwen.sh) as
# the judge. Needs optuna's and gguf's wheels carried in .whl (see the device README).
#   bash scripts/qwen_judge_gpu.sh sweep    # the model as a bf16 folder; captures of 6 layers on
#                                           # calibration and held-out text; sweeps for 14/2/64 at
#                                           # 16k and 32k into the shipped profile (and its library)
#   bash scripts/qwen_judge_gpu.sh plan     # per-layer plans at 16k and 32k (pbs-tune plan)
#   LENGTHS=32k bash scripts/qwen_judge_gpu.sh judge    # python -m pbs_tune.bench.judge (default 16k,32k,
#                                           # 400 prompts a task, VARIANTS default paper,default,shipped[,plan])
#   bash scripts/qwen_judge_gpu.sh oracle   # python -m pbs_tune.bench.oracle on its layers, with the plan
# Results land in $OUT; the machine keeps /tmp between the stages while it stays warm.
source "$(dirname "$0")/gpu_common.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$root
GGUF=/tmp/qwen/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
MODEL=/tmp/qwen-hf
GPU=$($py -c "from pbs_tune.profile.target import detect_gpu; print(detect_gpu())")
LAYERS=2,6,10,14,18,22
set -o pipefail
case "${1:-}" in
  sweep)
    [ -f $MODEL/config.json ] || $py scripts/gguf_to_folder.py $(dirname $GGUF) $(basename $GGUF) $MODEL || exit 1
    mkdir -p /tmp/text /tmp/cap
    $py - <<EOF || exit 1
from pbs_tune.models.fixtures import python_sources
for role in ("calibration", "train"):  # the judge reads the evaluation split: neither of these
    with open(f"/tmp/text/{role}.py", "w") as out:
        size = 0
        for path in python_sources(role):
            try:
                text = open(path, encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            out.write(f"# file: {path}\n{text}\n"); size += len(text)
            if size > 600_000:
                break
    print(role, size, "characters")
EOF
    for role in calibration train; do
      $py -m pbs_tune capture --model $MODEL --text /tmp/text/$role.py --seqlen 32k --layers $LAYERS \
          --out /tmp/cap/$role.safetensors --quiet || exit 1
    done
    # the shipped store copied to /tmp/shipped (the next call re-sends the checkout over configs/)
    rm -rf /tmp/shipped && mkdir -p /tmp/shipped/configs /tmp/shipped/cache
    cp configs/$GPU.yaml /tmp/shipped/configs/ && cp -r cache/sm_90 /tmp/shipped/cache/
    for n in 16k 32k; do
      $py -m pbs_tune sweep --gpu auto --seqlen $n --calib /tmp/cap/calibration.safetensors \
          --holdout-calib /tmp/cap/train.safetensors --trials ${TRIALS:-14} --storage sqlite:////tmp/qwen-sweeps.db \
          --profile /tmp/shipped/configs/$GPU.yaml 2>&1 | tee -a "$OUT/sweep.txt" | grep -v "^pbs-tune:   "
    done
    cp /tmp/shipped/configs/$GPU.yaml "$OUT/"
    tar czf "$OUT/cache_sm_90.tgz" -C /tmp/shipped cache/sm_90 ;;
  plan)
    rm -f /tmp/plan.yaml
    for n in 16k 32k; do
      $py -m pbs_tune plan --model $MODEL --seqlen $n --profile /tmp/plan.yaml --no-compile 2>&1 \
          | tee -a "$OUT/plan.txt" | tail -30
    done
    cp /tmp/plan.yaml "$OUT/" ;;
  judge)  # VARIANTS (dense always runs): the plan where a plan stage made one, shipped: the stage's
           # sweep, else the checkout's profile
    L=${LENGTHS:-16k,32k}
    V=${VARIANTS:-paper,default,shipped$([ -f /tmp/plan.yaml ] && echo ,plan)}
    extra=""; [ -f /tmp/plan.yaml ] && extra="--plan /tmp/plan.yaml"
    [ -f /tmp/shipped/configs/$GPU.yaml ] && extra="$extra --shipped /tmp/shipped/configs/$GPU.yaml"
    $py -m pbs_tune.bench.judge --model $MODEL $extra --variants $V --lengths $L --prompts ${PROMPTS:-400} \
        --out "$OUT/judge_${L/,/_}.json" 2>&1 | tee "$OUT/judge_${L/,/_}.txt" | grep -v "^pbs_tune" ;;
  oracle)
    for n in 16k 32k; do
      $py -m pbs_tune.bench.oracle --model $MODEL --seqlen $n --plan /tmp/plan.yaml --out "$OUT/oracle_$n.json" \
          2>&1 | tee -a "$OUT/oracle.txt"
    done ;;
  *) echo "usage: bash scripts/qwen_judge_gpu.sh sweep|plan|judge|oracle"; exit 2 ;;
esac
