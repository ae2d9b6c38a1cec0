"""Kept for developers: it rewrites the untuned profiles when the space or the default changes.

Write the shipped profiles of GPUs no one here could tune on (A100, L40S, B200): the paper default's
parameters for the common shapes at 16k-128k, with the attend launch chosen for each arch's shared
memory (the largest tiles whose compiled kernel fits, tried in the order below), every entry marked
not tuned. Then `pbs-tune compile --profile configs/<gpu>.yaml` builds their libraries on any machine.

    python scripts/untuned_profiles.py [--gpus a100-sxm,l40s,b200]
"""
import argparse
import os

from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.profile import profiles
from pbs_tune.profile.target import arch_of, shared_memory_of
from pbs_tune.tune.space import TrialConfig, launch_problem

SHAPES = [(32, 8, 128), (28, 4, 128), (64, 8, 128), (8, 1, 128), (14, 2, 64), (9, 3, 64)]
LENGTHS = [16384, 32768, 65536, 131072]
DEFAULT = profiles.PbsParams(block_size=128, segment_size=256, threshold=0.9)
# Tiles as FlashAttention-2 uses them on Ampere and Ada (128 x 64, 4 warps), the Hopper portable default
# (128 x 128, 8 warps) where shared memory allows; deeper pipelines first.
CANDIDATES = {80: ["128x64w4s3", "128x64w4s2", "64x64w4s2"], 89: ["128x64w4s3", "128x64w4s2", "64x64w4s2"],
              100: ["128x128w8s3", "128x64w8s3", "128x64w4s3", "64x64w4s2"]}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_for(arch, head_dim, smem):
    for label in CANDIDATES[arch]:
        launch = LaunchConfig.parse(label)
        if launch_problem(TrialConfig(DEFAULT, launch), head_dim=head_dim, dtype="bfloat16", arch=arch,
                          smem_limit=smem) is None:
            return launch
    raise SystemExit(f"no candidate launch fits sm_{arch} at head_dim {head_dim}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="a100-sxm,l40s,b200")
    for gpu in ap.parse_args().gpus.split(","):
        arch, smem = arch_of(gpu), shared_memory_of(gpu)
        launches = {d: launch_for(arch, d, smem) for d in (64, 128)}
        why = (f"not tuned on {gpu}: no such GPU was available; the paper default's parameters with a launch "
               f"chosen for sm_{arch}'s shared memory, never timed (tune it on the GPU: pbs-tune sweep --gpu "
               f"{gpu.split('-')[0]} --seqlen 32k --seqlen 128k)")
        entries = [profiles.ProfileEntry(gpu=gpu, seqlen=n, heads=h, kv_heads=kv, head_dim=d, dtype="bfloat16",
                                         params=DEFAULT, launch=launches[d], not_tuned=why)
                   for h, kv, d in SHAPES for n in LENGTHS]
        path = os.path.join(ROOT, "configs", f"{gpu}.yaml")
        profiles.merge_entries(path, entries)
        print(f"{path}: {len(entries)} entries, launches "
              + ", ".join(f"d{d} {lc.label()}" for d, lc in launches.items()))


if __name__ == "__main__":
    main()
