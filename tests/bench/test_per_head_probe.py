"""The retrieval probe around per-layer plans: the margin shrinks while the plans lose probes."""
from types import SimpleNamespace

import torch

from pbs_tune.bench import per_head
from pbs_tune.tune.allocate import HeadCurves


def _curves():
    grid = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0)
    g = len(grid)
    err = torch.linspace(0.2, 0.0, g, dtype=torch.float64).expand(2, g).clone()
    kept = torch.linspace(10, 100, g, dtype=torch.float64).expand(2, g).clone()
    hits = torch.full((2, g), 8.0, dtype=torch.float64)
    c = HeadCurves(grid, err, kept, torch.ones(2, dtype=torch.float64), hits)
    return {0: {True: c, False: c}}


def test_the_margin_shrinks_until_the_plans_answer_as_many_probes(monkeypatch):
    answers = iter([10, 7, 9, 10, 0])  # default, then margins 0.95, 0.8, 0.6 (stops there)
    applied = []
    monkeypatch.setattr(per_head, "retrieval_hits", lambda model, tok, prompts: next(answers))
    monkeypatch.setattr(per_head, "retrieval_prompts", lambda *a, **k: [None] * 40)
    monkeypatch.setattr(per_head, "_apply", lambda model, entry: applied.append(entry))
    model = SimpleNamespace(config=SimpleNamespace(num_attention_heads=2, num_key_value_heads=1, head_dim=64))
    layers, alloc, log = per_head._probed_plans(model, None, _curves(), [torch.zeros(8)], 8192, 0.95, 40, None)
    assert [row.get("margin") for row in log] == [None, 0.95, 0.8, 0.6]
    assert [row["hits"] for row in log] == [10, 7, 9, 10]
    assert alloc[0]["margin"] == 0.6 and len(applied) == 4
    kept = [row["mean_kept_ratio"] for row in log[1:]]
    assert kept == sorted(kept)  # a tighter bound keeps more blocks
    params, _ = layers[0]
    assert len(params.threshold) == 2
