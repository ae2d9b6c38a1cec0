"""Ahead-of-time compilation for a named GPU target, without a GPU.

`compile_call` compiles exactly the kernel Triton's JIT would build for a recorded call
(`launch.recording()`): the same signature, constexprs and specialisation, for any CUDA
arch. Used to check portability (sm_80 from anywhere) and by the tests of the kernel
library. Needs the real JIT functions, so not under TRITON_INTERPRET=1.
"""
import torch
import triton
from triton.backends.compiler import GPUTarget

from . import launch


def compile_call(call, *, arch: int):
    """Triton's CompiledKernel of `call` (a launch.Call) for CUDA compute capability `arch`."""
    return compile_key(call.fn, launch.call_key(call.fn, call.args, call.constexprs, call.num_warps, call.num_stages),
                       arch=arch)


def compile_key(fn, key, *, arch: int):
    """Triton's CompiledKernel of the kernel `key` (launch.call_key) names, for `arch`: all the key
    holds (signature, specialisation, constexprs, warps, stages) is all the JIT compiles from."""
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError("ahead-of-time compilation is unavailable under TRITON_INTERPRET=1")
    _, sig, consts, num_warps, num_stages = key
    kinds = {name: (kind, div16) for name, kind, div16 in sig}
    consts = dict(consts)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        else:
            signature[name], div16 = kinds[name]
            if div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def attend_call(*, dtype: str, head_dim: int, block_size: int, block_m: int, block_n: int, num_warps: int,
                num_stages: int, tma=False, programs_per_sm=0, heads=8, kv_heads=2, seqlen=None):
    """The attend kernel's call for a small CPU problem of this config (nothing runs)."""
    from .attend import attend_launch
    dt = getattr(torch, dtype)
    n = seqlen or 2 * block_size
    nb = -(-n // block_size)
    q = torch.empty(1, heads, n, head_dim, dtype=dt)
    k = torch.empty(1, kv_heads, n, head_dim, dtype=dt)
    pos = torch.arange(n, dtype=torch.int32).expand(1, kv_heads, n).contiguous()
    count = torch.zeros(1, heads, nb, dtype=torch.int32)
    index = torch.zeros(1, heads, nb, nb, dtype=torch.int32)
    with launch.recording() as calls:
        attend_launch(q, k, k, pos, count, count, index, block_size=block_size, scale=head_dim ** -0.5,
                      block_m=block_m, block_n=block_n, num_warps=num_warps, num_stages=num_stages, tma=tma,
                      programs_per_sm=programs_per_sm)
    return calls[0]


def compile_attend(*, arch: int, dtype: str, head_dim: int, block_size: int, **launch):
    """The attend kernel of one launch config (LaunchConfig fields), compiled for `arch` (80, 90, ...)."""
    return compile_call(attend_call(dtype=dtype, head_dim=head_dim, block_size=block_size, **launch), arch=arch)
