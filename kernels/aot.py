"""Ahead-of-time compilation of the attend kernel for a named GPU target.

Used to check portability (e.g. sm_80 from an sm_90 or CPU-only machine) and to build
kernels before run time. Needs the real JIT function, so not under TRITON_INTERPRET=1.
"""
import triton
from triton.backends.compiler import GPUTarget

from .attend import _attend_fwd

_POINTERS = {"Q": "dt", "K": "dt", "V": "dt", "O": "dt", "POS": "*i32", "LSE": "*fp32",
             "KV_COUNT": "*i32", "KV_FULL": "*i32", "KV_IDX": "*i32"}
_DTYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}


def compile_attend(*, arch: int, dtype: str, head_dim: int, block_size: int, block_m: int,
                   block_n: int, num_warps: int, num_stages: int, store_lse: bool = False):
    """Compile for CUDA compute capability `arch` (80, 90, ...); returns Triton's kernel."""
    if not isinstance(_attend_fwd, triton.runtime.JITFunction):
        raise RuntimeError("ahead-of-time compilation is unavailable under TRITON_INTERPRET=1")
    consts = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, SEL_BLOCK=block_size,
                  STORE_LSE=store_lse)
    sig = {}
    for name in _attend_fwd.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in _POINTERS:
            sig[name] = _DTYPES[dtype] if _POINTERS[name] == "dt" else _POINTERS[name]
        else:
            sig[name] = "fp32" if name == "qk_scale" else "i32"
    src = triton.compiler.ASTSource(fn=_attend_fwd, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))
