"""GPU benchmark of the ahead-of-time kernel library: `python -m pbs_tune.bench.library`.

Parts (--parts):
  identity   in one process, every config of the profile at --lengths: output of the library
             launch vs Triton's JIT (bit-identical?), calls that fell back to the JIT, and
             the op's steady-state latency each way (do_bench median).
  speed      the profile's entry (library kernels) and the paper default against SDPA cuDNN and flash
             at --lengths, on a held-out seed of the mixed workload (do_bench median).
  firstcall  fresh processes (--runs per length) from the pbs_tune their environment finds:
             `import pbs_tune` time (torch excluded), load_profile() time, first and steady
             call times, kernels run through the JIT, files written to an empty Triton cache.
             PBS_BENCH_WARM_TORCH=1 first runs a matmul and a sort, as a serving process has.
  cprofile   where load_profile()'s time goes: cProfile in one fresh process, the top 25 calls.
  manifests  per library under --cache (default the checkout's cache/): what built it and how many of
             its kernels a GPU verified (stamped by `pbs-tune compile` / `pbs-tune verify`).
  smoke      the library smoke test's verdict over the parts already in --out (firstcall and
             identity): loaded with the library, no JIT call, no warning, bit-identical, the
             slowest load_profile() and first call at 32k. Run it after every change to kernels/.
"""
import argparse
import json
import os
import sys

import torch


