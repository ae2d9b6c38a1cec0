"""GPU benchmark: which block-selection rule keeps its error on head families it never saw?

A uniform rule (one estimator, one threshold) tuned on one workload must be judged on the
others. This measures (density, error) for each candidate rule over a threshold grid on every
family at two seeds (one to choose the threshold on, one to judge it), against the op's default
(mean estimator, threshold 0.9). Rules are torch prototypes over the op's own block logits:

* ``mean`` / ``lse``: the op's rule as PBS states it: the smallest set of blocks outside the
  query's segment reaching the threshold of their estimated mass, plus the diagonal segment and
  the sink;
* ``*_ns``: the threshold is of the mass outside the sink block (kept anyway); ``lse_ns`` is what
  the op's ``lse`` estimator now does (op/selection.py);
* ``lse_ns_T*``: ``lse_ns`` on logits divided by a temperature (flatter estimates);
* ``lse_row``: the same, but the threshold is of the whole row's estimated mass, the diagonal
  segment included, so a head whose mass sits in its own segment keeps few other blocks;
* ``lse_local``: ``lse`` plus the segment before the diagonal one (a local band);
* ``union*``: the blocks of ``mean`` at one threshold and of ``lse`` at another;
* ``mixture*``: blocks ranked by the average of both estimators' probabilities.
"""
import argparse
import itertools
import json

import torch

from ..kernels.block_scores import block_lse
from ..op.pbs_attention import attend_blocks, default_scale, key_order, pbs_attention
from ..op.selection import block_list_from_mask, block_means, block_position_bounds
from ..seqlen import parse_length
from ..measure.timing import env_info
from ..measure.metrics import dense_reference, rel_l2
from ..measure.workloads import WORKLOADS, make_qkv
from .oracle import oracle_keep

BLOCK, SEGMENT, DEFAULT = 128, 256, 0.9


