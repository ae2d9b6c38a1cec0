"""Time the op per workload family beside SDPA cuDNN and fingerprint its output, for an A/B of two
versions of the package: run it once per version (PYTHONPATH pointing at each) in fresh processes on
the same GPU, then compare the JSON lines (ratios to cuDNN come from the same process).

    PYTHONPATH=old python scripts/op_ab.py old >> ab.jsonl; PYTHONPATH=new python scripts/op_ab.py new >> ab.jsonl

Defaults: the shipped H100 32k entry's config (block 128, segment 256, threshold 0.9, the Hopper
128x128 launch with 8 warps and 3 stages) on held-out seed 7 at 32k and 128k.
"""
import hashlib
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import pbs_tune
from pbs_tune.measure.timing import env_info, median_ms
from pbs_tune.measure.workloads import WORKLOADS, make_qkv

label = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
launch = pbs_tune.LaunchConfig(128, 128, 8, 3, tma=True)
env = env_info()
for n in (32768, 131072):
    for workload in WORKLOADS:
        q, k, v = make_qkv(workload, seqlen=n, device="cuda", seed=seed)
        with torch.no_grad():
            def op():
                return pbs_tune.pbs_attention(q, k, v, block_size=128, segment_size=256, threshold=0.9,
                                              launch=launch)

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                            enable_gqa=True)
            out = op()
            ms = median_ms(op)
            cudnn_ms = median_ms(cudnn)
        digest = hashlib.sha256(out.view(torch.int16).cpu().numpy().tobytes()).hexdigest()[:16]
        print(json.dumps(dict(version=label, n=n, workload=workload, seed=seed, ms=round(ms, 4),
                              cudnn_ms=round(cudnn_ms, 4), x_cudnn=round(cudnn_ms / ms, 3), out_sha256=digest,
                              package=pbs_tune.__file__, device=env["device"], torch=env["torch"],
                              triton=env["triton"], date=env["date"])), flush=True)
        q = k = v = out = None  # free the GPU memory now
