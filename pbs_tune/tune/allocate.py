"""Per-head thresholds under one error bound per layer.

A single threshold pays for the hardest head everywhere; heads of real models differ by orders
of magnitude (SmolLM2: per-head output error 0.002-0.58 at threshold 0.9). Squared output error
adds up over heads, ||O - Ô||² = Σ_h ||O_h - Ô_h||², so a layer's relative L2 error stays within
`bound` exactly when Σ_h e_h(τ_h) ≤ bound² · Σ_h ||O_h||². Each head's squared error e_h and kept
blocks k_h are measured on a grid of thresholds (one run of the op per grid value, every head at
once, summed over calibration samples); a Lagrangian relaxation gives each head the τ_h that
minimises k_h + λ·e_h, and a bisection on λ finds the fewest kept blocks within the bound.

Output error alone misses retrieval (SmolLM2: a per-head allocation lowered LM loss but lost
passkeys), so each head also has a floor: on sampled queries (the last block, where questions
sit, and rows spread over the sequence), the number whose heaviest key lies in a kept block may
not fall below what the reference threshold keeps. Kept sets grow with the threshold, so the
floor is a lowest allowed grid value per head. `choose_plan` does this per layer for every
`Variant` (with and without the permutation, each block estimator) and keeps the cheapest: the
`lse` estimator keeps far fewer blocks on some heads and loses error on others, so whether a layer
uses it is decided, like its thresholds, on that layer's own curves.

An allocation fitted to a few samples also fits their noise (mixed workload, 32k: calibrated at
0.95 x the reference's error, 1.04 x on a held-out sample). With two or more calibration samples
`choose_plan` therefore checks the bound out of sample: for each sample, a plan fitted to the
others must meet the bound on it, and the margin the allocation works to shrinks until it does.
"""
import functools
import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..op.pbs_attention import attend_blocks, default_scale, key_order
from ..profile.params import ESTIMATORS
from ..op.selection import select_blocks
from ..measure.metrics import dense_reference

GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0)
SAMPLED_ROWS = 256


class Variant(NamedTuple):
    """How a layer selects blocks, besides its thresholds: permuted or not, and which estimator."""

    permute: bool
    estimator: str = "mean"


REFERENCE_VARIANT = Variant(True, "mean")  # the published method, what every plan is measured against


def variants_of(estimators=ESTIMATORS) -> tuple:
    """Every variant with one of `estimators`, permuted and not."""
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown block estimator {sorted(unknown)[0]!r}; choose from {', '.join(ESTIMATORS)}")
    return tuple(Variant(p, e) for e in estimators for p in (True, False))


VARIANTS = variants_of()


@dataclass
class HeadCurves:
    """Per query head, on `grid`: squared output error, kept blocks, sampled queries whose
    heaviest key is kept; and the dense output's squared norm. Sums over calibration samples,
    so curves of several samples add up."""

    grid: tuple
    sq_err: torch.Tensor  # (H, G) float64
    kept: torch.Tensor    # (H, G) float64
    ref_sq: torch.Tensor  # (H,) float64
    top_hits: torch.Tensor = field(default=None)  # (H, G) float64
    samples: list = field(default=None, repr=False)  # the per-sample curves this one sums, if several

    @property
    def parts(self) -> list:
        """The per-sample curves (this one alone if it holds one sample)."""
        return self.samples or [self]

    def __add__(self, other):
        assert self.grid == other.grid
        hits = None if self.top_hits is None or other.top_hits is None else self.top_hits + other.top_hits
        return HeadCurves(self.grid, self.sq_err + other.sq_err, self.kept + other.kept, self.ref_sq + other.ref_sq,
                          hits, self.parts + other.parts)

    def floor(self, need) -> torch.Tensor:
        """Per head, the lowest grid index keeping at least `need[h]` heaviest keys (kept sets
        grow with the threshold, so every higher index keeps them too)."""
        ok = self.top_hits >= need[:, None]
        return torch.where(ok.any(1), ok.float().argmax(1), len(self.grid) - 1)

    def rel_l2(self, choice) -> float:
        """The layer's relative L2 error with grid index `choice[h]` per head."""
        rows = torch.arange(len(choice))
        return float((self.sq_err[rows, choice].sum() / self.ref_sq.sum()).sqrt())


