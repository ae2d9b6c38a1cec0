"""GPU benchmark of the attend stage's 8-bit modes (issue: low precision as a tuned knob).

Parts (--parts, comma-separated):
  kernel  the attend kernel alone per precision against 16-bit on the same random block masks
          (densities x lengths), its launch chosen per precision at 32k; the quantization's own
          time; K scales per token vs per block (time and error on the mixed workload).
  op      per workload family and length: threshold and precision chosen together on one seed (the
          fastest whose rel-L2 is at most the paper default's there), then judged on the next seed
          against the 16-bit paper default, SDPA cuDNN and flash.
  cost    what 8-bit arithmetic costs in threshold: per family, rel-L2 and density of every
          precision over a threshold grid, and the density each needs to match the 16-bit default's
          error (no timing: runs on the CPU too, `--device cpu` under TRITON_INTERPRET=1).
Writes JSON (device, versions, every number) to --out and prints a summary.
  python -m pbs_tune.bench.precision --parts kernel,op --out benchmarks/results/h100_precision.json
"""
import argparse
import json
import math

import torch

from ..measure.metrics import dense_reference, rel_l2
from ..measure.timing import dense_sdpa_ms, env_info, median_ms, rounded, write_json
from ..measure.workloads import FAMILIES, make_qkv
from ..op.pbs_attention import attend_blocks, pbs_attention, permute_and_select
from ..op.permutation import identity_permutation
from ..op.precision import attend_inputs
from ..op.selection import block_list_from_mask
from ..profile.launch import LaunchConfig, default_launch
from ..profile.params import PRECISIONS, PbsParams, precisions_on
from ..seqlen import parse_length
from .kernels import random_blocks

SHAPE = dict(heads=32, kv_heads=8, head_dim=128)
CANDIDATE_LAUNCHES = ("128x128w8s2-tma", "128x128w8s3-tma", "128x128w8s4-tma", "128x64w8s3-tma")
THRESHOLDS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6)


def _kernel_ms(q, perm, blocks, precision, launch, key_group=1):
    """The attend kernel alone: 8-bit inputs quantized beforehand, not in the timed call."""
    out = torch.empty_like(q)
    low = None if precision == "input" else attend_inputs(q, perm.k, perm.v, precision, key_group=key_group)
    return median_ms(lambda: attend_blocks(q, perm, blocks, launch=launch, out=out, precision=precision, low=low))


def _usable(launch):
    try:
        launch.check_device(torch.cuda.get_device_capability())
        return True
    except ValueError:
        return False


def part_kernel(res, lengths, densities, precisions):
    cap = torch.cuda.get_device_capability()
    candidates = [LaunchConfig.parse(x) for x in CANDIDATE_LAUNCHES]
    candidates = [c for c in candidates if _usable(c)] or [default_launch(128, 128, cap)]
    # One launch per precision, chosen at 32k and density 0.3 (8-bit tiles leave room for more stages).
    n = 32768
    q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
    perm = identity_permutation(k, v)
    blocks = block_list_from_mask(random_blocks(1, 32, n, 128, 0.3, "cuda"), perm.positions, 128)
    chosen, tried = {}, {}
    for p in precisions:
        times = {}
        for c in candidates:
            try:
                times[c.label()] = _kernel_ms(q, perm, blocks, p, c)
            except Exception as exc:  # a config the compiler refuses for this precision
                times[c.label()] = f"{type(exc).__name__}: {str(exc)[:160]}"
        ok = {lbl: t for lbl, t in times.items() if isinstance(t, float)}
        chosen[p] = LaunchConfig.parse(min(ok, key=ok.get))
        tried[p] = times
    res["kernel_launch"] = dict(chosen={p: c.label() for p, c in chosen.items()}, tried=tried)
    print(json.dumps(res["kernel_launch"]), flush=True)
    q = k = v = perm = blocks = None  # free the GPU memory now
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
        perm = identity_permutation(k, v)
        row0 = dict(n=n, cudnn_ms=dense_sdpa_ms(q, k, v, "cudnn"), flash_ms=dense_sdpa_ms(q, k, v, "flash"))
        row0.update({f"quantize_{p}_ms": median_ms(lambda: attend_inputs(q, k, v, p))
                     for p in precisions if p != "input"})
        for dens in densities:
            blocks = block_list_from_mask(random_blocks(1, 32, n, 128, dens, "cuda"), perm.positions, 128)
            row = dict(row0, target_density=dens, density=blocks.density())
            for p in precisions:
                row[f"{p}_ms"] = _kernel_ms(q, perm, blocks, p, chosen[p])
                if p != "input":
                    row[f"{p}_speedup"] = row["input_ms"] / row[f"{p}_ms"]
            if "int8" in precisions:
                row["int8_block_scales_ms"] = _kernel_ms(q, perm, blocks, "int8", chosen["int8"], key_group=128)
            rows.append(row)
            print(json.dumps(rounded(row)), flush=True)
            blocks = None  # free the GPU memory now
        q = k = v = perm = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["kernel"] = rows
    res["kernel_error"] = _errors_by_granularity(precisions)


