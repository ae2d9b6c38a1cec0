#!/usr/bin/env bash
# Issue 32 on a GPU machine, in one run: rebuild the shipped kernel libraries (the kernel sources
# changed), check them against the JIT, time load_profile() in fresh processes from a read-only
# wheel with where its time goes, load the shipped profiles from a source tree on PYTHONPATH, and
# serve a fixture plan made by `pbs-tune plan` with no JIT call. PART=libraries|plan|all (default all).
source "$(dirname "$0")/gpu_common.sh"
part=${PART:-all}
if [ "$part" != plan ]; then
  bash scripts/bench_library.sh 2>&1 | tail -40
  # Where load_profile()'s time goes, in a fresh process from the read-only wheel (cProfile, top 25).
  (cd /tmp && PYTHONPATH=/tmp/site-ro $py - <<'PY' 2>&1 | tee "$OUT/load_profile_cprofile.txt"
import cProfile, pstats, time, torch
torch.cuda.init(); torch.randn(8, device="cuda").sum().item()
from pbs_tune import load_profile
t0 = time.perf_counter()
prof = cProfile.Profile(); prof.enable(); p = load_profile(); prof.disable()
print("load_profile_s", round(time.perf_counter() - t0, 4), p.load_times)
pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
PY
  )
  # A source tree on PYTHONPATH, nothing installed: the shipped profile and its library, no JIT.
  $py -m pip uninstall -q -y pbs-tune 2>/dev/null
  (cd /tmp && PYTHONPATH=$root $py - <<'PY' 2>&1 | tee "$OUT/source_tree.txt"
import json, torch, pbs_tune
from pbs_tune.kernels import launch
prof = pbs_tune.load_profile()
q, k, v = (torch.randn(1, h, 32768, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
pbs_tune.tuned_attention(q, k, v, profile=prof); torch.cuda.synchronize()
print(json.dumps(dict(path=prof.path, library=prof.library, bound=launch.library_size(), jit_calls=launch.jit_calls,
                      stats=pbs_tune.stats(), pbs_tune_at=pbs_tune.__file__)))
PY
  )
fi
if [ "$part" != libraries ]; then
  $py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  rm -f /tmp/plan.yaml
  $py -m pbs_tune plan --model fixtures/byte-llama --seqlen ${PLAN_SEQLEN:-32k} --probes 0 --profile /tmp/plan.yaml 2>&1 \
    | tail -45 | tee "$OUT/plan.txt"
  cp /tmp/plan.yaml "$OUT/plan.yaml"
  # Serve the plan in a fresh process: the fixture at the plan's length and at lengths that are not a
  # multiple of 16 blocks, chunked prefill too; every kernel must come from the plan's library.
  $py - <<'PY' 2>&1 | tee "$OUT/plan_served.txt"
import json, logging, os, torch, transformers, pbs_tune
from pbs_tune.kernels import launch
logging.basicConfig(level=logging.WARNING)
prof = pbs_tune.load_profile(path="/tmp/plan.yaml")
model = transformers.AutoModelForCausalLM.from_pretrained("fixtures/byte-llama", dtype=torch.bfloat16).cuda().eval()
n0 = prof.entries[0].seqlen
pbs_tune.apply(model, prof, min_chunk=2048)
rows = []
with torch.no_grad():
    for n in (n0, n0 + 1000, n0 + 3 * 128 + 77):
        model(torch.randint(1, 255, (1, n), device="cuda"), logits_to_keep=1)
        rows.append(dict(n=n, jit_calls=launch.jit_calls))
    cache = transformers.DynamicCache()
    ids = torch.randint(1, 255, (1, n0 + 4096), device="cuda")
    for a in range(0, ids.shape[1], 8192):
        model(ids[:, a:a + 8192], past_key_values=cache, use_cache=True, logits_to_keep=1)
    rows.append(dict(chunked=ids.shape[1], jit_calls=launch.jit_calls))
print(json.dumps(dict(bound=launch.library_size(), library=prof.library, rows=rows, stats=pbs_tune.stats(),
                      layers={i: ("dense" if c == "dense" else c[0].estimator) for i, c in prof.entries[0].layers.items()})))
PY
fi
ls -la "$OUT"
