#!/usr/bin/env bash
# The library smoke test, on a GPU, in one call (about 2-3 minutes): run it for every change to
# pbs_tune/kernels/ or runtime/library_* before resolving the issue that made it. From a read-only
# wheel installed away from the checkout: the shipped profile of the GPU present loads with its
# library (fresh processes: load_profile() time, warnings, first-call times, 0 JIT calls), its
# entries' output is compared with the JIT at 32k and 128k (bit-identical?), and the op is timed on a
# held-out seed against SDPA cuDNN and flash. Results: $OUT/smoke.json.
source "$(dirname "$0")/gpu_common.sh"
install_readonly_wheel
cd /tmp
export PYTHONPATH=/tmp/site-ro
$py -m pbs_tune.bench.library --parts firstcall --lengths 32k,128k --runs ${RUNS:-2} --label wheel-readonly \
  --out "$OUT/smoke.json" 2>&1 | grep -v FP_FUSION
$py -m pbs_tune.bench.library --parts identity,speed --lengths 32k,128k --out "$OUT/smoke.json" 2>&1 \
  | grep -v FP_FUSION
$py - "$OUT/smoke.json" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
fc = res.get("firstcall", [])
ok = dict(loaded_with_library=all(r.get("bound_kernels", 0) > 0 for r in fc) and bool(fc),
          no_jit_calls=all(r.get("jit_calls", 1) == 0 for r in fc) and all(
              r["jit_calls_with_library"] == 0 for r in res.get("identity", {}).get("rows", [])),
          no_warnings=all(not r.get("warnings") for r in fc),
          bit_identical=all(r["bit_identical"] for r in res.get("identity", {}).get("rows", [])) and
          bool(res.get("identity")),
          load_profile_s=max((r.get("load_profile_s", 99) for r in fc), default=None),
          first_call_32k_ms=max((r.get("first_s", 9) * 1e3 for r in fc if r.get("n") == 32768), default=None))
print("smoke:", json.dumps(ok))
res["smoke"] = ok
json.dump(res, open(sys.argv[1], "w"), indent=1)
PY
cd - >/dev/null