def _qkv(n, heads=32, kv_heads=8, head_dim=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(1, h, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
            for h in (heads, kv_heads, kv_heads))


def part_identity(res, lengths, profile_path):
    from ..kernels import launch
    from ..measure.timing import median_ms
    from ..op.pbs_attention import pbs_attention
    from ..runtime.loader import load_profile
    prof = load_profile("auto", profile_path)
    bound = launch.library_size()
    rows = []
    for n in lengths:
        q, k, v = _qkv(n)
        entry = prof.pick(n, gpu=prof.gpu, heads=32, kv_heads=8, head_dim=128, dtype="bfloat16")
        p, lc = entry.params, entry.launch

        def op():
            return pbs_attention(q, k, v, p, launch=lc)
        jit_before = launch.jit_calls
        out_lib = op()
        lib_ms = median_ms(op)
        row = dict(n=n, config=entry.describe(), jit_calls_with_library=launch.jit_calls - jit_before,
                   library_ms=lib_ms)
        with launch.using():  # no kernel bound: Triton's JIT
            out_jit = op()
            row["jit_ms"] = median_ms(op)
        row["bit_identical"] = bool(torch.equal(out_lib, out_jit))
        row["max_abs_diff"] = float((out_lib.float() - out_jit.float()).abs().max())
        row["library_over_jit"] = row["library_ms"] / row["jit_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        q = k = v = out_lib = out_jit = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["identity"] = dict(profile=prof.path, library=prof.library, bound_kernels=bound, rows=rows)


def part_speed(res, lengths, profile_path, seed=7):
    from ..kernels import launch
    from ..measure.timing import dense_sdpa_ms, median_ms
    from ..measure.workloads import make_qkv
    from ..op.pbs_attention import pbs_attention
    from ..profile.launch import default_launch
    from ..profile.params import PbsParams
    from ..profile.target import Target
    from ..runtime.loader import load_profile
    prof = load_profile("auto", profile_path)
    default = (PbsParams(128, 256, 0.9), default_launch(128, 128, Target.present().capability))
    rows = []
    for n in lengths:
        q, k, v = make_qkv("mixed", seqlen=n, device="cuda", seed=seed)
        entry = prof.pick(n, gpu=prof.gpu, heads=32, kv_heads=8, head_dim=128, dtype="bfloat16")
        jit_before = launch.jit_calls
        with torch.no_grad():
            row = dict(n=n, seed=seed, workload="mixed", entry=entry.describe(),
                       entry_ms=median_ms(lambda: pbs_attention(q, k, v, entry.params, launch=entry.launch)))
            row["entry_jit_calls"] = launch.jit_calls - jit_before  # the default's launch may not be in the library
            row.update(default_ms=median_ms(lambda: pbs_attention(q, k, v, default[0], launch=default[1])),
                       cudnn_ms=dense_sdpa_ms(q, k, v, "cudnn"), flash_ms=dense_sdpa_ms(q, k, v, "flash"))
        row.update(entry_x_cudnn=row["cudnn_ms"] / row["entry_ms"],
                   default_x_cudnn=row["cudnn_ms"] / row["default_ms"], entry_x_flash=row["flash_ms"] / row["entry_ms"],
                   default_x_flash=row["flash_ms"] / row["default_ms"])
        rows.append(row)
        print(json.dumps(row), flush=True)
        q = k = v = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["speed"] = dict(profile=prof.path, library=prof.library, bound_kernels=launch.library_size(), rows=rows)


CHILD = r"""
import json, logging, os, sys, tempfile, time
import torch
n, label = int(sys.argv[1]), sys.argv[2]
said = []  # what pbs-tune warns about while loading and running
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: said.append(record.getMessage()[:300])
logging.getLogger("pbs_tune").addHandler(handler)
tdir = tempfile.mkdtemp(prefix="triton-empty-")   # an empty Triton cache: any compile shows up here
os.environ["TRITON_CACHE_DIR"] = tdir
torch.cuda.init()
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16, generator=g) for h in (32, 8, 8))
if os.environ.get("PBS_BENCH_WARM_TORCH") == "1":
    # A serving process has already run its model: torch's cuBLAS and sort kernels are loaded.
    x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    (x @ x).float().sort(-1)
torch.cuda.synchronize()
t0 = time.perf_counter()
import pbs_tune
from pbs_tune import load_profile, tuned_attention  # pbs_tune's names load on first use: count them here
t_import = time.perf_counter() - t0
from pbs_tune.kernels import launch
t0 = time.perf_counter()
prof = pbs_tune.load_profile()
t_load = time.perf_counter() - t0
t0 = time.perf_counter()
pbs_tune.tuned_attention(q, k, v, profile=prof)
torch.cuda.synchronize()
first = time.perf_counter() - t0
steady = []
for _ in range(5):
    t0 = time.perf_counter()
    pbs_tune.tuned_attention(q, k, v, profile=prof)
    torch.cuda.synchronize()
    steady.append(time.perf_counter() - t0)
steady = sorted(steady)[2]
print(json.dumps(dict(label=label, n=n, profile=prof.path, library=prof.library, bound_kernels=launch.library_size(),
                      import_s=t_import, load_profile_s=t_load, first_s=first, steady_s=steady,
                      first_minus_steady_s=first - steady, jit_calls=launch.jit_calls,
                      triton_cache_files_written=sum(len(f) for _, _, f in os.walk(tdir)),
                      load_times=prof.load_times, triton_imported="triton" in sys.modules,
                      pbs_tune_at=os.path.dirname(pbs_tune.__file__), cwd=os.getcwd(), stats=pbs_tune.stats(),
                      warnings=said)))
"""


def part_firstcall(res, lengths, label, runs, cwd):
    """`runs` fresh processes per length, started in `cwd` with the environment as given."""
    import subprocess
    rows = res.setdefault("firstcall", [])
    for n in lengths:
        for run in range(runs):
            out = subprocess.run([sys.executable, "-c", CHILD, str(n), label], cwd=cwd, capture_output=True,
                                 text=True, timeout=600)
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            row = json.loads(lines[-1]) if lines else dict(label=label, n=n, error=out.stderr[-2000:])
            row["run"] = run + 1
            row["log"] = out.stderr[-600:]
            rows.append(row)
            print(json.dumps(row), flush=True)


CPROFILE = r"""
import cProfile, pstats, time, torch
torch.cuda.init(); torch.randn(8, device="cuda").sum().item()
from pbs_tune import load_profile
t0 = time.perf_counter()
prof = cProfile.Profile(); prof.enable(); p = load_profile(); prof.disable()
print("load_profile_s", round(time.perf_counter() - t0, 4), p.load_times)
pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
"""


def part_cprofile(res, cwd):
    import subprocess
    out = subprocess.run([sys.executable, "-c", CPROFILE], cwd=cwd, capture_output=True, text=True, timeout=600)
    res["cprofile"] = out.stdout[-20000:] or out.stderr[-2000:]
    print(res["cprofile"], flush=True)


def part_manifests(res, cache):
    import glob
    rows = []
    for path in sorted(glob.glob(os.path.join(cache, "sm_*", "manifest.json"))):
        with open(path) as f:
            man = json.load(f)
        stamped = [r for r in man["kernels"] if r.get("verified")]
        rows.append(dict(library=os.path.dirname(path), built_with=man.get("built_with"), kernels=len(man["kernels"]),
                         verified=len(stamped), how=sorted({r["verified"]["how"] for r in stamped})))
        print(json.dumps(rows[-1]), flush=True)
    res["manifests"] = rows


def part_smoke(res):
    fc, ident = res.get("firstcall", []), res.get("identity", {}).get("rows", [])
    ok = dict(loaded_with_library=bool(fc) and all(r.get("bound_kernels", 0) > 0 for r in fc),
              no_jit_calls=all(r.get("jit_calls", 1) == 0 for r in fc) and
              all(r["jit_calls_with_library"] == 0 for r in ident),
              no_warnings=all(not r.get("warnings") for r in fc),
              bit_identical=bool(ident) and all(r["bit_identical"] for r in ident),
              load_profile_s=max((r.get("load_profile_s", 99) for r in fc), default=None),
              first_call_32k_ms=max((r.get("first_s", 9) * 1e3 for r in fc if r.get("n") == 32768), default=None),
              pbs_tune_at=sorted({r.get("pbs_tune_at", "?") for r in fc}))
    res["smoke"] = ok
    print("smoke:", json.dumps(ok), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="identity")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--lengths", default="32k,128k")
    ap.add_argument("--label", default="")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cwd", default="/")
    ap.add_argument("--cache", default="cache", help="manifests: the folder holding the sm_* libraries")
    ap.add_argument("--out", default=None, help="JSON file (appended to when it exists)")
    args = ap.parse_args()
    from ..seqlen import parse_length
    from ..measure.timing import env_info, write_json
    res = dict(env=env_info(), args=vars(args), argv=sys.argv)
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            res = json.load(f)
    lengths = [parse_length(x) for x in args.lengths.split(",")]
    try:
        if "identity" in args.parts:
            part_identity(res, lengths, args.profile)
        if "speed" in args.parts:
            part_speed(res, lengths, args.profile)
        if "firstcall" in args.parts:
            part_firstcall(res, lengths, args.label, args.runs, args.cwd)
        if "cprofile" in args.parts:
            part_cprofile(res, args.cwd)
        if "manifests" in args.parts:
            part_manifests(res, args.cache)
        if "smoke" in args.parts:
            part_smoke(res)
    finally:
        if args.out:
            write_json(args.out, res)


if __name__ == "__main__":
    main()
