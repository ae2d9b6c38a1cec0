"""The op replayed from CUDA graphs, one per (shape, config), where launching its ~25 kernels
from Python costs more than running them: few query heads or short prompts.

H200, bf16, kernels from the library (benchmarks/results/h200_crossover_fused.json,
h200_stages_fused.json): 8/2 heads at 8k run 0.62 ms eagerly and 0.34 ms from a graph; 32/8 at
8k run 0.83 ms eagerly and 0.90 ms from a graph, whose input copies then cost more than the
launches it saves. So graphs serve calls of fewer than 2^18 query-head tokens (query heads x
keys: 32 heads x 4k, 8 heads x 16k, ...). Each graph owns static input buffers: a call copies
q/k/v in (contiguous, the layout the kernel library was built for), replays, and returns its own
copy of the output.

Not used: on the CPU, while another CUDA graph is being captured (the caller's own capture, e.g.
a compiled model), from 2^18 query-head tokens up, and beyond `capacity` distinct shapes (least
recently used graphs are dropped, with their memory). A model with per-layer plans calls one
config per layer in turn, so `apply` makes room for one graph per layer (`hold`); with fewer,
every call would capture anew (SmolLM2, 30 planned layers at 8k: 169 ms prefill against 23 ms).
"""
import collections
import logging

import torch

from ..op.pbs_attention import pbs_attention

logger = logging.getLogger("pbs_tune")
MAX_WORK = 1 << 18  # query heads x keys below which a graph beats eager launches (H200, see above)
CAPACITY = 8


class GraphedOp:
    """`pbs_attention` for one shape and config, captured once and replayed."""

    def __init__(self, q, k, v, params, launch, scale):
        self.q, self.k, self.v = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        for static, t in ((self.q, q), (self.k, k), (self.v, v)):
            static.copy_(t)

        def op():
            return pbs_attention(self.q, self.k, self.v, params, launch=launch, scale=scale)
        side = torch.cuda.Stream(device=q.device)
        side.wait_stream(torch.cuda.current_stream(q.device))
        with torch.cuda.stream(side):  # warm-up outside the capture: first-use work (lazy loads, caches)
            op()
        torch.cuda.current_stream(q.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = op()

    def __call__(self, q, k, v):
        self.q.copy_(q)
        self.k.copy_(k)
        self.v.copy_(v)
        self.graph.replay()
        return self.out.clone()


class GraphCache:
    """Graphs by (shapes, dtype, device, config, scale), least recently used dropped first."""

    def __init__(self, capacity=CAPACITY, max_work=MAX_WORK):
        self.capacity, self.max_work = capacity, max_work
        self.graphs = collections.OrderedDict()
        self.failed = set()

    def hold(self, n: int) -> None:
        """Keep at least `n` graphs (never fewer than now)."""
        self.capacity = max(self.capacity, n)

    def usable(self, q, k) -> bool:
        return (q.is_cuda and q.shape[1] * k.shape[2] < self.max_work
                and not torch.cuda.is_current_stream_capturing())

    def run(self, q, k, v, params, launch, scale):
        """The op's output through this shape's graph, or None where a graph cannot serve."""
        if not self.usable(q, k):
            return None
        key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, params, launch, scale)
        if key in self.failed:
            return None
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = GraphedOp(q, k, v, params, launch, scale)
            except RuntimeError as exc:  # e.g. a kernel that syncs the host: say once, run eagerly
                self.failed.add(key)
                logger.warning("pbs_tune: no CUDA graph for %s (%s); the op runs eagerly",
                               tuple(q.shape), str(exc).splitlines()[0])
                return None
            self.graphs[key] = graph
            while len(self.graphs) > self.capacity:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        return graph(q, k, v)
