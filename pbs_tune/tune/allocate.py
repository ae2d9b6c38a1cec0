"""Per-head thresholds under one error bound per layer.

A single threshold pays for the hardest head everywhere; heads of real models differ by orders
of magnitude (SmolLM2: per-head output error 0.002-0.58 at threshold 0.9). Squared output error
adds up over heads, ||O - Ô||² = Σ_h ||O_h - Ô_h||², so a layer's relative L2 error stays within
`bound` exactly when Σ_h e_h(τ_h) ≤ bound² · Σ_h ||O_h||². Each head's squared error e_h and kept
blocks k_h are measured on a grid of thresholds (one run of the op per grid value, every head at
once, summed over calibration samples); a Lagrangian relaxation gives each head the τ_h that
minimises k_h + λ·e_h, and a bisection on λ finds the fewest kept blocks within the bound.
"""
from dataclasses import dataclass

import torch

from ..op.pbs_attention import pbs_attention
from .metrics import dense_reference

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0)


@dataclass
class HeadCurves:
    """Per query head, on `grid`: squared output error, kept blocks; and the dense output's
    squared norm. Sums over calibration samples, so curves of several samples add up."""

    grid: tuple
    sq_err: torch.Tensor  # (H, G) float64
    kept: torch.Tensor    # (H, G) float64
    ref_sq: torch.Tensor  # (H,) float64

    def __add__(self, other):
        assert self.grid == other.grid
        return HeadCurves(self.grid, self.sq_err + other.sq_err, self.kept + other.kept, self.ref_sq + other.ref_sq)

    def rel_l2(self, choice) -> float:
        """The layer's relative L2 error with grid index `choice[h]` per head."""
        rows = torch.arange(len(choice))
        return float((self.sq_err[rows, choice].sum() / self.ref_sq.sum()).sqrt())


def head_curves(q, k, v, *, block_size, segment_size, permute=True, grid=GRID, launch=None) -> HeadCurves:
    """Measure every head's error and kept blocks at each grid threshold on one sample."""
    dense = dense_reference(q, k, v).double()
    ref_sq = dense.pow(2).sum(dim=(0, 2, 3))
    sq_err = torch.empty((q.shape[1], len(grid)), dtype=torch.float64)
    kept = torch.empty_like(sq_err)
    with torch.no_grad():
        for g, thr in enumerate(grid):
            out, blocks = pbs_attention(q, k, v, block_size=block_size, segment_size=segment_size, threshold=thr,
                                        launch=launch, permute=permute, return_blocks=True)
            sq_err[:, g] = (out.double() - dense).pow(2).sum(dim=(0, 2, 3)).cpu()
            kept[:, g] = blocks.count.double().sum(dim=(0, 2)).cpu()
    return HeadCurves(tuple(grid), sq_err, kept, ref_sq.cpu())


def allocate(curves: HeadCurves, bound: float) -> tuple:
    """Per-head thresholds with the fewest kept blocks whose layer rel-L2 stays <= `bound`
    (on the calibration samples). If even the highest grid value misses it, that value.

    The Lagrangian solution is compared with a greedy descent from the best single threshold
    (on a discrete grid the Lagrangian can miss points of the front): never worse than uniform."""
    budget = bound ** 2 * float(curves.ref_sq.sum())
    heads = curves.sq_err.shape[0]
    rows = torch.arange(heads)
    last = torch.full((heads,), len(curves.grid) - 1)

    def error(choice):
        return float(curves.sq_err[rows, choice].sum())

    def kept(choice):
        return float(curves.kept[rows, choice].sum())

    if error(last) > budget:
        return tuple(curves.grid[-1] for _ in range(heads))
    candidates = [_lagrangian(curves, budget, error), _greedy(curves, budget, _best_uniform(curves, budget, error))]
    best = min(candidates, key=kept)
    return tuple(curves.grid[int(i)] for i in best)


def _lagrangian(curves, budget, error):
    def pick(lam):
        return torch.argmin(curves.kept + lam * curves.sq_err, dim=1)
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


def _best_uniform(curves, budget, error):
    heads = curves.sq_err.shape[0]
    for g in range(len(curves.grid)):  # thresholds ascend, and with them the kept blocks
        choice = torch.full((heads,), g)
        if error(choice) <= budget:
            return choice
    return torch.full((heads,), len(curves.grid) - 1)


def _greedy(curves, budget, choice):
    """Lower one head's threshold at a time, the move saving most blocks per unit of error."""
    choice = choice.clone()
    spent = float(curves.sq_err[torch.arange(len(choice)), choice].sum())
    while True:
        best, best_gain = None, 0.0
        for h in range(len(choice)):
            g = int(choice[h])
            if g == 0:
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
