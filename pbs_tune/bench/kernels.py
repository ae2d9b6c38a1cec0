"""GPU benchmark of the PBS kernels (DESIGN.md protocol): `python -m pbs_tune.bench.kernels`.

Parts (--parts, comma-separated):
  checks   bf16 correctness on the GPU (dense vs SDPA, sparse vs a masked reference) and
           ahead-of-time compilation for sm_80 (A100) and sm_90.
  masks    random block masks (densities 0.05/0.2/0.5 and dense): SDPA cuDNN, SDPA flash,
           FlexAttention on the same kept blocks, and the attend kernel per launch config.
  op       the full op on the mixed workload at threshold 0.9, PBS vs unpermuted selection:
           stage times, density, error and recall against dense attention.
  select   block selection by sort vs by bisection (kernels/block_select.py) at block 64 and
           128: time, whether the kept blocks agree, and the whole op at each block size.
Writes JSON (device, versions, every number) to --out and prints a summary table.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from ..profile.launch import LaunchConfig
from ..op.pbs_attention import attend_blocks, permute_and_select
from ..op.permutation import identity_permutation
from ..op.selection import block_list_from_mask, causal_block_list
from ..seqlen import parse_length
from ..measure.metrics import dense_reference, rel_l2
from ..measure.workloads import make_qkv
from ..measure.timing import dense_sdpa_ms, env_info, median_ms, rounded, write_json

LAUNCHES = "128x128w8s3,128x128w8s2,128x64w4s3,64x128w4s3"  # the portable kernel's measured set


def random_blocks(b, h, n, bs, density, device):
    """Causal random block mask: diagonal and first block always, others at random."""
    nb = n // bs
    causal = nb * (nb + 1) / 2
    p = max(0.0, (density * causal - (2 * nb - 1)) / max(1.0, causal - (2 * nb - 1)))
    keep = torch.rand((b, h, nb, nb), device=device) < p
    eye = torch.eye(nb, dtype=torch.bool, device=device)
    keep |= eye
    keep[..., 0] = True
    keep &= torch.ones(nb, nb, dtype=torch.bool, device=device).tril()
    return keep


def part_checks(res, launches):
    dev = "cuda"
    out = {}
    n = 4096 + 77
    hopper = [c for c in launches if c.tma and c.block_m <= 64 and c.block_n <= 64] or \
        [LaunchConfig(64, 64, 4, 2, tma=True), LaunchConfig(64, 64, 4, 2, tma=True, programs_per_sm=2)]
    q, k, v = (torch.randn(1, h, n, 128, device=dev, dtype=torch.bfloat16) for h in (32, 8, 8))
    ref = dense_reference(q, k, v)
    for permute in (True, False):
        perm, blocks = permute_and_select(q, k, v, block_size=128, segment_size=256, threshold=1.0, permute=permute)
        for cfg in [LaunchConfig(128, 128, 8, 3)] + [c for c in launches if c.tma]:
            try:
                o = attend_blocks(q, perm, blocks, launch=cfg)
                out[f"dense_vs_fp32_ref_permute={permute}_{cfg.label()}"] = rel_l2(o, ref)
            except Exception as exc:
                out[f"dense_vs_fp32_ref_permute={permute}_{cfg.label()}"] = (
                    f"error: {type(exc).__name__}: {str(exc)[:200]}")
    # Model layout: (B, N, H, D) storage viewed as (B, H, N, D).
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    perm, blocks = permute_and_select(qt, kt, vt, block_size=128, segment_size=256, threshold=1.0, permute=False)
    for cfg in [c for c in launches if c.tma][:2]:
        out[f"dense_model_layout_vs_fp32_ref_{cfg.label()}"] = rel_l2(attend_blocks(qt, perm, blocks, launch=cfg), ref)
    qt = kt = vt = None  # free the GPU memory now
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out["sdpa_bf16_vs_fp32_ref"] = rel_l2(sdpa, dense_reference(q, k, v))
    # Sparse: reference = dense attention with an additive mask of the kept key slots.
    n = 2048 + 33
    q, k, v = make_qkv("mixed", seqlen=n, heads=8, kv_heads=2, device=dev, seed=1)
    perm, blocks = permute_and_select(q, k, v, block_size=64, segment_size=256, threshold=0.8)
    ref = _masked_reference(q, perm, blocks)
    for cfg in [LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 2)] + hopper:
        try:
            o = attend_blocks(q, perm, blocks, launch=cfg)
            out[f"sparse_vs_fp32_ref_{cfg.label()}"] = rel_l2(o, ref)
        except Exception as exc:  # a variant this Triton cannot build: report, keep going
            out[f"sparse_vs_fp32_ref_{cfg.label()}"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
    out["sparse_density"] = blocks.density()
    # The key-score kernel against a float32 torch computation of the same quantity.
    from ..op.permutation import last_block_key_scores
    n = 8192 + 5
    q, k, _ = make_qkv("mixed", seqlen=n, heads=32, kv_heads=8, device=dev, seed=2)
    got = last_block_key_scores(q, k, block_size=128, scale=1 / math.sqrt(128))
    ql = q[0, :, n - 128:].float().reshape(8, 4 * 128, 128)
    s = torch.einsum("hrd,hnd->hrn", ql, k[0].float()) / math.sqrt(128)
    pos = torch.arange(n - 128, n, device=dev).repeat(4)
    s.masked_fill_(torch.arange(n, device=dev)[None, None, :] > pos[None, :, None], float("-inf"))
    want = torch.softmax(s, -1).mean(1)
    out["key_scores_rel_l2"] = rel_l2(got[0], want)
    # Ahead-of-time compilation for A100 (sm_80) and H100 (sm_90).
    from ..kernels.aot import compile_attend
    for arch, stages in ((80, 2), (80, 3), (90, 3)):
        try:
            kern = compile_attend(arch=arch, dtype="bfloat16", head_dim=128, block_size=128, block_m=128,
                                  block_n=128, num_warps=8, num_stages=stages)
            ptx = kern.asm["ptx"]
            out[f"aot_sm{arch}_stages{stages}"] = dict(ok=True, shared_bytes=kern.metadata.shared,
                                                       wgmma="wgmma" in ptx, mma_sync="mma.sync" in ptx)
        except Exception as exc:  # report, keep going
            out[f"aot_sm{arch}_stages{stages}"] = dict(ok=False, error=str(exc)[:300])
    res["checks"] = out
    for key, val in out.items():
        print(f"check {key}: {val}", flush=True)


def _masked_reference(q, perm, blocks):
    B, H, n, D = q.shape
    group = H // perm.k.shape[1]
    bs = blocks.block_size
    tok = blocks.to_dense().repeat_interleave(bs, 2).repeat_interleave(bs, 3)[:, :, :n, :n]
    pos = perm.positions.repeat_interleave(group, 1)
    allowed = tok & (pos[:, :, None, :] <= torch.arange(n, device=q.device)[:, None])
    kk = perm.k.float().repeat_interleave(group, 1)
    vv = perm.v.float().repeat_interleave(group, 1)
    bias = torch.zeros(allowed.shape, device=q.device).masked_fill_(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q.float(), kk, vv, attn_mask=bias)


def part_masks(res, lengths, densities, with_flex, launches):
    rows = []
    flex = None
    if with_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    for n in lengths:
        q, k, v = (torch.randn(1, h, n, 128, device="cuda", dtype=torch.bfloat16) for h in (32, 8, 8))
        cudnn = dense_sdpa_ms(q, k, v, "cudnn")
        flash = dense_sdpa_ms(q, k, v, "flash")
        print(f"N={n}: cudnn {cudnn:.2f} ms, flash {flash:.2f} ms", flush=True)
        perm = identity_permutation(k, v)
        out = torch.empty_like(q)
        for dens in densities:
            keep = random_blocks(1, 32, n, 128, dens, "cuda")
            blocks = block_list_from_mask(keep, perm.positions, 128)
            real = blocks.density()
            row = dict(n=n, target_density=dens, density=real, cudnn_ms=cudnn, flash_ms=flash,
                       floor_ms=real * cudnn)
            for cfg in launches:
                try:
                    row[f"attend_{cfg.label()}_ms"] = median_ms(
                        lambda: attend_blocks(q, perm, blocks, launch=cfg, out=out))
                except Exception as exc:
                    row[f"attend_{cfg.label()}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            for family, pick in (("portable", lambda c: not c.tma), ("tma", lambda c: c.tma)):
                times = {c.label(): row[f"attend_{c.label()}_ms"] for c in launches
                         if pick(c) and f"attend_{c.label()}_ms" in row}
                if times:
                    best = min(times, key=times.get)
                    row[f"{family}_best"] = best
                    row[f"{family}_best_ms"] = times[best]
                    row[f"{family}_over_floor"] = times[best] / row["floor_ms"]
            attend_times = [v for key, v in row.items() if key.startswith("attend_") and key.endswith("_ms")]
            row["attend_best_ms"] = min(attend_times)
            if flex is not None:
                try:
                    bm = blocks.to_flex_block_mask(perm.positions, n)
                    t0 = time.perf_counter()
                    o_flex = flex(q, k, v, block_mask=bm, enable_gqa=True)
                    torch.cuda.synchronize()
                    row["flex_first_call_s"] = time.perf_counter() - t0
                    row["flex_ms"] = median_ms(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True))
                    row["flex_vs_attend_rel_l2"] = rel_l2(o_flex, attend_blocks(q, perm, blocks, out=out))
                    bm = None  # free the GPU memory now
                except Exception as exc:
                    row["flex_error"] = str(exc)[:300]
            row["attend_over_floor"] = row["attend_best_ms"] / row["floor_ms"]
            if "flex_ms" in row:
                row["flex_over_floor"] = row["flex_ms"] / row["floor_ms"]
            rows.append(row)
            print(json.dumps(rounded(row)), flush=True)
            blocks = keep = None  # free the GPU memory now
        q = k = v = perm = out = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["masks"] = rows


def part_op(res, lengths, configs, threshold):
    from ..op.permutation import permute_keys
    from ..op.selection import select_blocks
    from ..measure.metrics import recall_from_lse
    rows = []
    for n in lengths:
        q, k, v = make_qkv("mixed", seqlen=n, heads=32, kv_heads=8, device="cuda", seed=0)
        dense_perm = identity_permutation(k, v)
        dense_blocks = causal_block_list(32, dense_perm.positions, 128)
        _, dense_lse = attend_blocks(q, dense_perm, dense_blocks, return_lse=True)
        cudnn, flash = dense_sdpa_ms(q, k, v, "cudnn"), dense_sdpa_ms(q, k, v, "flash")
        sdpa_out = dense_reference(q, k, v)  # the output SDPA approximates, in float32
        dense_attend = median_ms(lambda: attend_blocks(q, dense_perm, dense_blocks))
        scale = 1 / math.sqrt(128)
        for bs, seg in configs:
            for permute in (True, False):
                launch = LaunchConfig(min(128, bs), min(128, bs), 8 if bs >= 128 else 4, 3)
                if permute:
                    t_perm = median_ms(lambda: permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=scale))
                    perm = permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=scale)
                else:
                    t_perm, perm = 0.0, identity_permutation(k, v)
                t_sel = median_ms(lambda: select_blocks(q, perm.k, perm.positions, block_size=bs, segment_size=seg,
                                                       threshold=threshold, scale=scale))
                blocks = select_blocks(q, perm.k, perm.positions, block_size=bs, segment_size=seg,
                                       threshold=threshold, scale=scale)
                t_att = median_ms(lambda: attend_blocks(q, perm, blocks, launch=launch))
                out, lse = attend_blocks(q, perm, blocks, launch=launch, return_lse=True)
                row = dict(n=n, workload="mixed", threshold=threshold, block_size=bs, segment_size=seg,
                           permute=permute, density=blocks.density(), rel_l2_vs_dense=rel_l2(out, sdpa_out),
                           recall=recall_from_lse(lse, dense_lse), permute_ms=t_perm, select_ms=t_sel,
                           attend_ms=t_att, total_ms=t_perm + t_sel + t_att, cudnn_ms=cudnn, flash_ms=flash,
                           dense_attend_ms=dense_attend, floor_ms=blocks.density() * cudnn)
                row["overhead_share"] = (t_perm + t_sel) / row["total_ms"]
                row["speedup_vs_cudnn"] = cudnn / row["total_ms"]
                rows.append(row)
                print(json.dumps(rounded(row)), flush=True)
                perm = blocks = out = lse = None  # free the GPU memory now
        q = k = v = dense_lse = sdpa_out = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["op"] = rows


def part_select(res, lengths, threshold):
    from ..op import selection
    from ..op.permutation import permute_keys
    from ..measure.metrics import rel_l2
    rows = []
    scale = 1 / math.sqrt(128)
    for n in lengths:
        q, k, v = make_qkv("mixed", seqlen=n, heads=32, kv_heads=8, device="cuda", seed=0)
        dense = dense_reference(q, k, v)
        for bs in (64, 128):
            seg = 256
            perm = permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=scale)
            row = dict(n=n, block_size=bs, segment_size=seg, blocks_per_row=-(-n // bs))
            kept = {}
            for name, cutoff in (("sort", 1 << 30), ("bisect", 1)):
                selection.BISECT_FROM = cutoff

                def select():
                    return selection.select_blocks(q, perm.k, perm.positions, block_size=bs, segment_size=seg,
                                                   threshold=threshold, scale=scale)
                row[f"{name}_ms"] = median_ms(select)
                kept[name] = select()
            selection.BISECT_FROM = 1024
            a, b = kept["sort"], kept["bisect"]
            row["same_counts"] = bool(torch.equal(a.count, b.count) and torch.equal(a.full, b.full))
            row["rows_differing"] = int((a.count != b.count).sum())
            row["density"] = a.density()
            for label in ("64x64w4s3", "64x64w4s3-tma", "128x128w8s3", "128x128w8s3-tma"):
                lc = LaunchConfig.parse(label)
                if bs % lc.block_m:
                    continue
                row[f"attend_{label}_ms"] = median_ms(lambda: attend_blocks(q, perm, a, launch=lc))
            best = min((v, key) for key, v in row.items() if key.startswith("attend_"))
            row["attend_best"] = best[1]
            row["permute_ms"] = median_ms(lambda: permute_keys(q, k, v, block_size=bs, segment_size=seg, scale=scale))
            row["op_ms"] = row["permute_ms"] + min(row["sort_ms"], row["bisect_ms"]) + best[0]
            row["rel_l2"] = rel_l2(attend_blocks(q, perm, a, launch=LaunchConfig.parse(best[1][7:-3])), dense)
            rows.append(row)
            print(json.dumps(rounded(row)), flush=True)
            perm = kept = a = b = None  # free the GPU memory now
        q = k = v = dense = None  # free the GPU memory now
        torch.cuda.empty_cache()
    res["select"] = rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="checks,masks,op")
    ap.add_argument("--lengths", default="8k,16k,32k,64k,128k")
    ap.add_argument("--op-lengths", default="32k,128k")
    ap.add_argument("--densities", default="0.05,0.2,0.5,1.0")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--launches", default=LAUNCHES, help="attend launch configs (LaunchConfig labels), e.g. "
                    "128x128w8s3,128x128w8s2-tma,128x128w8s2-tma-p2")
    ap.add_argument("--op-configs", default="128:256,128:1024", help="block:segment pairs for the op part")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--out", default="bench_kernels.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    res = dict(env=env_info(), args=vars(args))
    print(json.dumps(res["env"]), flush=True)
    parts = args.parts.split(",")
    launches = [LaunchConfig.parse(x) for x in args.launches.split(",")]
    try:
        if "checks" in parts:
            part_checks(res, launches)
        if "masks" in parts:
            part_masks(res, [parse_length(x) for x in args.lengths.split(",")],
                       [float(x) for x in args.densities.split(",")], not args.no_flex, launches)
        if "select" in parts:
            part_select(res, [parse_length(x) for x in args.op_lengths.split(",")], args.threshold)
        if "op" in parts:
            configs = [tuple(int(y) for y in x.split(":")) for x in args.op_configs.split(",")]
            part_op(res, [parse_length(x) for x in args.op_lengths.split(",")], configs, args.threshold)
    finally:
        write_json(args.out, res)
    if "masks" in res:
        nan = float("nan")
        print("\n     N density    cudnn    flash    floor portable x_floor      tma x_floor"
              "     flex x_floor  tma best")
        for r in res["masks"]:
            print(f"{r['n']:>6} {r['density']:7.3f} {r['cudnn_ms']:8.3f} {r['flash_ms']:8.3f} {r['floor_ms']:8.3f}"
                  f" {r.get('portable_best_ms', nan):8.3f} {r.get('portable_over_floor', nan):7.2f}"
                  f" {r.get('tma_best_ms', nan):8.3f} {r.get('tma_over_floor', nan):7.2f}"
                  f" {r.get('flex_ms', nan):8.3f} {r.get('flex_over_floor', nan):7.2f}  {r.get('tma_best', '-')}")
    if "op" in res:
        print("\n   N  bs  seg perm  density  err  recall  perm_ms sel_ms att_ms total  cudnn  share")
        for r in res["op"]:
            print(f"{r['n']:>6} {r['block_size']} {r['segment_size']} {int(r['permute'])} {r['density']:.3f} "
                  f"{r['rel_l2_vs_dense']:.4f} {r['recall']:.4f} {r['permute_ms']:.2f} {r['select_ms']:.2f} "
                  f"{r['attend_ms']:.2f} {r['total_ms']:.2f} {r['cudnn_ms']:.2f} {r['overhead_share']:.3f}")


if __name__ == "__main__":
    main()
