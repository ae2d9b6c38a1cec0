"""Proof on Hopper of kernels built for other archs: `python -m pbs_tune.bench.ptx_on_hopper`.

An sm_80 or sm_89 cubin cannot run on an H100/H200, but the PTX of the same build can: the CUDA
driver compiles PTX for the GPU present (PTX is forward compatible). For each named profile (A100,
L40S), this compiles the profile's kernels for its arch exactly as `pbs-tune compile --arch` does,
checks that each cubin is byte-identical to the shipped library's (so the PTX is of the shipped build),
loads the PTX through the CUDA driver, runs the whole op with those kernels on random inputs of every
shape of the profile, and compares the output with the same config run by Triton's JIT for sm_90
(the portable kernel). Results are written to --out as JSON.
"""
import argparse
import hashlib
import json

import torch


def ptx_kernels(profile_path, gpu, arch):
    """(bound kernels loaded from PTX, cubins identical to the shipped library?) for `gpu`'s profile."""
    from cuda.bindings import driver

    from ..kernels import launch
    from ..kernels.aot import compile_key
    from ..runtime import cross_build, kernel_library, profiles
    prof = profiles.load(profile_path)
    shipped = kernel_library.read(prof.library)
    functions = {fn.__name__: fn for fn in kernel_library.launched_kernels()}
    kernel_library._ensure_context(driver)
    bound, same = [], []
    for key in cross_build.kernel_keys(profile_path, gpu):
        compiled = compile_key(functions[key[0]], key, arch=arch)
        rec, cubin = kernel_library.record_of(compiled)
        same.append(shipped["files"].get(rec["file"]) == hashlib.sha256(cubin).hexdigest())
        module = kernel_library._check(driver.cuModuleLoadData(compiled.asm["ptx"].encode() + b"\0"), "cuModuleLoadData")
        function = kernel_library._check(driver.cuModuleGetFunction(module, rec["symbol"].encode()),
                                         "cuModuleGetFunction")
        if rec["shared"] > kernel_library._SHARED_DEFAULT:
            kernel_library._opt_in_shared(driver, function)
        bound.append(launch.BoundKernel(kernel_library.record_key(rec), function, rec["threads"], rec["shared"],
                                        tuple(map(tuple, rec["signature"])), tuple(map(tuple, rec["scratch"]))))
    return prof, bound, same


def compare(prof, bound, seqlen, seed=0):
    """Per shape of the profile: the op with the PTX kernels against the JIT's sm_90 build."""
    from .. import pbs_attention
    from ..kernels import launch
    rows = []
    for e in {(e.heads, e.kv_heads, e.head_dim): e for e in prof.entries}.values():
        g = torch.Generator(device="cuda").manual_seed(seed)
        q, k, v = (torch.randn(1, h, seqlen, e.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
                   for h in (e.heads, e.kv_heads, e.kv_heads))
        args = dict(**e.params.op_args(), launch=e.launch)
        launch.clear()
        launch.register(bound)
        jit_before = launch.jit_calls
        out_ptx = pbs_attention(q, k, v, **args)
        torch.cuda.synchronize()
        calls_outside = launch.jit_calls - jit_before
        launch.clear()
        out_jit = pbs_attention(q, k, v, **args)
        diff = (out_ptx.float() - out_jit.float())
        rows.append(dict(shape=f"{e.heads}/{e.kv_heads}/{e.head_dim}", seqlen=seqlen, launch=e.launch.label(),
                         calls_not_from_ptx=calls_outside, bit_identical=bool(torch.equal(out_ptx, out_jit)),
                         max_abs_diff=float(diff.abs().max()),
                         rel_l2=float(diff.norm() / out_jit.float().norm())))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="a100-sxm:80,l40s:89", help="profile:arch pairs")
    ap.add_argument("--lengths", default="16k,32k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from ..runtime import profile_store
    from ..seqlen import parse_length
    from ..timing import env_info, write_json
    res = dict(env=env_info(), argv=vars(args), profiles=[])
    for pair in args.gpus.split(","):
        gpu, arch = pair.split(":")
        path = f"{profile_store.shipped_configs()}/{gpu}.yaml"
        prof, bound, same = ptx_kernels(path, gpu, int(arch))
        one = dict(gpu=gpu, arch=int(arch), kernels=len(bound), cubins_identical_to_shipped=sum(same), rows=[])
        for n in args.lengths.split(","):
            one["rows"] += compare(prof, bound, parse_length(n))
        res["profiles"].append(one)
        print(json.dumps({k: v for k, v in one.items() if k != "rows"}), flush=True)
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