def head_curves(q, k, v, *, block_size, segment_size, permute=True, estimator="mean", grid=GRID, launch=None,
                dense=None, top=None, tail_blocks=0, column_blocks=0) -> HeadCurves:
    """Measure every head's error and kept blocks at each grid threshold; the batch holds the
    samples, whose curves are kept apart in `samples` (`dense`: the float32 dense output, `top`:
    heaviest_keys, where the caller has them)."""
    dense = dense_reference(q, k, v) if dense is None else dense
    ref_sq = _squared_norms(dense)
    sq_err = torch.empty((q.shape[0], q.shape[1], len(grid)), dtype=torch.float64)
    kept = torch.empty_like(sq_err)
    hits = torch.empty_like(sq_err)
    rows = sampled_rows(q.shape[2], block_size)
    top = heaviest_keys(q, k, rows) if top is None else top
    scale = default_scale(q, None)
    with torch.no_grad():
        perm = key_order(q, k, v, block_size=block_size, segment_size=segment_size, scale=scale, permute=permute)
        for g, thr in enumerate(grid):  # one permutation serves every threshold
            blocks = select_blocks(q, perm.k, perm.positions, block_size=block_size, segment_size=segment_size,
                                   threshold=thr, scale=scale, estimator=estimator, tail_blocks=tail_blocks,
                                   column_blocks=column_blocks, k=k, key_mass=perm.scores)
            out = attend_blocks(q, perm, blocks, launch=launch, scale=scale)
            sq_err[..., g] = _squared_norms(out, dense)
            kept[..., g] = blocks.count.double().sum(dim=2).cpu()
            hits[..., g] = heaviest_key_kept(top, rows, perm.positions, blocks).double().sum(dim=2).cpu()
    return functools.reduce(operator.add, [HeadCurves(tuple(grid), sq_err[b], kept[b], ref_sq[b], hits[b])
                                           for b in range(q.shape[0])])


def _squared_norms(x, minus=None):
    """(B, H) float64 squared norms of x (or x - minus) per sample and head, one sample at a time:
    a float64 copy of a whole batch of four 128k samples (32 heads, D 128) would be 16 GiB."""
    return torch.stack([(x[b].double() - (0.0 if minus is None else minus[b].double())).pow(2).sum(dim=(1, 2))
                        for b in range(x.shape[0])]).cpu()


def sampled_rows(n, block_size, count=SAMPLED_ROWS):
    """Query rows to check: the last block (where a question sits) and rows spread evenly."""
    last = range(max(0, n - block_size), n)
    spread = torch.linspace(block_size, n - 1, max(1, count - len(last))).long().tolist()
    return torch.tensor(sorted(set(spread) | set(last)))


