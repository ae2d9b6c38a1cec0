"""The PBS-Attn prefill op: permute -> select -> attend, with input checks up front."""
import dataclasses
import functools
import logging
import math
import os
from typing import Any

import torch

from ..kernels import attend_launch
from ..profile.launch import LaunchConfig, default_launch
from ..profile.params import PbsParams
from .permutation import KeyPermutation, identity_permutation, permute_keys
from .selection import BlockList, select_blocks

logger = logging.getLogger("pbs_tune")
SUPPORTED_HEAD_DIMS = (64, 128)
GPU_DTYPES = (torch.float16, torch.bfloat16)


def as_params(params=None, *, block_size=None, segment_size=None, threshold=None, permute=None,
              estimator=None, tail_blocks=None, column_blocks=None) -> PbsParams:
    """The op's parameters, given as one `PbsParams` or in the keyword form (checked there)."""
    keywords = dict(block_size=block_size, segment_size=segment_size, threshold=threshold, permute=permute,
                    estimator=estimator, tail_blocks=tail_blocks, column_blocks=column_blocks)
    given = {k: v for k, v in keywords.items() if v is not None}
    if params is not None:
        if not isinstance(params, PbsParams):
            raise TypeError(f"params must be a PbsParams, got {type(params).__name__}")
        if given:
            raise TypeError(f"give the parameters as params= or as keywords, not both ({', '.join(given)})")
        return params
    missing = [k for k in ("block_size", "segment_size", "threshold") if k not in given]
    if missing:
        raise TypeError(f"give params=PbsParams(...) or the keywords {', '.join(missing)}")
    return PbsParams(**given)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: PbsParams | None = None, *,
                 launch: LaunchConfig | None = None, **keywords: Any) -> PbsParams:
    """Raise one clear TypeError/ValueError for anything the kernels cannot do exactly; returns the
    parameters (`params`, or made from the keyword form). Arguments as `pbs_attention`'s."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head_dim")
    if k.shape[2] < N:
        raise ValueError(f"q is longer than k ({N} > {k.shape[2]} positions): queries are the last positions of "
                         f"the keys, so k and v must hold the whole prefix (chunked prefill: cache + chunk)")
    if B < 1 or N < 1 or k.shape[1] < 1:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if Hq % k.shape[1]:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {D} is not supported; use one of {SUPPORTED_HEAD_DIMS}")
    if q.device.type == "cuda":
        if q.dtype not in GPU_DTYPES:
            raise TypeError(f"on GPU the op takes float16 or bfloat16, got {q.dtype}")
    elif q.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("CPU tensors run only under Triton's interpreter: set TRITON_INTERPRET=1")
        if q.dtype not in (torch.float32, torch.float16):
            raise TypeError(f"on CPU (interpreter) the op takes float32 or float16, got {q.dtype}")
    else:
        raise ValueError(f"unsupported device {q.device}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")
    params = as_params(params, **keywords)
    params.per_head(Hq)
    if launch is not None:
        if not isinstance(launch, LaunchConfig):
            raise TypeError(f"launch must be a LaunchConfig, got {type(launch).__name__}")
        launch.check(params.block_size)
    return params


def refuse_grad(op, *tensors):
    """One clear error where autograd would need a backward the op does not have."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError(f"{op} is forward-only (prefill inference) and has no backward: call it "
                         "under torch.no_grad() or torch.inference_mode(), or detach the inputs")


