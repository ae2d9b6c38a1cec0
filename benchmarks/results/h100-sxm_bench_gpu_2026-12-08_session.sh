# What ran on the H100 on 2026-12-08 (3 calls), kept as it ran. Call 1: `bash gpu_session.sh`; call 2:
# `SET=2 BUDGET=420 bash gpu_session.sh`; call 3: `timeout -k 5 170 env OUT=/tmp/r3 PARTS=firstcall bash scripts/bench_gpu.sh libraries`.
# Two flaws of this script, harmless to the figures: the checkout line's "(not the developer's path)" is
# wrong (the device copy sat at /work/main too; the smoke parts ran from a read-only wheel in /tmp, cwd /),
# and "ended: exit" prints $? after $(date) (always 0): the logs' "Terminated" marks a step its cap cut.
#!/usr/bin/env bash
# Session 20's one GPU call for issue 47: each step of scripts/bench_gpu.sh on the GPU, trimmed to fit one
# call (a time cap per step; a step cut short keeps what it wrote). Results: $OUT/results.tgz, $OUT/session.log.
set -u
cd "$(dirname "$0")" || exit 2
R=/tmp/res
rm -rf "$R" && mkdir -p "$R"
start=$(date +%s)
BUDGET=${BUDGET:-400}
{
  echo "== checkout at $PWD (not the developer's path), $(date -u '+%F %T') UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__, "cuda", torch.version.cuda)'
  step() {  # step SECONDS STEP [VAR=VALUE ...]
    local cap=$1 name=$2 left
    shift 2
    left=$((BUDGET - ($(date +%s) - start)))
    [ "$cap" -le "$left" ] || cap=$left
    [ "$cap" -ge 20 ] || { echo "== $name $*: no time left, not run"; return; }
    echo "== $(date +%T) bench_gpu.sh $name $* (at most $cap s)"
    timeout -k 10 "$cap" env OUT="$R" "$@" bash scripts/bench_gpu.sh "$name"
    echo "== $(date +%T) $name ended: exit $?"
  }
  if [ "${SET:-1}" = 1 ]; then
    step 120 libraries PARTS=smoke RUNS=1
    step 100 op PARTS=knobs KNOBS=default
    step 60 tuning PARTS=check
    step 50 chunks PARTS=smoke,launches
    step 40 traffic PARTS=shapes,stages
    step 40 kernels PARTS=grid LENGTHS=32k LAUNCHES=128x128w8s3,128x128w8s3-tma
  else  # a second call on the warm machine: the steps and parts the first left out
    step 150 models PARTS=fixture
    step 120 chunks PARTS=families,breakdown
    step 80 traffic PARTS=traffic
    step 60 kernels PARTS=builds
  fi
  echo "== done after $(($(date +%s) - start)) s"
} 2>&1 | tee "$R/session.log"
tar czf "${OUT:-/tmp}/results.tgz" -C "$R" .
cp "$R/session.log" "${OUT:-/tmp}/session.log"
