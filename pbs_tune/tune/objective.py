"""What a trial is worth: the objective Optuna minimises, the error bound, and the checks of the
chosen trial against the published default and on data the search never saw.

Trials minimise (latency, error); a trial whose error exceeds the bound is infeasible (Optuna's
constraint). The measurement itself is `measure_config` (tune/evaluate.py's, or a stand-in: sweep_data.py).

Two errors are bounded: the whole output's rel_l2 and the tail's (`tail_rel_l2`: the last query
block, the rows a prefill returns logits for; generation reads them, and the whole output's error
averages them away). One bound number applies to both: the tail is output like any other, and a
tail worse than what the user accepted for the whole is the retrieval loss this check is for
(--max-error 0.1: both within 0.1). With --max-error default that number is the default's
whole-output error here, and the tail's bound is the larger of it and the default's own tail error:
where the default loses its tail (the paper's PBS on data with a question: several times its whole
error), the default must still pass the bound made of it (`candidates` falls back on its trial)
and nothing worse than it may pass; where the default keeps its tail exact, its tail error is
rounding noise, which no trial should be compared against. SweepSpec holds one bound number, so
the tail's bounds ride in its `source_bounds` under the keys TAIL and TAIL:<workload>
(`default_bounds`, `tail_bounds`). Any bound under ERROR_FLOOR counts as the floor (`_excess`).
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


def objective_for(cal: Calibration, spec: SweepSpec, measure_config):
    """The trials' objective on `cal`: (latency, error) of the config a trial draws, measured by `measure_config`."""
    target = spec.target
    space = search_space.gpu_space(target.arch) if target.on_gpu else search_space.CPU_SPACE
    curves = {}  # per-head curves by (block, segment), shared by the trials of this process

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:gpu={_visible_gpus()}")
        cfg = search_space.suggest(trial, space, per_head=spec.per_head)
        p = cfg.params
        progress.say(f"trial {trial.number}: block {p.block_size}, segment {p.segment_size}, threshold "
                     f"{p.threshold:.3g}, estimator {p.estimator}, launch {cfg.launch.label()}")
        problem = search_space.launch_problem(cfg, head_dim=spec.head_dim, dtype=spec.dtype, target=target) \
            if target.on_gpu else None
        if problem:
            trial.set_user_attr("fail_reason", problem)
            raise optuna.TrialPruned(problem)
        try:
            if spec.per_head:
                from .evaluate import layer_plans
                plans = layer_plans(cal, cfg, spec.margin, curves, spec.estimators)
                trial.set_user_attr("plans", [plan.as_dict() for plan in plans])
                m = measure_layers(cal, cfg, plans, target=target)
            else:
                m = measure_config(cal, cfg, target=target)
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


TAIL = "tail"  # spec.source_bounds keys of the tail's own bounds (--max-error default): TAIL, TAIL:<workload>


def bound_excess(m: dict, spec: SweepSpec) -> float:
    """How far a measurement is over its error bounds (<= 0: within them all): the worse of the whole
    output's excess and the tail's. With a bound per workload of a calibration set, the worst relative
    excess over them; else the excess of its error. A measurement without a tail error (a trial of an
    earlier release, a stand-in) is judged on the whole output alone: unknown is not over."""
    excess = _excess(m.get("rel_l2"), m.get("rel_l2_by_source"), spec.max_error, whole_source_bounds(spec))
    if m.get("tail_rel_l2") is not None:
        excess = max(excess, _excess(m["tail_rel_l2"], m.get("tail_rel_l2_by_source"), *tail_bounds(spec)))
    return excess


ERROR_FLOOR = 1e-5  # errors and bounds are recorded to 5 decimals: below this, a difference is rounding


def _excess(error, by_source, bound, source_bounds) -> float:
    """Over the bound (> 0) or within it. A bound under ERROR_FLOOR (the default's error where it keeps
    every block) counts as the floor: two exact configs differ there only by their summation order."""
    if source_bounds and by_source:
        return max((by_source[name] - max(b, ERROR_FLOOR)) / max(b, ERROR_FLOOR) for name, b in source_bounds.items())
    return (float("inf") if error is None else error) - max(bound, ERROR_FLOOR)


