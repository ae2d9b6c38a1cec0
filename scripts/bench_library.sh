#!/usr/bin/env bash
# On a GPU machine: build the kernel libraries of the shipped profiles, check them against the JIT,
# then time first calls from a read-only installed wheel, a relocated read-only checkout and the
# JIT fallback, each in fresh processes started outside the checkout. Results go to $OUT (or ./out).
source "$(dirname "$0")/gpu_common.sh"
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
if [ "${BUILD:-1}" = 1 ]; then  # BUILD=0: use the libraries in the tree, as shipped
  for p in h100-sxm h200-sxm; do $py -m pbs_tune compile --profile configs/$p.yaml || exit 1; done
  tar czf "$OUT/libraries.tar.gz" cache/sm_*/ configs/*.yaml
fi
# The shipped profile of the GPU present (an H100's or an H200's), against Triton's JIT.
[ "${IDENTITY:-1}" = 1 ] && $py -m pbs_tune.bench.library --parts identity --out "$OUT/aot.json"
# An installed wheel, read-only, away from the checkout.
rm -rf /tmp/site-ro /tmp/wheel /tmp/moved
$py -m pip wheel -q --no-deps --no-build-isolation -w /tmp/wheel . 2>&1 | tail -2
$py -m pip uninstall -q -y pbs-tune
$py -m pip install -q --no-deps --target /tmp/site-ro /tmp/wheel/*.whl && chmod -R a-w /tmp/site-ro
touch /tmp/marker; sleep 1
cd /tmp  # nothing of the checkout on the path: the wheel alone
PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.library --parts firstcall --label wheel-readonly --out "$OUT/aot.json"
# As in a serving process, whose model has already run cuBLAS and sort kernels.
PBS_BENCH_WARM_TORCH=1 PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.library --parts firstcall --lengths 32k \
  --label wheel-readonly-torch-warm --out "$OUT/aot.json"
PBS_TUNE_KERNELS=jit PYTHONPATH=/tmp/site-ro $py -m pbs_tune.bench.library --parts firstcall --label jit-fallback \
  --out "$OUT/aot.json"
PYTHONPATH=/tmp/site-ro $py -X importtime -c "import pbs_tune" 2> /tmp/importtime.txt
sort -t'|' -k2 -n -r /tmp/importtime.txt | head -25 > "$OUT/importtime.txt"
cd - >/dev/null
# A checkout at another path, installed editable, then made read-only.
mkdir -p /tmp/moved && cp -r . /tmp/moved/pbs-tune && rm -rf /tmp/moved/pbs-tune/out
(cd /tmp/moved/pbs-tune && $py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2)
chmod -R a-w /tmp/moved/pbs-tune; touch /tmp/marker2; sleep 1
$py -m pbs_tune.bench.library --parts firstcall --lengths 32k --label checkout-moved-readonly --out "$OUT/aot.json"
{ echo "files changed under the installed wheel during its runs: $(find /tmp/site-ro -newer /tmp/marker | wc -l)"
  echo "files changed under the moved checkout during its runs: $(find /tmp/moved -newer /tmp/marker2 | wc -l)"
  echo "files under ~/.triton changed since the wheel runs began: $(find ~/.triton -newer /tmp/marker 2>/dev/null | wc -l)"
} | tee "$OUT/written.txt"
ls -la "$OUT"
