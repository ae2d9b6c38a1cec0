"""Accuracy measures of sparse attention against dense attention, and the dense reference itself."""
import math
import statistics

import torch
import torch.nn.functional as F


def rel_l2(out, ref) -> float:
    """||out - ref|| / ||ref||, computed in float64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def tail_rel_l2(out, ref, rows: int) -> float:
    """rel_l2 of the last `rows` query rows (dim -2) of every sequence and head: the rows whose logits
    a prefill returns and generation reads (of a chunked call, its own last rows). The whole output's
    error barely sees them (`rows` of N), and PBS picks their key blocks from one mean-pooled query
    per block, so a config can lose the far key they ask for and keep rel_l2 low."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"tail rows must be a whole number of query rows, 1 or more, got {rows!r}")
    if out.shape != ref.shape or out.dim() < 2:
        raise ValueError(f"tail_rel_l2 needs two outputs of one shape (..., rows, D), got "
                         f"{tuple(out.shape)} and {tuple(ref.shape)}")
    return rel_l2(out[..., -rows:, :], ref[..., -rows:, :])


def recall_from_lse(lse_sparse, lse_dense) -> float:
    """Mean share of the true softmax mass inside the kept blocks.

    Per query row that share is sum_kept exp(s) / sum_all exp(s) = exp(lse_kept - lse_all),
    so no N x N matrix is needed; both LSEs come from the attend kernel.
    """
    return float(torch.exp((lse_sparse - lse_dense).clamp(max=0.0)).mean())


def dense_reference(q, k, v, chunk_heads=8):
    """Causal attention in float32 (SDPA on upcast inputs, K/V repeated per chunk of heads)."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for h0 in range(0, q.shape[1], chunk_heads):
        h1 = min(q.shape[1], h0 + chunk_heads)
        kv = torch.arange(h0, h1, device=q.device) // group
        out[:, h0:h1] = F.scaled_dot_product_attention(
            q[:, h0:h1].float(), k[:, kv].float(), v[:, kv].float(), is_causal=True)
    return out


def dense_lse(q, k, v, block_size=None):
    """The natural-log log-sum-exp of every query row over all its causal keys (what
    `recall_from_lse` compares a sparse run's with). On a GPU, from the attend kernel with every
    block kept (blocks of 128: no N x N matrix at 128k); on the CPU, the interpreter's sizes, exactly
    in float32 from the scores."""
    if q.device.type == "cpu":
        group = q.shape[1] // k.shape[1]
        scores = (q.float() @ k.float().repeat_interleave(group, 1).transpose(-1, -2)) / math.sqrt(q.shape[-1])
        m, n = q.shape[2], k.shape[2]
        causal = torch.ones(m, n, dtype=torch.bool).tril(n - m)
        return torch.logsumexp(scores.masked_fill(~causal, float("-inf")), dim=-1)
    from ..op.pbs_attention import attend_blocks
    from ..op.permutation import identity_permutation
    from ..op.selection import causal_block_list
    perm = identity_permutation(k, v)
    blocks = causal_block_list(q.shape[1], perm.positions, block_size or 128)
    return attend_blocks(q, perm, blocks, return_lse=True)[1]


def config_point(q, k, v, exact, cfg) -> dict:
    """Kept density, output rel-L2 and that of the last query block (`tail_rel_l2`, against `exact`)
    of one (PbsParams, LaunchConfig) on these inputs; `cfg` None is a layer kept dense."""
    if cfg is None:
        return dict(dense=True, density=1.0, rel_l2=0.0, tail_rel_l2=0.0)
    from ..op.pbs_attention import attend_blocks, permute_and_select
    params, launch = cfg
    with torch.no_grad():
        perm, blocks = permute_and_select(q, k, v, params)
        out = attend_blocks(q, perm, blocks, launch=launch)
    return dict(dense=False, density=blocks.kept_blocks() / blocks.candidate_blocks(), rel_l2=rel_l2(out, exact),
                tail_rel_l2=tail_rel_l2(out, exact, params.block_size))


def mean_ci95(values) -> dict:
    """Mean of paired per-sequence differences with a 95% interval (normal approximation; NaN
    half-width from one value)."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return dict(mean=mean, ci95=[mean - half, mean + half])
