"""Proof on Hopper of the kernels shipped for other archs: `python -m pbs_tune.bench.ptx_on_hopper`.

An sm_80 or sm_89 cubin cannot run on an H100/H200, but the PTX of the same build can: the CUDA
driver compiles PTX for the GPU present (PTX is forward compatible). Two steps:

  prepare (where the libraries are built, no GPU needed): compile each profile's kernels for its arch
      exactly as `pbs-tune compile` does, check that every cubin is byte-identical to the shipped
      library's (so the PTX is of the shipped build), and write the PTX and the launch records to --dir.
  run (on a Hopper GPU): load that PTX through the CUDA driver, run the whole op with those kernels on
      random inputs of every shape of the profile, and compare the output with the same config run by
      Triton's JIT for sm_90 (the portable kernel); results to --out as JSON.
"""
import argparse
import hashlib
import json
import os

PAIRS = "a100-sxm:80,l40s:89"


def prepare(pairs, folder):
    from ..profile import store as profile_store, profiles
    from ..runtime import cross_build
    from ..runtime.library_bind import read
    from ..runtime.library_build import record_of
    os.makedirs(folder, exist_ok=True)
    for gpu, arch in pairs:
        path = os.path.join(profile_store.shipped_configs(), f"{gpu}.yaml")
        shipped = read(profiles.load(path).library)
        records = []
        for compiled in cross_build.compiled_for_arch(path, gpu, arch):
            rec, cubin = record_of(compiled)
            rec["same_as_shipped"] = shipped["files"].get(rec["file"]) == hashlib.sha256(cubin).hexdigest()
            rec["ptx"] = f"{gpu}-{rec['file'][:-len('.cubin')]}.ptx"
            with open(os.path.join(folder, rec["ptx"]), "w") as f:
                f.write(compiled.asm["ptx"])
            records.append(rec)
        with open(os.path.join(folder, f"{gpu}.json"), "w") as f:
            json.dump(dict(gpu=gpu, arch=arch, built_with=shipped["built_with"], kernels=records), f)
        print(f"{gpu}: {len(records)} kernels for sm_{arch}, {sum(r['same_as_shipped'] for r in records)} "
              f"byte-identical to the shipped library")


def ptx_kernels(index, folder):
    """The records' PTX loaded into the current CUDA context (the driver compiles it), as launchable kernels."""
    from ..runtime.library_bind import bound_kernel
    bound = []
    for rec in index["kernels"]:
        with open(os.path.join(folder, rec["ptx"]), "rb") as f:
            bound.append(bound_kernel(f.read() + b"\0", rec))
    return bound


def compare(prof, bound, seqlen, seed=0):
    """Per shape of the profile: the op with the PTX kernels against the JIT's sm_90 build."""
    import torch

    from ..kernels import launch
    from ..measure.metrics import rel_l2
    from ..op.pbs_attention import pbs_attention
    rows = []
    for e in {(e.heads, e.kv_heads, e.head_dim): e for e in prof.entries}.values():
        g = torch.Generator(device="cuda").manual_seed(seed)
        q, k, v = (torch.randn(1, h, seqlen, e.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
                   for h in (e.heads, e.kv_heads, e.kv_heads))
        args = dict(params=e.params, launch=e.launch)
        with launch.using(bound):
            jit_before = launch.jit_calls
            out_ptx = pbs_attention(q, k, v, **args)
            torch.cuda.synchronize()
            not_from_ptx = launch.jit_calls - jit_before
        with launch.using():
            out_jit = pbs_attention(q, k, v, **args)
        diff = out_ptx.float() - out_jit.float()
        rows.append(dict(shape=f"{e.heads}/{e.kv_heads}/{e.head_dim}", seqlen=seqlen, launch=e.launch.label(),
                         calls_not_from_ptx=not_from_ptx, bit_identical=bool(torch.equal(out_ptx, out_jit)),
                         max_abs_diff=float(diff.abs().max()), rel_l2=rel_l2(out_ptx, out_jit)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(pairs, folder, lengths, out):
    from ..profile import store as profile_store, profiles
    from ..seqlen import parse_length
    from ..measure.timing import env_info, write_json
    res = dict(env=env_info(), profiles=[])
    for gpu, arch in pairs:
        with open(os.path.join(folder, f"{gpu}.json")) as f:
            index = json.load(f)
        prof = profiles.load(os.path.join(profile_store.shipped_configs(), f"{gpu}.yaml"))
        bound = ptx_kernels(index, folder)
        one = dict(gpu=gpu, arch=arch, kernels=len(bound), built_with=index["built_with"],
                   same_as_shipped=sum(r["same_as_shipped"] for r in index["kernels"]), rows=[])
        for n in lengths.split(","):
            one["rows"] += compare(prof, bound, parse_length(n))
        res["profiles"].append(one)
        print(json.dumps({k: v for k, v in one.items() if k != "rows"}), flush=True)
    if out:
        write_json(out, res)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "run"])
    ap.add_argument("--gpus", default=PAIRS, help="profile:arch pairs")
    ap.add_argument("--dir", default=".ptx", help="where prepare writes the PTX and run reads it")
    ap.add_argument("--lengths", default="16k,32k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pairs = [(p.split(":")[0], int(p.split(":")[1])) for p in args.gpus.split(",")]
    if args.step == "prepare":
        prepare(pairs, args.dir)
    else:
        run(pairs, args.dir, args.lengths, args.out)


if __name__ == "__main__":
    main()