def _errors_by_granularity(precisions):
    """rel-L2 against float32 dense attention of each precision (and int8 with per-block K scales),
    at threshold 1 (every block: the arithmetic alone) and 0.9, mixed workload at 8k."""
    q, k, v = make_qkv("mixed", seqlen=8192, device="cuda", seed=7, **SHAPE)
    dense = dense_reference(q, k, v)
    out = {}
    for thr in (1.0, 0.9):
        perm, blocks = permute_and_select(q, k, v, block_size=128, segment_size=256, threshold=thr)
        for p in precisions:
            out[f"tau{thr}_{p}"] = rel_l2(attend_blocks(q, perm, blocks, precision=p), dense)
        if "int8" in precisions:
            low = attend_inputs(q, perm.k, perm.v, "int8", key_group=128)
            out[f"tau{thr}_int8_block_scales"] = rel_l2(
                attend_blocks(q, perm, blocks, precision="int8", low=low), dense)
    print(json.dumps(rounded(out)), flush=True)
    return out


def _op(q, k, v, params):
    return pbs_attention(q, k, v, params, return_blocks=True)


def part_op(res, lengths, families, precisions, seed):
    rows = []
    for n in lengths:
        for fam in families:
            # Choose on `seed`: the fastest (precision, threshold) within the default's error there.
            q, k, v = make_qkv(fam, seqlen=n, device="cuda", seed=seed, **SHAPE)
            dense = dense_reference(q, k, v)
            default = PbsParams(128, 256, 0.9)
            bound = rel_l2(_op(q, k, v, default)[0], dense)
            tried = []
            for p in precisions:
                for thr in THRESHOLDS:
                    params = PbsParams(128, 256, thr, precision=p)
                    out, blocks = _op(q, k, v, params)
                    err = rel_l2(out, dense)
                    if err <= bound:
                        tried.append((median_ms(lambda: pbs_attention(q, k, v, params)), p, thr, err))
            best = min(tried)
            q = k = v = dense = None  # free the GPU memory now
            # Judge on the next seed.
            q, k, v = make_qkv(fam, seqlen=n, device="cuda", seed=seed + 1, **SHAPE)
            dense = dense_reference(q, k, v)
            row = dict(n=n, family=fam, chosen_precision=best[1], chosen_threshold=best[2], tune_bound=bound,
                       tune_error=best[3], tried=[(p, t, round(ms, 3), round(e, 5)) for ms, p, t, e in sorted(tried)])
            for name, params in (("default", default), ("chosen", PbsParams(128, 256, best[2], precision=best[1]))):
                out, blocks = _op(q, k, v, params)
                row[f"{name}_rel_l2"] = rel_l2(out, dense)
                row[f"{name}_density"] = blocks.density()
                row[f"{name}_ms"] = median_ms(lambda: pbs_attention(q, k, v, params))
            row["cudnn_ms"] = dense_sdpa_ms(q, k, v, "cudnn")
            row["flash_ms"] = dense_sdpa_ms(q, k, v, "flash")
            row["chosen_vs_cudnn"] = row["cudnn_ms"] / row["chosen_ms"]
            row["default_vs_cudnn"] = row["cudnn_ms"] / row["default_ms"]
            row["chosen_vs_default"] = row["default_ms"] / row["chosen_ms"]
            rows.append(row)
            print(json.dumps(rounded({k_: v_ for k_, v_ in row.items() if k_ != "tried"})), flush=True)
            q = k = v = dense = None  # free the GPU memory now
            torch.cuda.empty_cache()
    res["op"] = rows
    summary = {}
    for n in lengths:
        mine = [r for r in rows if r["n"] == n]
        summary[n] = dict(
            chosen_vs_cudnn_geomean=math.exp(sum(math.log(r["chosen_vs_cudnn"]) for r in mine) / len(mine)),
            default_vs_cudnn_geomean=math.exp(sum(math.log(r["default_vs_cudnn"]) for r in mine) / len(mine)),
            slowest_chosen_vs_default=min(r["chosen_vs_default"] for r in mine),
            held_out_error_within_default=all(r["chosen_rel_l2"] <= r["default_rel_l2"] * 1.05 for r in mine))
    res["op_summary"] = summary
    print(json.dumps(rounded(summary)), flush=True)


