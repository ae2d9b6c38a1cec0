"""GPU benchmark helper: what Triton builds of each attend launch, and one launch per kernel for a profiler.

Why: the attend kernel grid (bench/kernels.py) says how fast each launch runs; this says why. Parts:
  builds   per launch label, the attend kernel compiled for this GPU's arch (bf16, D 128, block 128):
           shared memory, registers, spills, and in its PTX the bulk tensor copies (TMA) and wgmma
           instructions, or why it does not build.
  profile  each launch's attend kernel run 3 times on a random block list at --seqlen and --density
           (32/8 heads): run it under Nsight Compute (`ncu --kernel-name _attend_fwd --launch-skip 2`),
           which takes the last launch of each kernel.
"""
import argparse
import json

import torch

from ..measure.timing import env_info, write_json
from ..profile.launch import LaunchConfig
from ..seqlen import parse_length

LAUNCHES = ("128x128w8s3,128x128w8s2,128x64w4s3,128x128w8s3-tma,128x128w8s2-tma,128x128w8s3-tma-p1,"
            "128x128w8s3-tma-p2")


def part_builds(launches) -> list:
    from ..kernels.aot import compile_attend
    major, minor = torch.cuda.get_device_capability(0)
    rows = []
    for label in launches:
        lc = LaunchConfig.parse(label)
        try:
            kern = compile_attend(arch=10 * major + minor, dtype="bfloat16", head_dim=128, block_size=128,
                                  **lc.as_dict())
            kern._init_handles()
        except Exception as exc:  # a variant this Triton or GPU cannot build: say so, go on
            first = (str(exc).splitlines() or [""])[0][:150]
            rows.append(dict(launch=label, builds=False, error=f"{type(exc).__name__}: {first}"))
        else:
            ptx = kern.asm["ptx"]
            rows.append(dict(launch=label, builds=True, shared=kern.metadata.shared, regs=kern.n_regs,
                             spills=kern.n_spills, bulk_tensor=ptx.count("cp.async.bulk.tensor"),
                             wgmma=ptx.count("wgmma.mma_async")))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def part_profile(launches, n, density):
    from ..op.pbs_attention import attend_blocks
    from ..op.permutation import identity_permutation
    from ..op.selection import block_list_from_mask
    from .kernels import random_blocks
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
    perm = identity_permutation(k, v)
    blocks = block_list_from_mask(random_blocks(1, 32, n, 128, density, "cuda"), perm.positions, 128)
    for label in launches:
        for _ in range(3):
            attend_blocks(q, perm, blocks, launch=LaunchConfig.parse(label))
    torch.cuda.synchronize()
    print(f"n={n} density={blocks.density():.3f} launches={','.join(launches)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="builds")
    ap.add_argument("--launches", default=LAUNCHES, help="LaunchConfig labels")
    ap.add_argument("--seqlen", default="8k", help="profile: tokens")
    ap.add_argument("--density", type=float, default=0.2, help="profile: kept share of causal blocks")
    ap.add_argument("--out", default=None, help="builds: JSON file")
    args = ap.parse_args()
    launches = args.launches.split(",")
    if "builds" in args.parts:
        res = dict(env=env_info(), builds=part_builds(launches))
        if args.out:
            write_json(args.out, res)
    if "profile" in args.parts:
        part_profile(launches, parse_length(args.seqlen), args.density)


if __name__ == "__main__":
    main()
