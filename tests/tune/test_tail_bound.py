"""The tail error's bound (tune/objective.py): one number bounds the whole output and its last query
block; under --max-error default the tail's bound is the larger of the default's two errors. A config
over either bound is never chosen, and the tail's figures are kept on the trials, the held-out checks,
the entry and the report."""
import optuna
import pytest

from helpers import stand_in_measure, stand_in_spec
from pbs_tune.profile import profiles
from pbs_tune.tune.objective import (TAIL, bound_by_default, bound_excess, default_bounds, failed_check,
                                     over_bounds, tail_bounds, whole_source_bounds, within_bound)
from pbs_tune.tune.spec import SweepSpec
from pbs_tune.profile.provenance import HeldOutCheck
from pbs_tune.tune.sweep import run_sweep


def _spec(**fields):
    return SweepSpec(**dict(dict(gpu="cpu", seqlens=(96,), profile="p.yaml", storage="sqlite://", max_error=0.1),
                            **fields))


def test_one_number_bounds_the_whole_output_and_its_tail():
    spec = _spec()
    assert within_bound(dict(rel_l2=0.05, tail_rel_l2=0.1), spec)
    assert bound_excess(dict(rel_l2=0.05, tail_rel_l2=0.4), spec) == pytest.approx(0.3)   # the tail alone is over
    assert bound_excess(dict(rel_l2=0.3, tail_rel_l2=0.05), spec) == pytest.approx(0.2)
    assert bound_excess(dict(rel_l2=0.05), spec) == pytest.approx(-0.05)  # no tail measured: unknown, not over
    assert tail_bounds(spec) == (0.1, None)


def test_under_the_default_bound_the_tail_is_bounded_by_the_larger_of_the_defaults_errors():
    lost = bound_by_default(_spec(max_error=None), dict(rel_l2=0.08, tail_rel_l2=0.6))  # the paper's PBS: tail lost
    assert lost.max_error == 0.08 and tail_bounds(lost) == (0.6, None) and whole_source_bounds(lost) is None
    assert within_bound(dict(rel_l2=0.08, tail_rel_l2=0.6), lost)      # the default passes the bound made of it,
    assert not within_bound(dict(rel_l2=0.07, tail_rel_l2=0.61), lost)  # nothing with a worse tail does
    exact = bound_by_default(_spec(max_error=None), dict(rel_l2=0.08, tail_rel_l2=3e-7))  # a dense tail: noise
    assert tail_bounds(exact) == (0.08, None)                          # ... not compared with: the whole's number
    assert within_bound(dict(rel_l2=0.08, tail_rel_l2=5e-7), exact)
    # A calibration set: each workload its own bounds, the tail's as well; the whole's are what the entry records.
    ref = dict(rel_l2=0.1, tail_rel_l2=0.5, rel_l2_by_source=dict(a=0.05, b=0.2),
               tail_rel_l2_by_source=dict(a=0.01, b=0.9))
    both = bound_by_default(_spec(max_error=None), ref)
    assert whole_source_bounds(both) == dict(a=0.05, b=0.2)
    assert tail_bounds(both) == (0.5, dict(a=0.05, b=0.9))
    assert set(both.source_bounds) == {"a", "b", TAIL, f"{TAIL}:a", f"{TAIL}:b"}
    mine = dict(rel_l2=0.1, rel_l2_by_source=dict(a=0.05, b=0.2), tail_rel_l2=0.5)
    assert within_bound(dict(mine, tail_rel_l2_by_source=dict(a=0.05, b=0.9)), both)
    assert bound_excess(dict(mine, tail_rel_l2_by_source=dict(a=0.075, b=0.9)), both) == pytest.approx(0.5)
    assert default_bounds(dict(rel_l2=0.1)) is None  # a stand-in without a tail: no bound beyond the number
    assert default_bounds(ref, 1) == {"a": 0.1, "b": 0.2, TAIL: 0.5, f"{TAIL}:a": 0.1, f"{TAIL}:b": 0.9}