def part_cost(res, n, families, precisions, seed, device, shape):
    rows = []
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    bs = 128 if device == "cuda" else 64
    for fam in families:
        q, k, v = make_qkv(fam, seqlen=n, device=device, seed=seed, dtype=dtype, **shape)
        dense = dense_reference(q, k, v)
        row = dict(family=fam, n=n)
        for p in precisions:
            for thr in (1.0,) + THRESHOLDS:
                out, blocks = _op(q, k, v, PbsParams(bs, 2 * bs, thr, precision=p))
                row[f"{p}@{thr}"] = (round(rel_l2(out, dense), 5), round(blocks.density(), 4))
        target = row["input@0.9"][0]
        for p in precisions:  # the sparsest grid point of this precision within the default's error
            ok = [(d, thr) for thr in (1.0,) + THRESHOLDS for e, d in [row[f"{p}@{thr}"]] if e <= target]
            row[f"{p}_matching"] = min(ok) if ok else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    res["cost"] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="kernel,op")
    ap.add_argument("--lengths", default="8k,32k,128k")
    ap.add_argument("--densities", default="0.1,0.2,0.4,0.6")
    ap.add_argument("--op-lengths", default="32k,128k")
    ap.add_argument("--families", default=",".join(list(FAMILIES) + ["mixed"]))
    ap.add_argument("--precisions", default="auto", help="comma-separated, or auto: every one this GPU runs")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--cost-length", default="32k")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for the cost part under TRITON_INTERPRET=1")
    ap.add_argument("--heads", default="32,8", help="query and KV heads of the cost part")
    ap.add_argument("--out", default="bench_precision.json")
    args = ap.parse_args()
    cap = torch.cuda.get_device_capability() if args.device == "cuda" else None
    precisions = precisions_on(cap and cap[0] * 10 + cap[1]) if args.precisions == "auto" else \
        tuple(p for p in PRECISIONS if p in args.precisions.split(","))
    res = dict(env=env_info(), args=vars(args), precisions=precisions)
    print(json.dumps(res["env"]), flush=True)
    parts = args.parts.split(",")
    try:
        if "kernel" in parts:
            part_kernel(res, [parse_length(x) for x in args.lengths.split(",")],
                        [float(x) for x in args.densities.split(",")], precisions)
        if "cost" in parts:
            hq, hkv = (int(x) for x in args.heads.split(","))
            part_cost(res, parse_length(args.cost_length), args.families.split(","), precisions, args.seed,
                      args.device, dict(heads=hq, kv_heads=hkv, head_dim=128))
        if "op" in parts:
            part_op(res, [parse_length(x) for x in args.op_lengths.split(",")], args.families.split(","),
                    precisions, args.seed)
    finally:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
