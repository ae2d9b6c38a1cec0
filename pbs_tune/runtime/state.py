"""What the runtime keeps between calls in one process, in one object instead of module globals.

Counters of what ran (`stats`), the profile `tuned_attention` loads on first use, the kernel
libraries bound and the configs warmed up (each once per process), the CUDA graphs (shared by
every layer and model), the copies of profiles resolved for this GPU and the serving object of each
profile `tuned_attention` runs. What one applied model holds is its own (serving.PbsServing).
"""
import collections
import threading

from .graphs import GraphCache


class RuntimeState:
    def __init__(self):
        self._stats = collections.Counter()
        self._stats_lock = threading.Lock()
        self.default_profile = None
        self.bound_libraries = {}  # library folder -> kernels bound (0: unusable, the JIT runs)
        self.prewarmed = set()     # KernelKey
        self.graphs = GraphCache()
        self.resolved = {}         # id of a profile read with profiles.load() -> (weak ref to it, its copy)
        self.servings = {}         # id of a profile tuned_attention ran -> (weak ref to it, its PbsServing), last 4

    def count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    def stats(self) -> dict:
        with self._stats_lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._stats.clear()


STATE = RuntimeState()


def stats() -> dict:
    """Calls that ran PBS ('pbs') and SDPA fallbacks by reason ('fallback:<reason>')."""
    return STATE.stats()


def reset_stats() -> None:
    """Start the counters of `stats()` again (e.g. before a benchmark)."""
    STATE.reset_stats()
