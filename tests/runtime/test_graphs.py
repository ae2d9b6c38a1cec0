"""The loader's CUDA-graph cache: which calls it serves, one graph per shape and config, least
recently used dropped, a failed capture said once and run eagerly. (Capture itself needs a GPU:
benchmarks/results/h200_crossover_graphs.json.)"""
import logging

import torch

from pbs_tune.runtime import graphs
from pbs_tune.profile.profiles import PbsParams
from pbs_tune import LaunchConfig

PARAMS, LAUNCH = PbsParams(16, 32, 0.9), LaunchConfig(16, 16, 4, 1)


def test_cpu_calls_and_long_prompts_are_not_graphed():
    cache = graphs.GraphCache(max_work=1 << 20)
    q, k = torch.randn(1, 2, 32, 64), torch.randn(1, 1, 32, 64)
    assert not cache.usable(q, k)
    assert cache.run(q, k, k, PARAMS, LAUNCH, None) is None


def test_one_graph_per_shape_and_config_least_recently_used_dropped(monkeypatch):
    built = []

    class Fake:
        def __init__(self, q, k, v, params, launch, scale):
            built.append((tuple(q.shape), params.threshold))

        def __call__(self, q, k, v):
            return q * 2

    monkeypatch.setattr(graphs, "GraphedOp", Fake)
    monkeypatch.setattr(graphs.GraphCache, "usable", lambda self, q, k: True)
    cache = graphs.GraphCache(capacity=2)
    q32, q48, k = torch.ones(1, 2, 32, 64), torch.ones(1, 2, 48, 64), torch.ones(1, 1, 48, 64)
    assert torch.equal(cache.run(q32, k, k, PARAMS, LAUNCH, None), q32 * 2)
    cache.run(q32, k, k, PARAMS, LAUNCH, None)                       # replayed, not rebuilt
    cache.run(q48, k, k, PARAMS, LAUNCH, None)
    cache.run(q32, k, k, PbsParams(16, 32, 0.8), LAUNCH, None)       # another config: a third graph
    assert built == [((1, 2, 32, 64), 0.9), ((1, 2, 48, 64), 0.9), ((1, 2, 32, 64), 0.8)]
    cache.run(q32, k, k, PARAMS, LAUNCH, None)                       # dropped as least recent: rebuilt
    assert len(built) == 4 and len(cache.graphs) == 2


def test_a_failed_capture_is_said_once_and_the_op_runs_eagerly(monkeypatch, caplog):
    def broken(*a):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "GraphedOp", broken)
    monkeypatch.setattr(graphs.GraphCache, "usable", lambda self, q, k: True)
    cache = graphs.GraphCache()
    q, k = torch.ones(1, 2, 32, 64), torch.ones(1, 1, 32, 64)
    with caplog.at_level(logging.WARNING, logger="pbs_tune"):
        assert cache.run(q, k, k, PARAMS, LAUNCH, None) is None
        assert cache.run(q, k, k, PARAMS, LAUNCH, None) is None
    assert len(caplog.records) == 1 and "runs eagerly" in caplog.records[0].getMessage()


def test_room_for_one_graph_per_planned_layer_so_a_forward_pass_never_recaptures(monkeypatch):
    built = []

    class Fake:
        def __init__(self, q, k, v, params, launch, scale):
            built.append(params.threshold)

        def __call__(self, q, k, v):
            return q

    monkeypatch.setattr(graphs, "GraphedOp", Fake)
    monkeypatch.setattr(graphs.GraphCache, "usable", lambda self, q, k: True)
    cache = graphs.GraphCache(capacity=2)
    cache.hold(3)
    cache.hold(1)  # never shrinks
    q, k = torch.ones(1, 2, 32, 64), torch.ones(1, 1, 32, 64)
    layers = [PbsParams(16, 32, t) for t in (0.7, 0.8, 0.9)]  # three layers, three plans
    for _ in range(3):  # three forward passes
        for p in layers:
            cache.run(q, k, k, p, LAUNCH, None)
    assert built == [0.7, 0.8, 0.9]


def test_applying_per_layer_plans_makes_room_for_a_graph_per_layer(tmp_path):
    from helpers import TINY_SHAPE, profile_entry, tiny_llama, write_profile
    import pbs_tune
    from pbs_tune.profile import profiles
    from pbs_tune.runtime.state import STATE
    model = tiny_llama(num_hidden_layers=graphs.CAPACITY + 4)
    layer = dict(params=dict(block_size=16, segment_size=32, threshold=0.8), launch=dict(block_m=16, block_n=16,
                                                                                        num_warps=4, num_stages=1))
    planned = dict(profile_entry(64, 0.9, **TINY_SHAPE), layers={str(i): layer for i in range(0, 12, 2)})
    pbs_tune.apply(model, profiles.load(write_profile(tmp_path, [planned])))
    assert STATE.graphs.capacity >= graphs.CAPACITY + model.config.num_hidden_layers
