"""Time the op and fingerprint its output, for an A/B of two versions of the package: run it once
per version (PYTHONPATH pointing at each) in fresh processes, then compare the JSON lines.

    PYTHONPATH=old python scripts/op_ab.py old >> ab.jsonl; PYTHONPATH=new python scripts/op_ab.py new >> ab.jsonl
"""
import hashlib
import json
import sys

import torch

import pbs_tune
from pbs_tune.measure.timing import env_info, median_ms
from pbs_tune.measure.workloads import make_qkv

LAUNCHES = {"portable": pbs_tune.LaunchConfig(128, 128, 8, 3), "tma": pbs_tune.LaunchConfig(128, 128, 8, 3, tma=True)}

label = sys.argv[1]
env = env_info()
for n in (32768, 131072):
    q, k, v = make_qkv("mixed", seqlen=n, device="cuda", seed=0)
    for threshold in (1.0, 0.9):
        for name, launch in LAUNCHES.items():
            with torch.no_grad():
                out = pbs_tune.pbs_attention(q, k, v, block_size=128, segment_size=256, threshold=threshold,
                                             launch=launch)
                ms = median_ms(lambda: pbs_tune.pbs_attention(q, k, v, block_size=128, segment_size=256,
                                                              threshold=threshold, launch=launch))
            digest = hashlib.sha256(out.view(torch.int16).cpu().numpy().tobytes()).hexdigest()[:16]
            print(json.dumps(dict(version=label, n=n, threshold=threshold, launch=name, ms=round(ms, 4),
                                  out_sha256=digest, package=pbs_tune.__file__, device=env["device"],
                                  torch=env["torch"], triton=env["triton"], date=env["date"])), flush=True)
