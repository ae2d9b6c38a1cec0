"""How many kernels one call launches: the chunk after a prefix (with its state) against the stateless op.

Why: below a 2k chunk the state path's time is launches, not work (issue 46: about 1 ms of a 2k
chunk), and fusing its extension is judged by how many it removes. A count is the same on any
device: the same Python issues the same torch ops and Triton kernels (a CUDA graph replays them, the
kernel library launches them without the JIT: neither changes how many). So it runs on the CPU
under Triton's interpreter, whose own bookkeeping inside each launch is left out.

Counted: Triton kernels (`kernels.launch.calls_seen`) and every torch op that does work on the
device (copies, fills, arithmetic, index ops, reductions); views and bare allocations are not. One
JSON line per (prefix, chunk, path) appended to --out:

    python -m pbs_tune.bench.launch_count --prefix 384 --chunk 128 --out counts.jsonl
"""
import argparse
import collections
import contextlib
import json

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..kernels import launch as kernel_launch
from ..measure.timing import env_info
from ..op.pbs_attention import pbs_attention
from ..op.prefix import PrefixState, pbs_attention_chunk
from ..profile.params import PbsParams
from ..seqlen import parse_length

NO_WORK = {"aten.empty", "aten.empty_strided", "aten.empty_like", "aten._unsafe_view", "aten.lift_fresh"}


class TorchOps(TorchDispatchMode):
    """Counts torch ops that launch device work, by name; paused inside an interpreted Triton launch."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not self.paused and not func.is_view and name not in NO_WORK:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting():
    """(Triton calls, torch op Counter) of what runs inside."""
    ops = TorchOps()
    with _interpreter_paused(ops), kernel_launch.calls_seen() as calls, ops:
        yield calls, ops.ops


@contextlib.contextmanager
def _interpreter_paused(ops: TorchOps):
    """The interpreter moves each launch's arguments with torch ops of its own: not the op's launches."""
    try:
        from triton.runtime.interpreter import GridExecutor
    except ImportError:
        yield
        return
    plain = GridExecutor.__call__

    def launch(self, *args, **kwargs):
        ops.paused = True
        try:
            return plain(self, *args, **kwargs)
        finally:
            ops.paused = False
    GridExecutor.__call__ = launch
    try:
        yield
    finally:
        GridExecutor.__call__ = plain


def count_chunk(q, k, v, params: PbsParams, prefix: int, keep_keys: bool = False) -> dict:
    """Launches of the chunk q[:, :, prefix:] against all keys, in steady state (each path run once
    before, uncounted: first calls fill caches): with the prefix's state (built uncounted), and stateless."""
    def chunk_with_state():
        state = PrefixState(keep_keys)
        pbs_attention_chunk(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], params, state=state)
        return lambda: pbs_attention_chunk(q[:, :, prefix:], k, v, params, state=state)
    rows = {}
    with torch.no_grad():
        for path, make in (("state_keep_keys" if keep_keys else "state", chunk_with_state),
                           ("stateless", lambda: lambda: pbs_attention(q[:, :, prefix:], k, v, params))):
            make()()
            call = make()
            with counting() as (calls, ops):
                call()
            rows[path] = _row(calls, ops)
    return rows


def _row(calls, ops) -> dict:
    kernels = collections.Counter(c.fn.__name__ for c in calls)
    return dict(launches=len(calls) + sum(ops.values()), triton=len(calls), torch=sum(ops.values()),
                triton_kernels=dict(kernels), torch_ops=dict(ops.most_common()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="384", help="prefix lengths, comma-separated (e.g. 32k,127k on a GPU)")
    ap.add_argument("--chunk", default="128", help="chunk lengths, comma-separated (e.g. 2k,8k)")
    ap.add_argument("--shape", default=None,
                    help="HEADS/KV_HEADS/HEAD_DIM (default 32/8/128 on a GPU, 2/1/64 on the CPU)")
    ap.add_argument("--block-size", type=int, default=None, help="block (default 128 on a GPU, 16 on the CPU)")
    ap.add_argument("--keep-keys", action="store_true", help="also count the state that holds the permuted K/V")
    ap.add_argument("--out", required=True, help="JSON-lines file appended to")
    a = ap.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    heads, kv_heads, head_dim = (int(x) for x in (a.shape or ("32/8/128" if on_gpu else "2/1/64")).split("/"))
    bs = a.block_size or (128 if on_gpu else 16)
    params = PbsParams(bs, 2 * bs, 0.9)
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    env = env_info()
    for prefix in (parse_length(x) for x in a.prefix.split(",")):
        for chunk in (parse_length(x) for x in a.chunk.split(",")):
            n = prefix + chunk
            q = torch.randn(1, heads, n, head_dim, device=device, dtype=dtype)
            k, v = (torch.randn(1, kv_heads, n, head_dim, device=device, dtype=dtype) for _ in range(2))
            paths = count_chunk(q, k, v, params, prefix)
            if a.keep_keys:
                paths.update(count_chunk(q, k, v, params, prefix, keep_keys=True))
            for path, row in paths.items():
                line = dict(prefix=prefix, chunk=chunk, path=path, shape=f"{heads}/{kv_heads}/{head_dim}",
                            block_size=bs, **row, env=env)
                with open(a.out, "a") as f:
                    f.write(json.dumps(line) + "\n")
                print(f"prefix {prefix} chunk {chunk} {path}: {row['launches']} launches "
                      f"({row['triton']} Triton, {row['torch']} torch)")


if __name__ == "__main__":
    main()
