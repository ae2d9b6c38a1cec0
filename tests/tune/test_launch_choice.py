"""A launch is chosen over several sources: never slower than the stock launch anywhere beyond
noise, then the best geometric mean (tune/launch_choice.py)."""
import pytest
import torch

from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.profile.target import Target
from pbs_tune.profile import profiles
from pbs_tune.tune import launch_choice
from pbs_tune.tune.launch_choice import NOISE, robust_pick


def test_a_launch_fast_on_one_source_but_slow_on_another_is_not_chosen():
    times = {"stock": dict(a=10.0, b=10.0, c=10.0),
             "fragile": dict(a=7.0, b=9.0, c=11.5),    # best on a, 15% slower than stock on c
             "steady": dict(a=9.0, b=9.2, c=9.9)}
    chosen, summary = robust_pick(times, "stock")
    assert chosen == "steady"
    assert not summary["fragile"]["qualifies"] and summary["fragile"]["worst"] == round(10 / 11.5, 4)
    assert summary["steady"]["geomean"] == pytest.approx((10 / 9 * 10 / 9.2 * 10 / 9.9) ** (1 / 3), abs=1e-4)


def test_noise_is_tolerated_and_the_stock_launch_wins_when_nothing_beats_it():
    slight = 10.0 / (1 - NOISE / 2)  # slower than stock by less than the noise on one source
    chosen, _ = robust_pick({"stock": dict(a=10.0, b=10.0), "x": dict(a=8.0, b=slight)}, "stock")
    assert chosen == "x"
    chosen, summary = robust_pick({"stock": dict(a=10.0, b=10.0), "y": dict(a=10.5, b=9.9)}, "stock")
    assert chosen == "stock" and summary["stock"]["geomean"] == 1.0


def test_every_candidate_is_timed_on_every_source_and_the_rule_picks_one():
    params = profiles.PbsParams(16, 32, 0.9)
    searched = LaunchConfig(16, 16, 4, 1, tma=True, programs_per_sm=1)
    shape = dict(seqlen=64, heads=2, kv_heads=1, head_dim=64, dtype=torch.float32, device="cpu")
    seen = []

    def timer(run, on_gpu):  # runs the op for real, then reports a fixed time per launch
        out = run()
        assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()
        label = run.keywords["launch"].label()
        seen.append(label)
        return {"16x16w4s1-tma-p1": 5.0, "16x16w4s1-tma": 6.0}.get(label, 8.0)
    launch, record = launch_choice.choose_launch(params, searched, ["workload:diffuse@0", "workload:stripes@3"],
                                                 shape=shape, target=Target("cpu"), timer=timer)
    labels = set(record.latency_ms)
    assert {"16x16w4s3", "16x16w4s1", "16x16w4s1-tma", "16x16w4s1-tma-p1", "16x16w4s1-tma-p2"} <= labels
    assert len(seen) == 2 * len(labels)
    assert launch == searched and record.chosen == "16x16w4s1-tma-p1" and record.stock == "16x16w4s3"
    assert record.summary["16x16w4s1-tma-p1"]["worst"] == 1.6


def test_source_names_cover_every_family_and_the_next_seed():
    names = launch_choice.source_names("mixed", 3)
    assert names[:2] == ["workload:mixed@3", "workload:mixed@4"]
    assert {"workload:stripes@3", "workload:diffuse@3", "workload:retrieval@3", "workload:sink_local@3"} <= set(names)
    assert launch_choice.source_names("mixed", 0, "c.safetensors")[0] == "capture:c.safetensors"


def test_on_the_cpu_the_hopper_kernel_is_a_candidate_only_when_asked_for(monkeypatch):
    from pbs_tune.tune import space
    portable, stock = LaunchConfig(16, 16, 4, 1), LaunchConfig(16, 16, 4, 3)
    assert not any(lc.tma for lc in launch_choice.candidates(portable, stock, None))
    assert any(lc.tma for lc in launch_choice.candidates(portable, stock, 90))
    assert any(lc.programs_per_sm for lc in launch_choice.candidates(LaunchConfig(16, 16, 4, 1, tma=True), stock, None))
    monkeypatch.setattr(space, "CPU_SPACE", dict(space.CPU_SPACE, kernel=("portable", "tma")))
    assert any(lc.tma for lc in launch_choice.candidates(portable, stock, None))


def test_a_sweep_keeps_the_launch_chosen_over_its_sources(tmp_path, monkeypatch):
    from pbs_tune.tune import space
    from pbs_tune.tune.spec import SweepSpec
    from pbs_tune.tune.sweep import run_sweep
    # The interpreter's emulation of the Hopper kernel, asked for: a CPU sweep searches the portable kernel only.
    monkeypatch.setattr(space, "CPU_SPACE", dict(space.CPU_SPACE, kernel=("portable", "tma"), programs_per_sm=(0, 1)))
    monkeypatch.setattr(launch_choice, "median_ms",
                        lambda run, on_gpu: 3.0 if run.keywords["launch"].programs_per_sm == 2 else 9.0)
    spec = SweepSpec(gpu="cpu", seqlens=(96,), storage=f"sqlite:///{tmp_path}/s.db", profile=str(tmp_path / "p.yaml"),
                     heads=2, kv_heads=1, head_dim=64, dtype="float32", workload="diffuse", max_error=0.9, trials=2,
                     launch_sources=("workload:diffuse@0", "workload:retrieval@0"), quiet=True)
    (entry,) = run_sweep(spec, say=lambda line: None)
    assert entry.launch.tma and entry.launch.programs_per_sm == 2
    record = entry.provenance.launch_choice
    assert record.chosen == entry.launch.label() and record.sources == list(spec.launch_sources)
    assert profiles.load(spec.profile).entries[0].launch == entry.launch