def heaviest_keys(q, k, rows):
    """(B, Hq, S) original index of each sampled query's highest-scoring causal key."""
    B, H, N, D = q.shape
    group = H // k.shape[1]
    rows = rows.to(q.device)
    out = torch.empty((B, H, len(rows)), dtype=torch.long, device=q.device)
    future = torch.arange(N, device=q.device)[None, :] > rows[:, None]
    for h in range(H):  # one head at a time: S x N scores
        scores = q[:, h, rows].float() @ k[:, h // group].float().transpose(-1, -2)
        out[:, h] = scores.masked_fill(future, float("-inf")).argmax(-1)
    return out


def heaviest_key_kept(top, rows, positions, blocks):
    """(B, Hq, S) bool: the key in `top` sits in a key block its query block keeps."""
    B, H, S = top.shape
    group = H // positions.shape[1]
    slot = torch.empty_like(positions, dtype=torch.long)
    slot.scatter_(-1, positions.long(), torch.arange(positions.shape[-1], device=positions.device).expand_as(slot))
    key_block = slot.repeat_interleave(group, 1).gather(-1, top) // blocks.block_size
    query_block = (rows.to(top.device) // blocks.block_size).expand(B, H, S)
    dev = top.device
    return blocks.to_dense()[torch.arange(B, device=dev)[:, None, None], torch.arange(H, device=dev)[None, :, None],
                             query_block, key_block]


def allocate(curves: HeadCurves, bound: float, floor=None) -> tuple:
    """Per-head thresholds with the fewest kept blocks whose layer rel-L2 stays <= `bound`
    (on the calibration samples), each head at or above its grid index `floor[h]` (none: no
    floor). If even the highest grid value misses the bound, that value.

    The Lagrangian solution is compared with a greedy descent from the best single threshold
    (on a discrete grid the Lagrangian can miss points of the front): never worse than uniform."""
    # squared back from a rel-L2 (a square root): a bound equal to some choice's error must admit it
    budget = bound ** 2 * float(curves.ref_sq.sum()) * (1 + 1e-12)
    heads = curves.sq_err.shape[0]
    rows = torch.arange(heads)
    last = torch.full((heads,), len(curves.grid) - 1)

    def error(choice):
        return float(curves.sq_err[rows, choice].sum())

    def kept(choice):
        return float(curves.kept[rows, choice].sum())

    floor = torch.zeros(heads, dtype=torch.long) if floor is None else floor.long()
    if error(last) > budget:
        return tuple(curves.grid[-1] for _ in range(heads))
    candidates = [_lagrangian(curves, budget, error, floor),
                  _greedy(curves, budget, _best_uniform(curves, budget, error, floor), floor)]
    best = min(candidates, key=kept)
    return tuple(curves.grid[int(i)] for i in best)


def _lagrangian(curves, budget, error, floor):
    below = torch.arange(len(curves.grid))[None, :] < floor[:, None]

    def pick(lam):
        return torch.argmin((curves.kept + lam * curves.sq_err).masked_fill(below, float("inf")), dim=1)
    lo, hi = 0.0, 1.0
    while error(pick(hi)) > budget and hi < 1e30:
        hi *= 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if error(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    choice = pick(hi)
    return choice if error(choice) <= budget else torch.full_like(choice, len(curves.grid) - 1)


def _best_uniform(curves, budget, error, floor):
    heads = curves.sq_err.shape[0]
    for g in range(len(curves.grid)):  # thresholds ascend, and with them the kept blocks
        choice = torch.clamp(torch.full((heads,), g), min=floor)
        if error(choice) <= budget:
            return choice
    return torch.full((heads,), len(curves.grid) - 1)


def _greedy(curves, budget, choice, floor):
    """Lower one head's threshold at a time, the move saving most blocks per unit of error."""
    choice = choice.clone()
    spent = float(curves.sq_err[torch.arange(len(choice)), choice].sum())
    while True:
        best, best_gain = None, 0.0
        for h in range(len(choice)):
            g = int(choice[h])
            if g <= int(floor[h]):
                continue
            saved = float(curves.kept[h, g] - curves.kept[h, g - 1])
            added = float(curves.sq_err[h, g - 1] - curves.sq_err[h, g])
            if saved <= 0 or spent + added > budget:
                continue
            gain = saved / max(added, 1e-300)
            if gain > best_gain:
                best, best_gain = h, gain
        if best is None:
            return choice
        g = int(choice[best])
        spent += float(curves.sq_err[best, g - 1] - curves.sq_err[best, g])
        choice[best] = g - 1


def uniform_error(curves: HeadCurves, threshold: float) -> float:
    """The layer's rel-L2 with one threshold for every head (must be on the grid)."""
    g = curves.grid.index(threshold)
    return curves.rel_l2(torch.full((curves.sq_err.shape[0],), g))


@dataclass
class LayerPlan:
    """What one layer runs: permute or not, a threshold per query head, the block estimator; with
    the calibration figures that justified it (kept blocks relative to the reference, both errors)."""

    permute: bool
    thresholds: tuple
    kept_ratio: float
    rel_l2: float
    reference_rel_l2: float
    margin: float = None  # the margin the allocation worked to (below the bound's after validation)
    estimator: str = "mean"

    @property
    def variant(self) -> Variant:
        return Variant(self.permute, self.estimator)

    def as_dict(self) -> dict:
        """As a trial stores it (JSON)."""
        return dict(permute=self.permute, estimator=self.estimator, thresholds=list(self.thresholds),
                    kept_ratio=round(self.kept_ratio, 4), rel_l2=round(self.rel_l2, 6),
                    reference_rel_l2=round(self.reference_rel_l2, 6),
                    margin=None if self.margin is None else round(self.margin, 4))

    @classmethod
    def from_dict(cls, d) -> "LayerPlan":
        return cls(d["permute"], tuple(d["thresholds"]), d["kept_ratio"], d.get("rel_l2"),
                   d.get("reference_rel_l2"), d.get("margin"), d.get("estimator", "mean"))


def layer_curves(q, k, v, *, block_size, segment_size, launch=None, variants=VARIANTS, tail_blocks=0,
                 column_blocks=0) -> dict:
    """{Variant: HeadCurves} of one layer (batch = samples), always with the reference variant;
    the dense output and the heaviest keys are computed once for all. The retrieval knobs are the
    entry's (PbsParams.tail_blocks, column_blocks): the thresholds are allocated around them."""
    dense = dense_reference(q, k, v)
    top = heaviest_keys(q, k, sampled_rows(q.shape[2], block_size))
    wanted = [REFERENCE_VARIANT] + [Variant(*x) for x in variants if Variant(*x) != REFERENCE_VARIANT]
    return {x: head_curves(q, k, v, block_size=block_size, segment_size=segment_size, permute=x.permute,
                           estimator=x.estimator, launch=launch, dense=dense, top=top,
                           tail_blocks=tail_blocks, column_blocks=column_blocks)
            for x in dict.fromkeys(wanted)}


def choose_plan(curves: dict, *, margin=0.95, reference=0.9) -> LayerPlan:
    """Per-head thresholds with output rel-L2 at most `margin` x the reference threshold's
    (REFERENCE_VARIANT's), each head keeping at least as many sampled queries' heaviest keys
    as the reference does; of the variants in `curves`, whichever keeps fewest blocks (the
    reference always qualifies).
    With several calibration samples the bound is validated out of sample (`held_out_margin`),
    for each variant on its own: one that fails out of sample must not shrink another's margin."""
    best = None
    for variant in curves:
        used = held_out_margin(curves, margin=margin, reference=reference, variants=(variant,))
        plan = _cheapest_plan(curves, used, reference, (variant,))
        plan.margin = used
        if best is None or plan.kept_ratio < best.kept_ratio:
            best = plan
    return best


def _cheapest_plan(curves: dict, margin: float, reference: float, variants=None) -> LayerPlan:
    """The reference, or the allocation on one of `variants` (default: all in `curves`) keeping
    fewest blocks within `margin` x the reference's error and the heaviest-key floor."""
    ref = curves[REFERENCE_VARIANT]
    g = ref.grid.index(reference)
    ref_kept = float(ref.kept[:, g].sum())
    need = ref.top_hits[:, g]
    ref_err = uniform_error(ref, reference)
    bound = margin * ref_err
    best = LayerPlan(True, (reference,) * ref.sq_err.shape[0], 1.0, ref_err, ref_err)
    for variant in variants or curves:
        c = curves[variant]
        thr = allocate(c, bound, c.floor(need))
        choice = torch.tensor([c.grid.index(t) for t in thr])
        rows = torch.arange(len(thr))
        kept = float(c.kept[rows, choice].sum()) / ref_kept
        err = c.rel_l2(choice)
        if err <= bound and bool((c.top_hits[rows, choice] >= need).all()) and kept < best.kept_ratio:
            best = LayerPlan(variant.permute, thr, kept, err, ref_err, estimator=variant.estimator)
    return best


VALIDATION_STEPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


def held_out_margin(curves: dict, *, margin: float, reference: float, variants=None) -> float:
    """The largest of margin x VALIDATION_STEPS at which, leaving out each calibration sample in
    turn, the plan fitted to the other samples (on `variants`, default all) keeps the left-out
    sample's layer rel-L2 within `margin` x the reference's there (the reference plan itself
    always passes); 0 (every head at the reference) if none does. One sample: `margin`."""
    parts = {p: c.parts for p, c in curves.items()}
    n = len(parts[REFERENCE_VARIANT])
    if n < 2:
        return margin

    # Per fold i: the curves of the other samples, and the bound on sample i.
    fitted = [{p: functools.reduce(operator.add, [s for j, s in enumerate(ps) if j != i]) for p, ps in parts.items()}
              for i in range(n)]
    bounds = [margin * uniform_error(parts[REFERENCE_VARIANT][i], reference) for i in range(n)]

    def holds(m, i):
        plan = _cheapest_plan(fitted[i], m, reference, variants)
        if plan.kept_ratio >= 1.0:
            return True
        left_out = parts[plan.variant][i]
        choice = torch.tensor([left_out.grid.index(t) for t in plan.thresholds])
        return left_out.rel_l2(choice) <= bounds[i]

    for step in VALIDATION_STEPS:
        if all(holds(margin * step, i) for i in range(n)):
            return margin * step
    return 0.0


def plan_layer(q, k, v, *, block_size, segment_size, launch=None, margin=0.95, reference=0.9,
               variants=VARIANTS) -> LayerPlan:
    """`choose_plan` on one layer's freshly measured curves."""
    return choose_plan(layer_curves(q, k, v, block_size=block_size, segment_size=segment_size, launch=launch,
                                    variants=variants), margin=margin, reference=reference)
