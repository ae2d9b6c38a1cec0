"""The op replayed from CUDA graphs, one per (shape, config), for prompts short enough that
launching its ~30 kernels from Python costs more than running them.

At 8k tokens (H200, 32/8 heads) the op's kernels take 0.92 ms on the GPU but issuing them takes
1.8 ms: the host is the bottleneck (benchmarks/results/h200_stages.json). A graph issues them
all at once. Each graph owns static input buffers: a call copies q/k/v in (contiguous, the
layout the kernel library was built for), replays, and returns its own copy of the output.

Not used: on the CPU, while another CUDA graph is being captured (the caller's own capture, e.g.
a compiled model), above `max_keys` keys (launches are then a small share), and beyond `capacity`
distinct shapes (least recently used graphs are dropped, with their memory).
"""
import collections
import logging

import torch

from ..op.pbs_attention import pbs_attention

logger = logging.getLogger("pbs_tune")
MAX_KEYS = 16384   # H200: graph 1.9x faster at 8k, 1.02x at 32k (h200_stages.json)
CAPACITY = 8


class GraphedOp:
    """`pbs_attention` for one shape and config, captured once and replayed."""

    def __init__(self, q, k, v, params, launch, scale):
        self.q, self.k, self.v = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        for static, t in ((self.q, q), (self.k, k), (self.v, v)):
            static.copy_(t)

        def op():
            return pbs_attention(self.q, self.k, self.v, block_size=params.block_size,
                                 segment_size=params.segment_size, threshold=params.threshold, launch=launch,
                                 scale=scale, permute=params.permute)
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

    def __init__(self, capacity=CAPACITY, max_keys=MAX_KEYS):
        self.capacity, self.max_keys = capacity, max_keys
        self.graphs = collections.OrderedDict()
        self.failed = set()

    def usable(self, q, k) -> bool:
        return (q.is_cuda and k.shape[2] <= self.max_keys and not torch.cuda.is_current_stream_capturing())

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
