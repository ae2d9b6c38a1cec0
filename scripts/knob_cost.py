"""What the retrieval knobs cost (issue 44): the op per workload family at 32k and 128k with
tail_blocks / column_blocks at several values against the same parameters without them (paper
default: block 128, segment 256, threshold 0.9, the Hopper launch), on held-out seed 7; time,
density, and at 32k the error of the whole output and of the last query block's rows against
SDPA cuDNN. One JSON line per (length, family, knobs). Run on a GPU: python scripts/knob_cost.py
"""
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import pbs_tune
from pbs_tune.measure.metrics import rel_l2
from pbs_tune.measure.timing import env_info, median_ms
from pbs_tune.measure.workloads import WORKLOADS, make_qkv

KNOBS = ((0, 0), (1, 0), (0, 4), (0, 8), (0, 16), (1, 4), (1, 8), (1, 16), (2, 16))
launch = pbs_tune.LaunchConfig(128, 128, 8, 3, tma=True)
env = env_info()
for n in (32768, 131072):
    for workload in WORKLOADS:
        q, k, v = make_qkv(workload, seqlen=n, device="cuda", seed=7)
        with torch.no_grad():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                def dense():
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                ref = dense() if n <= 32768 else None
                cudnn_ms = median_ms(dense)
            for tail, cols in KNOBS:
                params = pbs_tune.PbsParams(128, 256, 0.9, tail_blocks=tail, column_blocks=cols)
                out, blocks = pbs_tune.pbs_attention(q, k, v, params, launch=launch, return_blocks=True)
                ms = median_ms(lambda: pbs_tune.pbs_attention(q, k, v, params, launch=launch))
                row = dict(n=n, workload=workload, seed=7, tail_blocks=tail, column_blocks=cols, ms=round(ms, 4),
                           cudnn_ms=round(cudnn_ms, 4), x_cudnn=round(cudnn_ms / ms, 3),
                           density=round(blocks.density(), 4))
                if ref is not None:
                    row.update(rel_l2=round(float(rel_l2(out.float(), ref.float())), 5),
                               tail_rel_l2=round(float(rel_l2(out[:, :, -128:].float(), ref[:, :, -128:].float())), 5))
                print(json.dumps(dict(row, device=env["device"], torch=env["torch"], triton=env["triton"],
                                      date=env["date"])), flush=True)
        q = k = v = ref = None  # free the GPU memory now