def block_logits(q, perm, estimator, scale):
    """(B, Hq, NB, NB) float32 logits of every query block against every permuted key block."""
    B, Hq, N, D = q.shape
    Hkv = perm.k.shape[1]
    nb = -(-N // BLOCK)
    pooled_q = block_means(q, BLOCK).view(B, Hkv, (Hq // Hkv) * nb, D)
    if estimator == "lse":
        out = block_lse(pooled_q, perm.k, block_size=BLOCK, scale=scale)
    else:
        out = torch.matmul(pooled_q, block_means(perm.k, BLOCK).transpose(-1, -2)) * scale
    return out.view(B, Hq, nb, nb)


def masks(perm, nb, heads):
    """(outside, diagonal, sink, causal_diag, previous) bool masks, broadcastable to (B, Hq, NB, NB), of
    the op's row layout: candidates, the own segment, the sink block, its causal part, the segment before."""
    dev = perm.k.device
    bps = SEGMENT // BLOCK
    qb = torch.arange(nb, device=dev)[:, None]
    kb = torch.arange(nb, device=dev)[None, :]
    seg_first = (qb // bps) * bps
    outside = (kb < seg_first)[None, None]
    diagonal = ((kb >= seg_first) & (kb < seg_first + bps))[None, None]
    kmin, _ = block_position_bounds(perm.positions, BLOCK)
    group = heads // perm.k.shape[1]
    kmin = kmin.repeat_interleave(group, dim=1)[:, :, None, :]
    sink = (kmin == 0)
    q_hi = torch.clamp((qb + 1) * BLOCK, max=perm.k.shape[2]) - 1
    causal_diag = diagonal & (kmin <= q_hi[None, None])
    previous = ((kb >= seg_first - bps) & (kb < seg_first))[None, None]
    return outside, diagonal, sink, causal_diag, previous


def softmax_over(logits, allowed):
    p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(p, nan=0.0)


def rule_keeps(q, perm, scale):
    """{(rule, threshold): keep mask} for every candidate rule on this input."""
    nb = -(-q.shape[2] // BLOCK)
    outside, diagonal, sink, causal_diag, previous = masks(perm, nb, q.shape[1])
    forced = diagonal | sink
    logits = {e: block_logits(q, perm, e, scale) for e in ("mean", "lse")}
    p = {e: softmax_over(x, outside) for e, x in logits.items()}
    # "_ns": the sink is kept anyway, so the threshold is of the other blocks' mass only.
    ns = {e: softmax_over(x, outside & ~sink) for e, x in logits.items()}
    row = softmax_over(logits["lse"], outside | causal_diag)

    def outside_rule(mass, t, extra=None):
        f = forced if extra is None else forced | extra
        return oracle_keep(mass, f, t)

    keeps = {}
    for t in (0.8, 0.85, 0.9, 0.93, 0.95):
        keeps[("mean", t)] = outside_rule(p["mean"], t)
        keeps[("mean_ns", t)] = outside_rule(ns["mean"], t)
    for t in (0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99):
        keeps[("lse", t)] = outside_rule(p["lse"], t)
        keeps[("lse_ns", t)] = outside_rule(ns["lse"], t)
        keeps[("lse_ns_local", t)] = outside_rule(ns["lse"], t, previous)
    for temp in (1.5, 2.0, 3.0):
        tempered = softmax_over(logits["lse"] / temp, outside & ~sink)
        for t in (0.8, 0.85, 0.9, 0.93, 0.95):
            keeps[(f"lse_ns_T{temp}", t)] = outside_rule(tempered, t)
    for t in (0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995):
        keeps[("lse_row", t)] = oracle_keep(row, forced, t)
    for t in (0.85, 0.9, 0.95, 0.97):
        keeps[("lse_local", t)] = outside_rule(p["lse"], t, previous)
    for ta, tb in itertools.product((0.5, 0.7, 0.8), (0.85, 0.9, 0.95)):
        keeps[(f"union_mean{ta}", tb)] = outside_rule(p["mean"], ta) | outside_rule(p["lse"], tb)
        keeps[(f"union_ns_mean{ta}", tb)] = outside_rule(ns["mean"], ta) | outside_rule(ns["lse"], tb)
    for t in (0.9, 0.93, 0.95, 0.97):
        keeps[("mixture", t)] = outside_rule(0.5 * (p["mean"] + p["lse"]), t)
        keeps[("mixture_ns", t)] = outside_rule(0.5 * (ns["mean"] + ns["lse"]), t)
    return keeps


def measure(q, k, v):
    """Rows of (rule, threshold, density, error) on one input, and the op's default."""
    scale = default_scale(q, None)
    dense = dense_reference(q, k, v)
    out, blocks = pbs_attention(q, k, v, block_size=BLOCK, segment_size=SEGMENT, threshold=DEFAULT,
                                return_blocks=True)
    candidates = blocks.candidate_blocks()
    rows = [dict(rule="op_default", threshold=DEFAULT, density=blocks.kept_blocks() / candidates,
                 rel_l2=rel_l2(out, dense))]
    perm = key_order(q, k, v, block_size=BLOCK, segment_size=SEGMENT, scale=scale)
    for (rule, t), keep in rule_keeps(q, perm, scale).items():
        bl = block_list_from_mask(keep, perm.positions, BLOCK)
        rows.append(dict(rule=rule, threshold=t, density=bl.kept_blocks() / candidates,
                         rel_l2=rel_l2(attend_blocks(q, perm, bl), dense)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32k")
    ap.add_argument("--seeds", default="0,7")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", required=True, help="JSON lines, one per input, written as they finish")
    args = ap.parse_args(argv)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(dict(benchmark="selection_rules", env=env_info())) + "\n")
    for n in (parse_length(x) for x in args.lengths.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            for w in args.workloads.split(","):
                q, k, v = make_qkv(w, seqlen=n, heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16,
                                   device="cuda", seed=seed)
                with torch.no_grad():
                    rows = measure(q, k, v)
                base = rows[0]
                print(f"{n} {w} seed {seed}: default density {base['density']:.3f} "
                      f"err {base['rel_l2']:.4f}", flush=True)
                for r in rows[1:]:
                    ok = "ok" if r["rel_l2"] <= base["rel_l2"] else "  "
                    print(f"   {ok} {r['rule']:>16} {r['threshold']:<6} density {r['density']:.3f} "
                          f"({base['density'] / max(r['density'], 1e-9):.2f}x less) err {r['rel_l2']:.4f}", flush=True)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(dict(seqlen=n, workload=w, seed=seed, rows=rows)) + "\n")
                del q, k, v
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
