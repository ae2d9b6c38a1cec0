"""GPU benchmark: the block estimator's headroom, PBS's density against the oracle's at equal error.

PBS estimates each key block's importance from mean-pooled queries and keys. The oracle knows
the exact attention mass of every (query block, key block) pair over the same permuted keys;
two cheaper estimators sit between them (a few exact query rows per block; each block's mean
query against every key). Each keeps the diagonal segment and the sink block and then adds key
blocks in decreasing (estimated or exact) mass until the threshold is reached, over a sweep of
thresholds. The figure of merit is the density PBS needs for the published default's error
(block 128, segment 256, threshold 0.9) over the smallest density at which the estimator's
error is no larger. The estimators here are torch prototypes for measuring headroom only; the
op's own `lse` estimator (kernels/block_scores.py) is measured beside them as `op_lse`.

Inputs: the synthetic workloads (`--workloads`), or every layer of a model (`--model`: the
fixture's folder, a packaged model's name or a model folder) recorded on one evaluation-split
text, summed over layers; `--plan` adds a per-layer plan's own point on each layer and the part
of the default-to-oracle gap it closes.
"""
import argparse
import math

import torch

from ..op.pbs_attention import attend_blocks, permute_and_select
from ..op.selection import block_list_from_mask, block_position_bounds
from ..seqlen import parse_length
from ..measure.timing import env_info, write_json
from ..measure.metrics import config_point, dense_reference, rel_l2
from ..measure.workloads import make_qkv

BLOCK, SEGMENT, DEFAULT = 128, 256, 0.9
PBS_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99)
ORACLE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995,
                     0.998, 0.999, 0.9995)


def block_mass(q, perm, block_size, rows=2048):
    """(B, Hq, NQB, NKB) float32: exact causal softmax mass of each query block on each (permuted)
    key block, summed over the block's query rows (a row's mass sums to 1)."""
    n = q.shape[2]
    return row_mass(q, torch.arange(n, device=q.device), perm, block_size, block_size, rows)


