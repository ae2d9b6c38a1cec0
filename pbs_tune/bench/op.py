"""GPU benchmark: the op per workload family against dense SDPA, and what the retrieval knobs cost.

Why: the README's headline (the op x cuDNN at 32k / 128k) and the knobs' table (benchmarks/README.md,
"Op" and "Retrieval-safe knobs") come from this one loop. On held-out seed 7 of every family, at each
--lengths, the op at block 128, segment 256, threshold 0.9 with each tail_blocks:column_blocks pair
of --knobs ('default': the package's own defaults) against SDPA cuDNN and flash timed in the same
process; its density, and up to 32k the error of the whole output and of the last 128 rows against
cuDNN's output. One JSON line per (length, family, knobs), appended to --out.

A/B of two versions: run this file by path with PYTHONPATH at each version's package, `--knobs
default --label NAME` (the output is fingerprinted, so a changed result shows beside a changed time).
Imports are absolute for that reason. Runs on the CPU too (interpreter, float32, no dense timings).
"""
import argparse
import hashlib
import inspect
import json

import torch
import torch.nn.functional as F

from pbs_tune.measure.metrics import rel_l2
from pbs_tune.measure.timing import env_info, median_ms, sdpa_backend
from pbs_tune.measure.workloads import WORKLOADS, make_qkv
from pbs_tune.op.pbs_attention import pbs_attention
from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.seqlen import parse_length

KNOBS = "0:0,1:0,0:4,0:8,0:16,1:4,1:8,1:16,2:16"
ERROR_UP_TO = 32768  # the README's error figures are at 32k; longer: times and density only


def knob_params(knobs: str) -> dict:
    """'1:4' -> the keywords for tail_blocks=1, column_blocks=4; 'default' -> none (the version's own)."""
    if knobs == "default":
        return {}
    tail, cols = (int(x) for x in knobs.split(":"))
    return dict(tail_blocks=tail, column_blocks=cols)


def sdpa(q, k, v, backend=None):
    """Dense causal SDPA as a model calls it (GQA, one backend where named): the README's op figures."""
    from torch.nn.attention import sdpa_kernel
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    with sdpa_kernel(sdpa_backend(backend)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def dense_times(q, k, v) -> dict:
    """cuDNN's and flash's median ms; a backend that refuses is recorded as '<name>_error'."""
    out = {}
    for backend in ("cudnn", "flash"):
        try:
            with torch.no_grad():
                out[f"{backend}_ms"] = median_ms(lambda: sdpa(q, k, v, backend))
        except RuntimeError as exc:
            out[f"{backend}_error"] = str(exc)[:200]
    return out


def measure(q, k, v, knobs, launch, on_gpu, ref):
    kw = dict(block_size=128, segment_size=256, threshold=0.9, launch=launch, **knob_params(knobs))
    with torch.no_grad():
        out, blocks = pbs_attention(q, k, v, return_blocks=True, **kw)
        row = dict(knobs=knobs, ms=median_ms(lambda: pbs_attention(q, k, v, **kw), on_gpu),
                   density=round(blocks.density(), 4))
    if ref is not None:
        row.update(rel_l2=round(float(rel_l2(out.float(), ref.float())), 5),
                   tail_rel_l2=round(float(rel_l2(out[:, :, -128:].float(), ref[:, :, -128:].float())), 5))
    return row, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="32k,128k")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--knobs", default=KNOBS, help="tail_blocks:column_blocks pairs, or 'default'")
    ap.add_argument("--seed", type=int, default=7, help="held out: no trial or plan was fitted on it")
    ap.add_argument("--shape", default="32/8/128", help="heads/kv_heads/head_dim")
    ap.add_argument("--launch", default=None, help="LaunchConfig label (default: this GPU's default launch)")
    ap.add_argument("--label", default=None, help="a version's name: rows carry it and the output's fingerprint")
    ap.add_argument("--out", required=True, help="JSON lines, appended")
    args = ap.parse_args()
    on_gpu = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    heads, kv_heads, head_dim = (int(x) for x in args.shape.split("/"))
    launch = LaunchConfig.parse(args.launch) if args.launch else None
    env = env_info()
    for n in (parse_length(x) for x in args.lengths.split(",")):
        for workload in args.workloads.split(","):
            q, k, v = make_qkv(workload, seqlen=n, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                               device=device, dtype=dtype, seed=args.seed)
            dense = dense_times(q, k, v) if on_gpu else {}
            ref = None
            if n <= ERROR_UP_TO:  # against cuDNN's output on the GPU
                with torch.no_grad():
                    ref = sdpa(q, k, v, "cudnn" if "cudnn_ms" in dense else None)
            for knobs in args.knobs.split(","):
                row, out = measure(q, k, v, knobs, launch, on_gpu, ref)
                for name, value in dense.items():
                    row[name] = value
                    if name.endswith("_ms"):
                        row[name], row[f"x_{name[:-3]}"] = round(value, 4), round(value / row["ms"], 3)
                if args.label:
                    row.update(version=args.label, package=inspect.getfile(pbs_attention),
                               out_sha256=hashlib.sha256(out.view(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:16])
                row = dict(n=n, workload=workload, seed=args.seed, shape=args.shape, launch=args.launch or "default",
                           **row, device=env["device"], torch=env["torch"], triton=env["triton"], date=env["date"])
                row["ms"] = round(row["ms"], 4)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
                out = None  # free the GPU memory now
            q = k = v = ref = None  # free the GPU memory now
            if on_gpu:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
