"""What a trial is worth: the objective Optuna minimises, the error bound, and the checks of the
chosen trial against the published default and on data the search never saw.

Trials minimise (latency, error); a trial whose error exceeds the bound is infeasible (Optuna's
constraint). The measurement itself is `spec.measurement()` (tune/evaluate.py's `measure`).
"""
import os
import socket
from dataclasses import replace

import optuna
import torch
from optuna.trial import TrialState

from .. import progress
from ..profile.provenance import HeldOutCheck
from . import space as search_space
from .evaluate import Calibration, measure_layers
from .space import TrialConfig
from .spec import SweepSpec


def objective_for(cal: Calibration, spec: SweepSpec):
    target = spec.target
    space = search_space.space_for(target, spec.precisions_on(spec.gpu))
    measure = spec.measurement()
    curves = {}  # per-head curves by (block, segment), shared by the trials of this process

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:gpu={_visible_gpus()}")
        cfg = search_space.suggest(trial, space, per_head=spec.per_head)
        p = cfg.params
        progress.say(f"trial {trial.number}: block {p.block_size}, segment {p.segment_size}, threshold "
                     f"{p.threshold:.3g}, estimator {p.estimator}, precision {p.precision}, launch {cfg.launch.label()}")
        problem = search_space.launch_problem(cfg, head_dim=spec.head_dim, dtype=spec.dtype, target=target) \
            if target.on_gpu else None
        if problem:
            trial.set_user_attr("fail_reason", problem)
            raise optuna.TrialPruned(problem)
        try:
            if spec.per_head:
                from .evaluate import layer_plans
                plans = layer_plans(cal, cfg, spec.margin, curves, spec.estimators, spec.precisions_on(spec.gpu))
                trial.set_user_attr("plans", [plan.as_dict() for plan in plans])
                m = measure_layers(cal, cfg, plans, target=target)
            else:
                m = measure(cal, cfg, target=target)
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            if target.on_gpu:
                torch.cuda.empty_cache()
            # Optuna records a NaN result as a failed trial with one log line (an exception would
            # print its traceback); the reason is on the trial.
            return float("nan"), float("nan")
        for key, val in m.items():
            trial.set_user_attr(key, val)
        trial.set_constraint("error_over_bound", bound_excess(m, spec))  # feasible when <= 0
        return m["latency_ms"], m["rel_l2"]
    return objective


def _visible_gpus() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "all") if torch.cuda.is_available() else "none"


def trial_plans(trial) -> list:
    """The per-layer plans a per-head trial stored (LayerPlan), in calibration-layer order."""
    from .allocate import LayerPlan
    return [LayerPlan.from_dict(d) for d in trial.user_attrs.get("plans", [])]


def bound_excess(m: dict, spec: SweepSpec) -> float:
    """How far a measurement is over the error bound (<= 0: within it). With a bound per workload
    of a calibration set, the worst relative excess over them; else the excess of its error."""
    if spec.source_bounds and m.get("rel_l2_by_source"):
        return max((m["rel_l2_by_source"][name] - bound) / max(bound, 1e-12)
                   for name, bound in spec.source_bounds.items())
    return m.get("rel_l2", float("inf")) - spec.max_error


def within_bound(m: dict, spec: SweepSpec) -> bool:
    return bound_excess(m, spec) <= 0


HELD_OUT_RETRIES = 2  # feasible trials checked after the fastest, when it fails on held-out data


def candidates(study, spec: SweepSpec) -> list:
    """Feasible trials in the order the sweep checks them on held-out data until one passes: the
    fastest, the next HELD_OUT_RETRIES, then the published default's trial where it is feasible
    (a choice fitted to its own sample should not leave a length without an entry that runs)."""
    ok = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if within_bound(t.user_attrs, spec)), key=lambda t: t.values[0])
    first = ok[:1 + HELD_OUT_RETRIES]
    default = search_space.searched_default(spec.target)
    fallback = next((t for t in ok if TrialConfig.of_trial(t).params == default), None)
    return first + ([fallback] if fallback is not None and fallback not in first else [])