def test_a_failed_held_out_check_says_which_error_is_over():
    spec = _spec()
    h = HeldOutCheck(source="workload:mixed", trial=3, calibration_rel_l2=0.05, rel_l2=0.06, reference_rel_l2=0.07,
                     within_bound=False, calibration_tail_rel_l2=0.05, tail_rel_l2=0.4, reference_tail_rel_l2=0.9,
                     tail_bound=0.1)
    assert over_bounds(h, spec) == (False, True)  # which one failed: from the figures, not a stored flag
    assert failed_check([h], spec) == "held out (workload:mixed): tail rel_l2 0.4000 over the bound 0.1"
    over = HeldOutCheck(**dict(h.to_dict(), rel_l2=0.2))
    assert failed_check([over], spec) == ("held out (workload:mixed): rel_l2 0.2000 over the bound 0.1, "
                                          "tail rel_l2 0.4000 over the bound 0.1")
    unknown = HeldOutCheck(**dict(over.to_dict(), tail_rel_l2=None, tail_bound=None))  # tail not measured
    assert failed_check([unknown], spec) == "held out (workload:mixed): rel_l2 0.2000 over the bound 0.1"
    assert failed_check([HeldOutCheck(**dict(h.to_dict(), within_bound=True))], spec) is None
    # --max-error default on a calibration set: each workload's tail bound is the larger of the default's two
    # errors there, rebuilt from the check's own figures.
    default = _spec(max_error=0.07, bound_default=True)
    by = HeldOutCheck(**dict(h.to_dict(), rel_l2_by_source=dict(a=0.05, b=0.2),
                             reference_rel_l2_by_source=dict(a=0.05, b=0.2), tail_rel_l2=0.5, tail_bound=0.9,
                             tail_rel_l2_by_source=dict(a=0.3, b=0.9),
                             reference_tail_rel_l2_by_source=dict(a=0.01, b=0.9)))
    assert over_bounds(by, default) == (False, True)  # a: 0.3 over max(0.05, 0.01); b: 0.9 within max(0.2, 0.9)
    assert failed_check([by], default) == (
        "held out (workload:mixed): tail rel_l2 0.5000 over the bound 0.9 (the larger of the default's errors "
        "there), by workload: a 0.3000 (default 0.0100), b 0.9000 (default 0.9000)")
    assert over_bounds(HeldOutCheck(**dict(by.to_dict(), tail_rel_l2_by_source=dict(a=0.05, b=0.9))), default) \
        == (False, False)


def tail_stand_in(cal, cfg, *, target, timed=True):
    """`stand_in_measure` with a tail three times its whole error: a threshold from 0.8 to 0.93 keeps
    the whole output within 0.1 and loses the tail."""
    m = stand_in_measure(cal, cfg, target=target, timed=timed, seconds=0.02)
    return dict(m, tail_rel_l2=3 * m["rel_l2"])


def test_a_sweep_chooses_no_config_over_its_tail_bound_and_keeps_the_tails(tmp_path):
    lines = []
    spec = stand_in_spec(tmp_path, trials=8, max_error=0.1, stand_in="test_tail_bound:tail_stand_in")
    (entry,) = run_sweep(spec, say=lines.append)
    study = optuna.load_study(study_name=entry.provenance.study, storage=spec.storage)
    fast = [t for t in study.get_trials() if t.user_attrs.get("rel_l2", 1) <= 0.1 and t.user_attrs["tail_rel_l2"] > 0.1]
    assert fast and min(t.values[0] for t in fast) < entry.measured["latency_ms"]  # faster, within 0.1, tail over
    assert entry.measured["tail_rel_l2"] <= 0.1 and entry.params.threshold > 0.93
    (written,) = profiles.load(spec.profile).entries
    assert written.measured["tail_rel_l2"] == entry.measured["tail_rel_l2"]
    assert "held_out_tail" not in written.measured  # the held-out checks carry their own tails
    for held in written.provenance.held_out:
        assert held.within_bound and held.tail_bound == 0.1 and held.tail_rel_l2 <= 0.1
        assert held.calibration_tail_rel_l2 == entry.measured["tail_rel_l2"] and held.reference_tail_rel_l2 is not None
        assert study.user_attrs[f"held_out:{held.trial}:{held.source}"] == held.to_dict()
        assert not any(k.startswith("held_out_tail") for k in study.user_attrs)
    assert any(f"tail rel_l2 {held.tail_rel_l2:.4f}" in line for line in lines)
    assert any("tail" in line and "rel_l2" in line for line in lines if line.startswith("  trial"))


def test_under_the_default_bound_the_default_stays_a_choice_whose_tail_nothing_worse_beats(tmp_path):
    lines = []
    spec = stand_in_spec(tmp_path, trials=6, max_error=None, stand_in="test_tail_bound:tail_stand_in")
    (entry,) = run_sweep(spec, say=lines.append)
    ref = entry.provenance.reference
    assert ref["tail_rel_l2"] == pytest.approx(3 * ref["rel_l2"])
    assert any(f"; tail rel_l2 {ref['tail_rel_l2']:.5f} (the larger of" in line for line in lines), lines
    assert entry.measured["rel_l2"] <= ref["rel_l2"] and entry.measured["tail_rel_l2"] <= ref["tail_rel_l2"]
    assert entry.failed_check is None
