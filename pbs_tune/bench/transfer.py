"""GPU benchmark: does a tuned profile entry hold on data it never saw?

For each profile entry of the given lengths (shape 32/8/128), on every workload family at a seed
no sweep or launch choice used, in one run: the entry (its parameters and launch), the untuned
published default (block 128, segment 256, threshold 0.9, this GPU's stock launch) and SDPA
cuDNN; latency, error against float32 dense attention and density. The entry counts as
transferring on a family when it is at least as fast as the default at no larger error.

`--candidate lse` replaces the entry by the "lse" block estimator (op/selection.py) at the
threshold calibrated on the mixed workload's seed 0 (the lowest of a grid whose error there is
no larger than the default's), with the stock launch: a one-knob tune, judged on the same
held-out data.
"""
import argparse
import dataclasses
import math

import torch

from ..op.launch_config import default_launch
from ..op.pbs_attention import pbs_attention
from ..runtime import profiles
from ..seqlen import parse_length
from ..timing import dense_sdpa_ms, env_info, median_ms, write_json
from ..tune.metrics import dense_reference, rel_l2
from ..tune.workloads import WORKLOADS, make_qkv


def run_config(q, k, v, params, launch):
    out, blocks = pbs_attention(q, k, v, **params.op_args(), launch=launch, return_blocks=True)
    ms = median_ms(lambda: pbs_attention(q, k, v, **params.op_args(), launch=launch))
    return out, dict(ms=round(ms, 4), density=round(blocks.density(), 4))


LSE_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


def calibrated_lse(n, default, stock):
    """PbsParams with the lse estimator at the lowest grid threshold meeting the default's error
    on the mixed workload, seed 0; with the calibration figures."""
    q, k, v = make_qkv("mixed", seqlen=n, heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16, device="cuda",
                       seed=0)
    with torch.no_grad():
        dense = dense_reference(q, k, v)
        bound = rel_l2(pbs_attention(q, k, v, **default.op_args(), launch=stock), dense)
        errors = {t: rel_l2(pbs_attention(q, k, v, **dataclasses.replace(default, threshold=t, estimator="lse")
                                          .op_args(), launch=stock), dense) for t in LSE_GRID}
    chosen = min((t for t, e in errors.items() if e <= bound), default=default.threshold)
    return dataclasses.replace(default, threshold=chosen, estimator="lse"), dict(
        bound=round(bound, 5), errors={str(t): round(e, 5) for t, e in errors.items()}, chosen=chosen)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--gpu", required=True, help="whose entries, e.g. h200-sxm")
    ap.add_argument("--lengths", default="32k,128k")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--candidate", default="entry", choices=("entry", "lse"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    prof = profiles.load(args.profile)
    default = profiles.PbsParams(128, 256, 0.9)
    stock = default_launch(128, 128, torch.cuda.get_device_capability())
    rows = []
    for n in (parse_length(x) for x in args.lengths.split(",")):
        entry = prof.pick(n, gpu=args.gpu, heads=32, kv_heads=8, head_dim=128, dtype="bfloat16")
        params, launch, calibration = entry.params, entry.launch, None
        if args.candidate == "lse":
            params, calibration = calibrated_lse(n, default, stock)
            launch = stock
            print(f"{n}: lse calibrated on mixed@0: {calibration}", flush=True)
        for w in WORKLOADS:
            q, k, v = make_qkv(w, seqlen=n, heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16,
                               device="cuda", seed=args.seed)
            with torch.no_grad():
                dense = dense_reference(q, k, v)
                out, tuned = run_config(q, k, v, params, launch)
                tuned["rel_l2"] = round(rel_l2(out, dense), 5)
                out, base = run_config(q, k, v, default, stock)
                base["rel_l2"] = round(rel_l2(out, dense), 5)
                cudnn = dense_sdpa_ms(q, k, v, "cudnn")
            row = dict(seqlen=n, workload=w, seed=args.seed, candidate=profiles.describe_config(params, launch),
                       calibration=calibration, tuned=tuned, default=base,
                       cudnn_ms=round(cudnn, 4), speedup_vs_default=round(base["ms"] / tuned["ms"], 3),
                       default_vs_cudnn=round(cudnn / base["ms"], 3), tuned_vs_cudnn=round(cudnn / tuned["ms"], 3),
                       error_not_larger=tuned["rel_l2"] <= base["rel_l2"] * 1.001)
            rows.append(row)
            print(f"{n} {w}: tuned {tuned['ms']} ms err {tuned['rel_l2']} | default {base['ms']} ms err "
                  f"{base['rel_l2']} | cudnn {row['cudnn_ms']} -> {row['speedup_vs_default']}x default", flush=True)
            del q, k, v, dense, out
            torch.cuda.empty_cache()
    by_length = {}
    for r in rows:
        by_length.setdefault(r["seqlen"], []).append(r["speedup_vs_default"])
    summary = {str(n): dict(geomean=round(math.exp(sum(map(math.log, s)) / len(s)), 3), worst=min(s))
               for n, s in by_length.items()}
    print("summary:", summary, flush=True)
    write_json(args.out, dict(benchmark="transfer", env=env_info(), profile=args.profile, rows=rows, summary=summary))


if __name__ == "__main__":
    main()