def reference_measurement(cal: Calibration, spec: SweepSpec, timed: bool = True) -> dict:
    """The published default config on the same data, for every profile entry."""
    cfg = search_space.reference_config(spec.head_dim, spec.target)
    try:
        if spec.per_head:  # timed layer by layer, as the per-head trials are
            from .allocate import LayerPlan
            heads = cal.q.shape[1]
            plans = [LayerPlan(True, (cfg.params.threshold,) * heads, 1.0, 0.0, 0.0)] * cal.layers
            return dict(config=cfg.as_dict(), **measure_layers(cal, cfg, plans, target=spec.target, timed=timed))
        return dict(config=cfg.as_dict(), **spec.measurement()(cal, cfg, target=spec.target, timed=timed))
    except Exception as exc:
        return dict(config=cfg.as_dict(), error=f"{type(exc).__name__}: {exc}"[:300])


def bound_by_default(spec: SweepSpec, reference: dict) -> SweepSpec:
    """`spec` with its error bound set to the published default's error on the calibration data."""
    if "rel_l2" not in reference:
        raise RuntimeError(f"--max-error default: the default config did not run here ({reference.get('error')})")
    return replace(spec, max_error=reference["rel_l2"], bound_default=True,
                   source_bounds=reference.get("rel_l2_by_source"))


def held_out_check(hold: Calibration, spec: SweepSpec, trial, study, launch=None) -> HeldOutCheck:
    """The chosen trial and the published default on a sample the search never saw (another
    seed of the workload, or a capture of other text): a calibration error that does not carry
    over is the tuner fitting its own sample. Kept on the study and in the entry. Timed on a GPU
    only: interpreter times order trials, they mean nothing beside a profile."""
    timed = spec.on_gpu
    cfg = TrialConfig.of_trial(trial)
    cfg = replace(cfg, launch=launch) if launch else cfg
    plans = trial_plans(trial)
    if plans and len(plans) != hold.layers:
        raise ValueError(f"held-out data {hold.source} has {hold.layers} layers; the calibration had {len(plans)}")
    with torch.no_grad():
        mine = (measure_layers(hold, cfg, plans, target=spec.target, timed=timed) if plans
                else spec.measurement()(hold, cfg, target=spec.target, timed=timed))
    default = search_space.reference_config(spec.head_dim, spec.target)
    ref = (dict(config=default.as_dict(), **mine) if not plans and cfg == default  # the default was chosen: measured above
           else reference_measurement(hold, spec, timed=timed))
    # With --max-error default the bound is the default's error, on this sample too (on each
    # workload of a calibration set).
    # Judged on the figures it records (5 digits): two near-exact configs differ by summation order
    # alone (1e-7 against 1e-7), which no bound should tell apart.
    bound = replace(spec, max_error=round(ref.get("rel_l2", 0.0), 5), source_bounds=_rounded_all(
        ref.get("rel_l2_by_source"))) if spec.bound_default else spec
    check = HeldOutCheck(
        source=str(hold.source), trial=trial.number, calibration_rel_l2=round(trial.user_attrs["rel_l2"], 5),
        rel_l2=round(mine["rel_l2"], 5), reference_rel_l2=_rounded(ref.get("rel_l2"), 5),
        within_bound=within_bound(dict(mine, rel_l2=round(mine["rel_l2"], 5),
                                       rel_l2_by_source=_rounded_all(mine.get("rel_l2_by_source"))), bound),
        latency_ms=_rounded(mine.get("latency_ms"), 4),
        reference_latency_ms=_rounded(ref.get("latency_ms"), 4),
        speedup_vs_reference=_rounded(ref["latency_ms"] / mine["latency_ms"], 3)
        if ref.get("latency_ms") and mine.get("latency_ms") else None)
    if mine.get("rel_l2_by_source"):
        check.rel_l2_by_source = {k: round(v, 5) for k, v in mine["rel_l2_by_source"].items()}
        check.reference_rel_l2_by_source = {k: round(v, 5) for k, v in ref.get("rel_l2_by_source", {}).items()}
    study.set_user_attr(f"held_out:{trial.number}:{hold.source}", check.to_dict())
    return check


def failed_check(held: list, spec: SweepSpec) -> str | None:
    """Why an entry must not run: its held-out checks over their bound, with the figures; else None."""
    over = [h for h in held if not h.within_bound]
    return "; ".join(
        f"held out ({h.source}): rel_l2 {h.rel_l2:.4f} over the bound "
        + (f"{h.reference_rel_l2:.4f} (the default's there)" if spec.bound_default else f"{spec.max_error:g}")
        + (f", by workload: {h.by_source()}" if h.rel_l2_by_source else "")
        for h in over) or None


def _rounded(x, digits):
    return None if x is None else round(x, digits)


def _rounded_all(errors):
    return None if errors is None else {k: round(v, 5) for k, v in errors.items()}