def row_mass(qrows, positions, perm, block_size, per_block, rows=2048):
    """(B, Hq, NQB, NKB): the causal softmax mass on each key block of query vectors `qrows`
    (B, Hq, R, D) at `positions` (R,), summed over each query block's `per_block` consecutive
    rows. The estimators below are this with fewer or pooled rows."""
    B, Hq, R, D = qrows.shape
    group = Hq // perm.k.shape[1]
    N = perm.k.shape[2]
    nb = -(-N // block_size)
    mass = torch.zeros(B, Hq, -(-R // per_block), nb, dtype=torch.float32, device=qrows.device)
    scale = 1.0 / math.sqrt(D)
    rows -= rows % per_block
    for b in range(B):
        for h in range(Hq):
            k, pos = perm.k[b, h // group].float(), perm.positions[b, h // group]
            for r0 in range(0, R, rows):
                r1 = min(R, r0 + rows)
                logits = (qrows[b, h, r0:r1].float() @ k.T) * scale
                logits.masked_fill_(pos[None, :] > positions[r0:r1, None], float("-inf"))
                p = torch.softmax(logits, dim=-1)
                p = torch.nn.functional.pad(p, (0, nb * block_size - N, 0, -(r1 - r0) % per_block))
                per_rows = p.view(-1, per_block, nb, block_size).sum((1, 3))        # (query blocks, NKB)
                first = r0 // per_block
                mass[b, h, first:first + per_rows.shape[0]] += per_rows
    return mass


def probe_mass(q, perm, block_size, probes=8):
    """Estimator: `probes` evenly spaced query rows of each block (the last of each stride)
    against every key, exactly; costs probes / block_size of the attention."""
    n = q.shape[2]
    stride = block_size // probes
    idx = (torch.arange(0, n, stride, device=q.device) + stride - 1).clamp(max=n - 1)
    return row_mass(q[:, :, idx], idx, perm, block_size, probes)


def pooled_query_mass(q, perm, block_size):
    """Estimator: each block's mean query against every key (not against mean-pooled keys as PBS
    does), its mass summed per key block; costs 1 / block_size of the attention."""
    B, H, n, D = q.shape
    nb = n // block_size
    means = q[:, :, :nb * block_size].float().view(B, H, nb, block_size, D).mean(3)
    last = torch.arange(nb, device=q.device) * block_size + block_size - 1
    return row_mass(means, last, perm, block_size, 1)


ESTIMATORS = dict(oracle=block_mass, probes8=probe_mass, pooled_query=pooled_query_mass)


def forced_blocks(perm, nb, block_size, segment_size, heads):
    """(B, Hq, NQB, NKB) bool: each query block's own segment and the block holding key 0."""
    dev = perm.k.device
    bps = segment_size // block_size
    qb = torch.arange(nb, device=dev)
    kb = torch.arange(nb, device=dev)
    diag = (kb[None, :] // bps) == (qb[:, None] // bps)
    kmin, _ = block_position_bounds(perm.positions, block_size)                 # (B, Hkv, NKB)
    sink = (kmin == 0).repeat_interleave(heads // perm.k.shape[1], dim=1)       # (B, Hq, NKB)
    return diag[None, None] | sink[:, :, None, :]


def oracle_keep(mass, forced, threshold):
    """Forced blocks plus the fewest other blocks, heaviest first, reaching `threshold` of the mass."""
    rows = mass.sum(-1, keepdim=True)
    need = threshold * rows - (mass * forced).sum(-1, keepdim=True)
    other = mass.masked_fill(forced, -1.0)
    ranked, order = other.sort(-1, descending=True)
    before = ranked.clamp(min=0).cumsum(-1) - ranked.clamp(min=0)       # mass kept before each candidate
    take = (before < need) & (ranked > 0)
    keep = torch.zeros_like(forced)
    keep.scatter_(-1, order, take)
    return keep | forced


def op_curve(q, k, v, dense, thresholds, *, block, segment, estimator="mean"):
    """(density, error) of the op itself at each threshold."""
    curve = []
    for t in thresholds:
        perm, blocks = permute_and_select(q, k, v, block_size=block, segment_size=segment, threshold=t,
                                          estimator=estimator)
        curve.append(dict(threshold=t, density=blocks.kept_blocks() / blocks.candidate_blocks(),
                          rel_l2=rel_l2(attend_blocks(q, perm, blocks), dense)))
    return curve


def at_equal_error(curve, target, pbs_density):
    """The smallest density of `curve` whose error is within `target`, and PBS's over it."""
    meeting = [c["density"] for c in curve if c["rel_l2"] <= target]
    best = min(meeting) if meeting else None
    return dict(density_at_equal_error=best, pbs_over_it=(pbs_density / best) if best else None, curve=curve)


def frontier(q, k, v, dense, block=BLOCK, segment=SEGMENT):
    """PBS and oracle (density, error) curves on one input, and the densities at the default's error."""
    pbs = op_curve(q, k, v, dense, PBS_THRESHOLDS, block=block, segment=segment)
    target = next(p["rel_l2"] for p in pbs if p["threshold"] == DEFAULT)
    pbs_density = next(p["density"] for p in pbs if p["threshold"] == DEFAULT)
    perm, blocks = permute_and_select(q, k, v, block_size=block, segment_size=segment, threshold=DEFAULT)
    candidates = blocks.candidate_blocks()
    out = dict(default_rel_l2=target, pbs_density_at_default=pbs_density, pbs=pbs)
    out["op_lse"] = at_equal_error(op_curve(q, k, v, dense, ORACLE_THRESHOLDS, block=block, segment=segment,
                                            estimator="lse"), target, pbs_density)
    forced = None
    for name, estimate in ESTIMATORS.items():
        mass = estimate(q, perm, block)
        forced = forced_blocks(perm, mass.shape[-1], block, segment, q.shape[1]) if forced is None else forced
        curve = []
        for t in ORACLE_THRESHOLDS:
            blocks = block_list_from_mask(oracle_keep(mass, forced, t), perm.positions, block)
            curve.append(dict(threshold=t, density=blocks.kept_blocks() / candidates,
                              rel_l2=rel_l2(attend_blocks(q, perm, blocks), dense)))
        out[name] = at_equal_error(curve, target, pbs_density)
    return out


NAMES = ("op_lse",) + tuple(ESTIMATORS)


def summary(rows) -> dict:
    """Over several inputs (a model's layers): per estimator, on how many it reaches the
    default's error, and PBS's density over its own, both summed over the inputs it reaches;
    with a plan, its summed density and error against the default's, and the part of the
    summed default-to-oracle gap it closes."""
    out = {}
    for name in NAMES:
        reached = [r for r in rows if r[name]["density_at_equal_error"] is not None]
        pbs = sum(r["pbs_density_at_default"] for r in reached)
        mine = sum(r[name]["density_at_equal_error"] for r in reached)
        out[name] = dict(reached=len(reached), of=len(rows), pbs_over_it=(pbs / mine) if mine else None)
    if rows and "plan" in rows[0]:
        default = sum(r["pbs_density_at_default"] for r in rows)
        oracle = sum(r["oracle"]["density_at_equal_error"] or r["pbs_density_at_default"] for r in rows)
        plan = sum(r["plan"]["density"] for r in rows)
        out["plan"] = dict(density_over_default=plan / default, oracle_over_default=oracle / default,
                           gap_closed=(default - plan) / (default - oracle) if default > oracle else None,
                           layers_within_default_error=sum(r["plan"]["rel_l2"] <= r["default_rel_l2"] for r in rows),
                           dense_layers=[r["layer"] for r in rows if r["plan"]["dense"]])
    return out


def _say(label, res):
    print(f"{label}: default err {res['default_rel_l2']:.4f} at density {res['pbs_density_at_default']:.3f}; at that "
          "error: " + ", ".join(f"{name} {res[name]['density_at_equal_error']} (PBS / it {res[name]['pbs_over_it']})"
                                for name in NAMES), flush=True)


def recovered(res) -> float | None:
    """The part of the gap between PBS's density at the default and the oracle's at the same error
    that the plan closes (1: down to the oracle; None where the oracle has no such point)."""
    oracle = res["oracle"]["density_at_equal_error"]
    gap = None if oracle is None else res["pbs_density_at_default"] - oracle
    return (res["pbs_density_at_default"] - res["plan"]["density"]) / gap if gap else None


def model_rows(model_name, seqlen, plan=None):
    """The frontier of every layer of a model on one evaluation-split sequence; with `plan` (a
    profile with a per-layer plan for this model), the plan's own point per layer too."""
    from ..models.fixtures import attention_shape, load_model, python_sources, token_sequences
    from ..tune.model_plan import record_layers
    model, tok = load_model(model_name, dtype="bfloat16", device="cuda")
    entry = None if plan is None else plan.pick(seqlen, gpu=plan.entries[0].gpu, **attention_shape(model))
    if plan is not None and entry is None:
        raise SystemExit(f"{plan.path} has no entry for this model's shape at {seqlen} tokens")
    (seq,) = token_sequences(tok, python_sources("evaluation"), seqlen, 1)
    rows = []
    for idx, (q, k, v) in sorted(record_layers(model, [seq]).items()):
        with torch.no_grad():
            dense = dense_reference(q, k, v)
            res = frontier(q, k, v, dense)
            if entry is not None:
                res["plan"] = config_point(q, k, v, dense, entry.config_for_layer(idx))
                res["plan_recovers"] = recovered(res)
        rows.append(dict(model=str(model_name), layer=idx, seqlen=seqlen, **res))
        _say(f"layer {idx}", res)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mixed,stripes,retrieval,sink_local,diffuse")
    ap.add_argument("--seqlen", default="32k")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default=None, help="every layer of this model ('smollm2' or the fixture's folder) "
                                                  "instead of the workloads")
    ap.add_argument("--plan", default=None, help="with --model: a `pbs-tune plan` profile for it, measured per layer")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    n = parse_length(args.seqlen)
    if args.plan and not args.model:
        ap.error("--plan needs --model")
    if args.model:
        from ..profile import profiles
        rows = model_rows(args.model, n, plan=profiles.load(args.plan) if args.plan else None)
        total = summary(rows)
        print("over all layers:", total, flush=True)
        write_json(args.out, dict(benchmark="oracle_frontier", env=env_info(), block=BLOCK, segment=SEGMENT,
                                  model=args.model, summary=total, rows=rows))
        return
    rows = []
    for w in args.workloads.split(","):
        q, k, v = make_qkv(w, seqlen=n, heads=32, kv_heads=8, head_dim=128, dtype=torch.bfloat16, device="cuda",
                           seed=args.seed)
        with torch.no_grad():
            res = frontier(q, k, v, dense_reference(q, k, v))
        rows.append(dict(workload=w, seqlen=n, seed=args.seed, **res))
        _say(f"{w} {args.seqlen}", res)
        del q, k, v
        torch.cuda.empty_cache()
    write_json(args.out, dict(benchmark="oracle_frontier", env=env_info(), block=BLOCK, segment=SEGMENT,
                              rows=rows))


if __name__ == "__main__":
    main()
