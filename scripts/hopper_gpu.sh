#!/usr/bin/env bash
# On a Hopper GPU, one run: what Triton builds of the Hopper attend kernel, GPU correctness of
# every variant, the kernels grid (8k/32k/128k x density 0.05/0.2/0.5/1.0: portable and Hopper
# kernels, FlexAttention, SDPA cuDNN and flash), then (RELAUNCH=1) this GPU's shipped profile
# re-timed over launches, both kernel libraries rebuilt and the library checked against the JIT
# in fresh processes (GRID=0, RELAUNCH=0, LIBRARY=0 skip parts). LAUNCHES overrides the grid's configs; results go to $OUT (or ./out).
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
LAUNCHES=${LAUNCHES:-128x128w8s3,128x128w8s2,128x64w4s3,128x128w8s3-tma,128x128w8s2-tma,128x128w8s3-tma-p1,128x128w8s3-tma-p2}
$py - "$LAUNCHES" <<'PY' 2>&1 | grep -v -i warn | tee "$OUT/hopper_builds.txt"
import sys
import torch
from pbs_tune import LaunchConfig
from pbs_tune.kernels.aot import compile_attend
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "triton", __import__("triton").__version__)
for label in sys.argv[1].split(","):
    lc = LaunchConfig.parse(label)
    try:
        k = compile_attend(arch=90, dtype="bfloat16", head_dim=128, block_size=128, **lc.as_dict())
        k._init_handles()
    except Exception as exc:
        print(f"{label}: does not build: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
        continue
    ptx = k.asm["ptx"]
    print(f"{label}: shared {k.metadata.shared} regs {k.n_regs} spills {k.n_spills} "
          f"bulk_tensor {ptx.count('cp.async.bulk.tensor')} wgmma {ptx.count('wgmma.mma_async')}")
PY
if [ "${GRID:-1}" = 1 ]; then
  $py -m pbs_tune.bench.kernels --parts checks,masks --lengths 8k,32k,128k --launches "$LAUNCHES" \
    ${NO_FLEX:+--no-flex} --out "$OUT/kernels_grid.json" 2>&1 | grep -v -i "warn" | grep -v '^{' | tail -40
fi
gpu=$($py -c "from pbs_tune.profile.target import detect_gpu; print(detect_gpu())")
if [ "${RELAUNCH:-1}" = 1 ]; then  # needs optuna (the tuner's space)
  $py -m pbs_tune relaunch --profile configs/$gpu.yaml --out configs/$gpu.yaml --no-compile 2>&1 | grep -v -i warn \
    | tee "$OUT/relaunch.txt"
fi
if [ "${LIBRARY:-1}" = 1 ]; then
  for p in ${LIBS:-h100-sxm h200-sxm}; do $py -m pbs_tune compile --profile configs/$p.yaml 2>&1 | grep -v -i warn || exit 1; done
  $py -m pbs_tune.bench.library --parts identity --profile configs/$gpu.yaml --lengths 8k,32k,128k \
    --out "$OUT/library.json" 2>&1 | grep -v -i warn | tail -8
  $py -m pbs_tune.bench.library --parts firstcall --profile "$PWD/configs/$gpu.yaml" --lengths 8k,32k --runs 2 \
    --label relaunched --out "$OUT/library.json" 2>&1 | grep -v -i warn | tail -8
  tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/h100-sxm.yaml configs/h200-sxm.yaml
fi
ls -la "$OUT"