def within_bound(m: dict, spec: SweepSpec) -> bool:
    return bound_excess(m, spec) <= 0


def whole_source_bounds(spec: SweepSpec) -> dict | None:
    """The whole output's bound per workload of a calibration set (--max-error default), or None."""
    bounds = {k: v for k, v in (spec.source_bounds or {}).items() if k != TAIL and not k.startswith(TAIL + ":")}
    return bounds or None


def tail_bounds(spec: SweepSpec) -> tuple:
    """(bound, bound per workload or None) of the tail error: under --max-error default, where the
    default's tail was measured, the larger of its whole-output and tail errors; else the whole
    output's bounds (module docstring)."""
    given = spec.source_bounds or {}
    if spec.bound_default and TAIL in given:
        by_source = {k[len(TAIL) + 1:]: v for k, v in given.items() if k.startswith(TAIL + ":")}
        return given[TAIL], by_source or None
    return spec.max_error, whole_source_bounds(spec)


def default_bounds(reference: dict, digits: int | None = None) -> dict | None:
    """`source_bounds` for --max-error default from the default's measurement: its whole-output error
    on each workload of a calibration set, and the tail's bounds (TAIL, TAIL:<workload>: the larger of
    its whole-output and tail errors); rounded to `digits` where given. None when there is neither."""
    def rounded(x):
        return x if digits is None else round(x, digits)
    whole = reference.get("rel_l2_by_source") or {}
    bounds = {k: rounded(v) for k, v in whole.items()}
    if reference.get("tail_rel_l2") is not None and reference.get("rel_l2") is not None:
        bounds[TAIL] = rounded(max(reference["rel_l2"], reference["tail_rel_l2"]))
        bounds.update({f"{TAIL}:{k}": rounded(max(whole.get(k, 0.0), v))
                       for k, v in (reference.get("tail_rel_l2_by_source") or {}).items()})
    return bounds or None


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


def reference_measurement(cal: Calibration, spec: SweepSpec, measure_config, timed: bool = True) -> dict:
    """The published default config on the same data, for every profile entry."""
    cfg = search_space.reference_config(spec.head_dim, spec.target)
    try:
        if spec.per_head:  # timed layer by layer, as the per-head trials are
            from .allocate import LayerPlan
            heads = cal.q.shape[1]
            plans = [LayerPlan(True, (cfg.params.threshold,) * heads, 1.0, 0.0, 0.0)] * cal.layers
            return dict(config=cfg.as_dict(), **measure_layers(cal, cfg, plans, target=spec.target, timed=timed))
        return dict(config=cfg.as_dict(), **measure_config(cal, cfg, target=spec.target, timed=timed))
    except Exception as exc:
        return dict(config=cfg.as_dict(), error=f"{type(exc).__name__}: {exc}"[:300])


def bound_by_default(spec: SweepSpec, reference: dict) -> SweepSpec:
    """`spec` with its error bounds set to the published default's errors on the calibration data
    (whole output and tail, each its own; module docstring)."""
    if "rel_l2" not in reference:
        raise RuntimeError(f"--max-error default: the default config did not run here ({reference.get('error')})")
    return replace(spec, max_error=reference["rel_l2"], bound_default=True, source_bounds=default_bounds(reference))