def default_scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def attend_blocks(q: torch.Tensor, perm: KeyPermutation, blocks: BlockList, *, launch: LaunchConfig | None = None,
                  scale: float | None = None, out: torch.Tensor | None = None,
                  return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Stage 3: FlashAttention forward over the kept blocks only. Inputs are not checked here (`check_inputs`).

    Args:
        q: (B, Hq, M, D) queries, the last M <= N key positions, as given to the stages before.
        perm: stage 1's `KeyPermutation`: k, v (B, Hkv, N, D) in permuted order, positions (B, Hkv, N) int32.
        blocks: stage 2's `BlockList` for these q and perm.
        launch: tiles and kernel; None: the default for this block size, head_dim and GPU. Inputs the
            Hopper kernel cannot address (not 16-byte aligned) run on the portable kernel.
        scale: softmax scale; None: 1 / sqrt(D).
        out: a (B, Hq, M, D) tensor (or view) to write into; None: a new one like q.
        return_lse: also return each query row's natural-log log-sum-exp over its kept keys.

    Returns:
        out (B, Hq, M, D) in original token order; with return_lse, (out, lse (B, Hq, M) float32).
    """
    scale = default_scale(q, scale)
    launch = launch or default_launch(blocks.block_size, q.shape[-1],
                                      torch.cuda.get_device_capability(q.device) if q.is_cuda else None)
    if launch.tma:
        if q.is_cuda:
            launch.check_device(torch.cuda.get_device_capability(q.device))
        if not tma_compatible(q, perm.k, perm.v, out):
            _note_portable()
            launch = portable(launch)
    return attend_launch(q, perm.k, perm.v, perm.positions, blocks.count, blocks.full, blocks.index,
                         block_size=blocks.block_size, scale=scale, out=out, return_lse=return_lse,
                         **launch.as_dict())


def tma_compatible(*tensors) -> bool:
    """Whether tensor descriptors can address these tensors: 16-byte aligned base and strides."""
    for t in tensors:
        if t is None:
            continue
        size = t.element_size()
        if t.data_ptr() % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
            return False
    return True


def portable(launch: LaunchConfig) -> LaunchConfig:
    """The same tiles on the portable kernel (for inputs the Hopper kernel cannot address)."""
    return dataclasses.replace(launch, tma=False, programs_per_sm=0)


@functools.lru_cache(maxsize=1)
def _note_portable():
    logger.warning("pbs_tune: inputs are not 16-byte aligned for tensor descriptors; the portable attend "
                   "kernel runs instead of the Hopper one (make q, k, v contiguous to avoid this)")


def key_order(q, k, v, *, block_size, segment_size, scale=None, permute=True):
    """Stage 1: the key permutation (identity with permute=False); it does not depend on the threshold."""
    if permute:
        return permute_keys(q, k, v, block_size=block_size, segment_size=segment_size, scale=default_scale(q, scale))
    return identity_permutation(k, v)


def permute_and_select(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: PbsParams | None = None, *,
                       scale: float | None = None, **keywords: Any) -> tuple[KeyPermutation, BlockList]:
    """Stages 1 and 2: the key permutation and the kept-block list, no attention yet (`attend_blocks` does it).

    Args:
        q: (B, Hq, M, D) queries, the last M <= N key positions; not checked here (`check_inputs` does it).
        k: (B, Hkv, N, D) keys in original order, Hq % Hkv == 0.
        v: (B, Hkv, N, D) values.
        params: one `PbsParams`; None: its fields as keywords.
        scale: softmax scale of the scoring; None: 1 / sqrt(D).
        **keywords: PbsParams' fields (block_size, segment_size, threshold, ...), in place of params.

    Returns:
        (KeyPermutation, BlockList): k, v and positions (B, Hkv, N) int32 in permuted order (the identity
        with permute=False), and the kept key blocks per (batch, query head, query block).
    """
    params = as_params(params, **keywords)
    scale = default_scale(q, scale)
    perm = key_order(q, k, v, block_size=params.block_size, segment_size=params.segment_size, scale=scale,
                     permute=params.permute)
    blocks = select_blocks(q, perm.k, perm.positions, block_size=params.block_size,
                           segment_size=params.segment_size, threshold=params.threshold, scale=scale,
                           estimator=params.estimator, tail_blocks=params.tail_blocks,
                           column_blocks=params.column_blocks, k=k, key_mass=perm.scores)
    return perm, blocks


def pbs_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: PbsParams | None = None, *,
                  launch: LaunchConfig | None = None, scale: float | None = None, return_blocks: bool = False,
                  out: torch.Tensor | None = None, **keywords: Any) -> torch.Tensor | tuple[torch.Tensor, BlockList]:
    """Causal PBS-Attn prefill, forward only: permute the keys, select key blocks, attend to the kept ones.

    Permutation and selection cover all N keys; the output is in the original token order.

    Args:
        q: (B, Hq, M, D), the last M <= N key positions (M < N: a chunk after its cached prefix; query i
            attends to keys 0 .. N - M + i). float16/bfloat16 on CUDA, float32/float16 on CPU (TRITON_INTERPRET=1).
        k: (B, Hkv, N, D) keys of the whole prompt, Hq % Hkv == 0, D 64 or 128; q's dtype and device.
        v: (B, Hkv, N, D) values, as k. q, k and v need a contiguous last dimension (stride 1).
        params: one `PbsParams`; None: its fields as keywords.
        launch: tiles and kernel (`LaunchConfig`); None: the default for this GPU.
        scale: softmax scale; None: 1 / sqrt(D).
        return_blocks: also return the `BlockList` (its density(): kept over causal blocks).
        out: a (B, Hq, M, D) tensor (or view) to write into; None: a new one like q.
        **keywords: PbsParams' fields in place of params: block_size, segment_size, threshold (required),
            permute, estimator, tail_blocks, column_blocks.

    Returns:
        (B, Hq, M, D) in q's dtype; with return_blocks, (out, BlockList).
    """
    params = check_inputs(q, k, v, params, launch=launch, **keywords)
    refuse_grad("pbs_attention", q, k, v)
    with torch.no_grad():
        perm, blocks = permute_and_select(q, k, v, params, scale=scale)
        out = attend_blocks(q, perm, blocks, launch=launch, scale=scale, out=out)
    return (out, blocks) if return_blocks else out
