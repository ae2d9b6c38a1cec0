#!/usr/bin/env bash
# Issue 34 on one GPU: the 8-bit attend modes (python -m pbs_tune.bench.precision), from the checkout
# installed as a read-only wheel and run from /tmp (nothing depends on the checkout's place).
#   STEP=why     issue 45: the attend kernels' 8-bit modes against 16-bit, before (ab_head/, main at
#                the start of the issue) and ab_magic/ (the changes tried: a104843 plus the int32 conversion by bits), both carried: the kernel part of
#                the bench (8k/32k/128k, densities 0.1-0.6) and Nsight Compute's instruction and warp
#                sections where it reads counters (SASS opcode counts need no GPU: sass_mix.py)
#   STEP=kernel  a smoke check of every mode on both kernels first (a bug costs seconds); the sm_90
#                library rebuilt natively for the shipped H100/H200 profiles (the kernel sources
#                changed), copied to $OUT as sm_90.tar.gz; then the attend kernel per mode
#   STEP=op      threshold and precision chosen together per workload family on one seed, judged on
#                the next (32k, 128k), against the 16-bit paper default and SDPA cuDNN / flash
#   STEP=plan    per-layer plans over permute x estimator x precision on the trained fixture at 32k,
#                against the paper default and dense (LM loss on 32 texts, retrieval on 200 prompts)
source "$(dirname "$0")/gpu_common.sh"
if [ -d .whl ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
[ "${STEP:-kernel}" = why ] || install_readonly_wheel
cd /tmp
run() { PYTHONPATH=/tmp/site-ro:${PYTHONPATH:-} $py "$@"; }
case "${STEP:-kernel}" in
  why)
    deadline=${DEADLINE:-540}
    for ver in new head; do
      src=$root/ab_magic; [ $ver = head ] && src=$root/ab_head
      [ -d "$src/pbs_tune" ] || { echo "no $src/pbs_tune"; continue; }
      [ $SECONDS -lt $((deadline - 150)) ] || { echo "skip bench $ver: ${SECONDS}s"; continue; }
      PYTHONPATH=$src timeout $((deadline - SECONDS - 60)) $py -m pbs_tune.bench.precision --parts kernel \
        --lengths ${LENGTHS:-8k,32k,128k} --out "$OUT/precision_kernel_$ver.json" 2>&1 | grep -v FP_FUSION | tail -16
      echo "bench $ver done: ${SECONDS}s"
    done
    for mode in input int8 int8+fp8; do
      [ $SECONDS -lt $((deadline - 60)) ] || break
      PRECISION=$mode PYTHONPATH=$root/ab_magic timeout 90 ncu --clock-control none --kernel-name regex:_attend_fwd \
        --launch-skip 2 --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section InstructionStats --section WarpStateStats --print-details all \
        $py "$root/scripts/profile_attend.py" 32768 0.3 128x128w8s3 128x128w8s3-tma > "$OUT/ncu_${mode/+/_}.txt" 2>&1
      grep -E "==ERROR==|LibraryNotLoaded|Duration|Issue Slots Busy|Executed Ipc A|Pipe|Stall" "$OUT/ncu_${mode/+/_}.txt" | head -20
    done
    echo "why done: ${SECONDS}s"
    ;;
  kernel)
    run - <<'PY' || exit 1
import torch
from pbs_tune import LaunchConfig, pbs_attention
from pbs_tune.measure.metrics import dense_reference, rel_l2
from pbs_tune.measure.workloads import make_qkv
q, k, v = make_qkv("mixed", seqlen=4096 + 77, device="cuda", seed=3)
ref = dense_reference(q, k, v)
for launch in (LaunchConfig(128, 128, 8, 3), LaunchConfig(128, 128, 8, 2, tma=True)):
    for p in ("input", "int8", "int8+fp8"):
        for thr in (1.0, 0.9):
            out = pbs_attention(q, k, v, block_size=128, segment_size=256, threshold=thr, precision=p, launch=launch)
            print(launch.label(), p, thr, round(rel_l2(out, ref), 5), flush=True)
            assert rel_l2(out, ref) < 0.2, "8-bit output far from dense: stop"
PY
    (cd "$root" && rm -rf cache/sm_90 && for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | grep -v -i warn | tail -2; done
     tar czf "$OUT/sm_90.tar.gz" cache/sm_90)
    run -m pbs_tune.bench.precision --parts kernel --out "$OUT/precision_kernel.json" 2>&1 | tail -25
    ;;
  op)
    run -m pbs_tune.bench.precision --parts op --out "$OUT/precision_op.json" 2>&1 | tail -14
    ;;
  plan)
    precisions=$(run -c "import torch; from pbs_tune.profile.params import precisions_on as p; \
c = torch.cuda.get_device_capability(); print(','.join(p(c[0] * 10 + c[1])))")
    run -m pbs_tune.bench.per_head --parts model --model "$root/fixtures/byte-llama" --seqlen 32k --sequences 32 \
        --prompts 200 --precisions "$precisions" --out "$OUT/precision_fixture_plans.json" 2>&1 | tail -12
    ;;
esac
ls -la "$OUT"