def held_out_check(hold: Calibration, spec: SweepSpec, measure_config, trial, study, launch=None) -> HeldOutCheck:
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
                else measure_config(hold, cfg, target=spec.target, timed=timed))
    default = search_space.reference_config(spec.head_dim, spec.target)
    ref = (dict(config=default.as_dict(), **mine)  # the default was chosen: measured above
           if not plans and cfg == default else reference_measurement(hold, spec, measure_config, timed=timed))
    check = HeldOutCheck(
        source=str(hold.source), trial=trial.number, calibration_rel_l2=round(trial.user_attrs["rel_l2"], 5),
        rel_l2=round(mine["rel_l2"], 5), reference_rel_l2=_rounded(ref.get("rel_l2"), 5),
        within_bound=False,  # judged below, on the figures it records
        latency_ms=_rounded(mine.get("latency_ms"), 4),
        reference_latency_ms=_rounded(ref.get("latency_ms"), 4),
        speedup_vs_reference=_rounded(ref["latency_ms"] / mine["latency_ms"], 3)
        if ref.get("latency_ms") and mine.get("latency_ms") else None)
    if mine.get("rel_l2_by_source"):
        check.rel_l2_by_source = _rounded_all(mine["rel_l2_by_source"])
        check.reference_rel_l2_by_source = _rounded_all(ref.get("rel_l2_by_source", {}))
    if mine.get("tail_rel_l2") is not None:
        check.tail_rel_l2 = round(mine["tail_rel_l2"], 5)
        check.calibration_tail_rel_l2 = _rounded(trial.user_attrs.get("tail_rel_l2"), 5)
        check.reference_tail_rel_l2 = _rounded(ref.get("tail_rel_l2"), 5)
        if mine.get("tail_rel_l2_by_source"):
            check.tail_rel_l2_by_source = _rounded_all(mine["tail_rel_l2_by_source"])
            check.reference_tail_rel_l2_by_source = _rounded_all(ref.get("tail_rel_l2_by_source"))
        check.tail_bound = round(tail_bounds(held_out_bounds(check, spec))[0], 5)
    check.within_bound = not any(over_bounds(check, spec))
    study.set_user_attr(f"held_out:{trial.number}:{hold.source}", check.to_dict())
    return check


def held_out_bounds(h: HeldOutCheck, spec: SweepSpec) -> SweepSpec:
    """The bounds a held-out check is judged by, rebuilt from its own figures so that none need
    storing: with --max-error default the default's errors on its sample (on each workload of a
    calibration set, and the tail's: module docstring), else the sweep's. The figures are those it
    records (5 digits), so that a check is judged on what it shows; near-exact figures are left to
    ERROR_FLOOR."""
    if not spec.bound_default:
        return spec
    ref = dict(rel_l2=h.reference_rel_l2, tail_rel_l2=h.reference_tail_rel_l2,
               rel_l2_by_source=h.reference_rel_l2_by_source, tail_rel_l2_by_source=h.reference_tail_rel_l2_by_source)
    return replace(spec, max_error=h.reference_rel_l2 or 0.0, source_bounds=default_bounds(ref))


def over_bounds(h: HeldOutCheck, spec: SweepSpec) -> tuple[bool, bool]:
    """(whole output over its bound, tail over its bound) of a held-out check, from its figures:
    which of the two failed, for the message. A tail not measured is not over."""
    bound = held_out_bounds(h, spec)
    whole = _excess(h.rel_l2, h.rel_l2_by_source, bound.max_error, whole_source_bounds(bound)) > 0
    tail = h.tail_rel_l2 is not None and _excess(h.tail_rel_l2, h.tail_rel_l2_by_source, *tail_bounds(bound)) > 0
    return whole, tail


def failed_check(held: list, spec: SweepSpec) -> str | None:
    """Why an entry must not run: its held-out checks over their bound, with the figures; else None."""
    lines = []
    for h in held:
        if h.within_bound:
            continue
        whole_over, tail_over = over_bounds(h, spec)
        parts = []
        if whole_over or not tail_over:
            parts.append(f"rel_l2 {h.rel_l2:.4f} over the bound "
                         + (f"{h.reference_rel_l2:.4f} (the default's there)" if spec.bound_default
                            else f"{spec.max_error:g}")
                         + (f", by workload: {h.by_source()}" if h.rel_l2_by_source else ""))
        if tail_over:
            parts.append(f"tail rel_l2 {h.tail_rel_l2:.4f} over the bound {h.tail_bound:g}"
                         + (" (the larger of the default's errors there)" if spec.bound_default else "")
                         + (f", by workload: {h.tail_by_source()}" if h.tail_rel_l2_by_source else ""))
        lines.append(f"held out ({h.source}): " + ", ".join(parts))
    return "; ".join(lines) or None


def _rounded(x, digits):
    return None if x is None else round(x, digits)


def _rounded_all(errors):
    return None if errors is None else {k: round(v, 5) for k, v in errors.items()}
