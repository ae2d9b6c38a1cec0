"""`pbs-tune sweep`, in the order it runs: per length, calibrate, measure the published default,
run the trials (with worker processes handed the same spec), choose the fastest trial within the
bound and its launch over several sources, check it on held-out data (over its bound there: the
next candidates, objective.candidates), then write the profile entries and build their kernel
library.

The stages live in their own modules: the spec (spec.py), the study (study.py), the objective
and checks (objective.py), the entry (entry.py) and what is printed (report.py).
"""
import os
from dataclasses import dataclass, replace

import optuna
import torch

from .. import progress
from ..profile import profiles
from ..profile.profiles import ProfileEntry
from ..profile.provenance import DataSource, HeldOutCheck, Provenance
from ..seqlen import format_length
from . import launch_choice, report, study as studies
from .storage import open_storage
from .entry import make_entry
from .evaluate import dense_baselines, measure_layers
from .objective import (bound_by_default, candidates, failed_check, held_out_check, objective_for,
                        reference_measurement, trial_plans, whole_source_bounds)
from .space import TrialConfig
from .spec import SweepSpec, check_spec
from .sweep_data import LengthData, resolve_length


def run_sweep(spec: SweepSpec, say=progress.say) -> list:
    """Tune every length of `spec` and write the chosen entries to its profile (and their
    kernel library); returns the entries. `say` prints the sweep's results (fronts, choices)."""
    check_spec(spec)
    done = finished_entries(spec)
    names = {n: name for n, name in spec.study_names().items() if n not in done}
    for n, entry in done.items():
        say(f"== {format_length(n)}: study '{entry.provenance.study}' already holds its {spec.trials} trials and "
            f"{spec.profile} its entry: nothing measured or written (--rewrite measures and writes it again; "
            f"a larger --trials searches on)")
    if not names:
        return []
    if spec.workers > 1:
        for n, name in names.items():  # the published default goes in once, before the workers start
            studies.enqueue_known_configs(studies.open_study(spec.at(n), name), spec)
        studies.run_workers(spec, say)
    entries = []
    for n, name in names.items():
        say(f"== {format_length(n)}: study '{name}' in {spec.storage}")
        entry = sweep_length(spec.at(n), name, say)
        entries.append(entry)
        say("chosen: " + report.entry_line(entry))
        if entry.failed_check:
            say(f"written but never run by the loader: {entry.failed_check}")
    profiles.merge_entries(spec.profile, entries)
    say(f"wrote {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} to {spec.profile}")
    if spec.on_gpu and spec.compile:
        from ..runtime.library_build import build_in_fresh_process
        build_in_fresh_process(spec.profile, spec.library)
    return entries


def finished_entries(spec: SweepSpec) -> dict:
    """{length: entry} of the lengths whose study already holds --trials finished trials and whose
    entry from that study is in the profile: re-running a finished sweep re-measures nothing."""
    if spec.rewrite or not os.path.exists(spec.profile):
        return {}
    written = {e.key(): e for e in profiles.load(spec.profile).entries}
    done = {}
    for n, name in spec.study_names().items():
        entry = written.get((spec.gpu, n, spec.heads, spec.kv_heads, spec.head_dim, spec.dtype))
        if entry is None or entry.provenance.study != name:
            continue
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(spec.storage, spec.heartbeat_s))
        except KeyError:  # the entry came from a study in another storage
            continue
        if studies.finished_count(study) >= spec.trials:
            done[n] = entry
    return done


def sweep_length(spec: SweepSpec, name: str, say) -> ProfileEntry:
    """One length: the trials, the choice, its checks, and its entry."""
    done = run_length_trials(resolve_length(spec), name, say)
    tried = candidates(done.study, done.run.spec)
    if not tried:
        raise RuntimeError(f"no trial at {format_length(spec.seqlen)} met --max-error {done.run.spec.max_error}; "
                           f"raise --trials or --max-error")
    for rank, best in enumerate(tried):  # the fastest that passes on held-out data
        chosen = choose_entry_launch(done.run, best, say)
        held = [check_held_out(done, request, best, chosen and chosen[0], say) for request in done.run.held_out]
        failed = failed_check(held, done.run.spec)
        if failed is None or rank == len(tried) - 1:
            break
        say(f"trial {best.number} is over its bound on held-out data; checking the next candidate, trial "
            f"{tried[rank + 1].number}")
    entry = trial_entry(done.run.spec, best, done.baselines, done.reference, name, done.source, done.layer_ids,
                        held, chosen)
    return replace(entry, failed_check=failed)


@dataclass(frozen=True)
class LengthTrials:
    """A length's trials, run: its data (the spec with its error bound resolved), its study, and what
    its entry keeps of the calibration data, which is freed by then."""

    run: LengthData
    study: optuna.Study
    reference: dict
    baselines: dict
    source: DataSource
    layer_ids: tuple | None


def run_length_trials(run: LengthData, name: str, say) -> LengthTrials:
    """On the calibration data (read here, freed on return): the published default, the error bound
    it sets under --max-error default, the dense baselines, then the trials."""
    cal = run.load(run.calibration)
    spec = run.spec
    reference = reference_measurement(cal, spec, run.measure_config)
    if spec.max_error is None:
        spec = bound_by_default(spec, reference)
        report.say_default_bounds(spec, reference, say)
    study = studies.open_study(spec, name)
    baselines = dense_baselines(cal, target=spec.target)
    studies.recover_stale_trials(study, 3 * spec.heartbeat_s)
    studies.run_trials(study, objective_for(cal, spec, run.measure_config), spec,
                       callbacks=[report.TrialProgress(spec)])
    for line in report.front_lines(studies.pareto_front(study), spec):
        say(line)
    return LengthTrials(replace(run, spec=spec), study, reference, baselines, cal.source, cal.layer_ids)


def check_held_out(done: LengthTrials, request, trial, launch, say) -> HeldOutCheck:
    """The chosen trial on one held-out data set, read here and freed on return."""
    check = held_out_check(done.run.load(request), done.run.spec, done.run.measure_config, trial, done.study, launch)
    say(report.held_out_line(check, done.run.spec))
    return check


def choose_entry_launch(run: LengthData, trial, say) -> tuple | None:
    """(launch, LaunchChoice, measurement): the chosen trial's launch judged over several sources
    (tune/launch_choice.py); when it differs from the trial's, the config is measured again on the
    calibration data (read again here) with it, else the measurement is empty."""
    if not run.launch_sources:
        return None
    spec, cfg = run.spec, TrialConfig.of_trial(trial)
    launch, choice = launch_choice.choose_launch(cfg.params, cfg.launch, run.launch_sources, shape=run.shape(),
                                                 target=spec.target)
    say(report.launch_choice_line(choice, len(run.launch_sources)))
    measured = {}
    if launch != cfg.launch:
        again, plans, cal = replace(cfg, launch=launch), trial_plans(trial), run.load(run.calibration)
        with torch.no_grad():
            measured = (measure_layers(cal, again, plans, target=spec.target) if plans
                        else run.measure_config(cal, again, target=spec.target))
    return launch, choice, measured


def trial_entry(spec: SweepSpec, trial, baselines: dict, reference: dict, study_name: str, source,
                layer_ids=None, held_out=(), chosen: tuple | None = None) -> ProfileEntry:
    """The chosen trial as a profile entry. A per-head trial on captured layers gives each
    layer its plan (`layers:`); on a synthetic workload (one 'layer') the plan is the entry's.
    `chosen`: the launch chosen over several sources (`choose_entry_launch`), re-measured.
    The held-out checks, tail figures included, go into its provenance (`held_out`)."""
    cfg = TrialConfig.of_trial(trial)
    m = dict(trial.user_attrs, latency_ms=trial.values[0])
    choice = None
    if chosen:
        launch, choice, measured = chosen
        cfg = replace(cfg, launch=launch)
        m.update(measured)
    params, layers = cfg.params, {}
    plans = trial_plans(trial)
    for i, plan in enumerate(plans):
        if layer_ids is None:
            params = cfg.planned(plan)
        else:
            layers[layer_ids[i]] = (cfg.planned(plan), cfg.launch)
    provenance = Provenance(
        calibration=source, study=study_name, trial=trial.number, max_error=spec.max_error,
        samples=spec.samples if spec.samples > 1 else None, max_error_is_default=spec.bound_default or None,
        max_error_by_source={k: round(v, 5) for k, v in whole_source_bounds(spec).items()}
        if whole_source_bounds(spec) else None,
        rel_l2_by_source={k: round(v, 5) for k, v in m["rel_l2_by_source"].items()}
        if whole_source_bounds(spec) and m.get("rel_l2_by_source") else None,
        held_out=list(held_out), launch_choice=choice,
        per_head=dict(margin=spec.margin, reference_threshold=cfg.params.threshold,
                      margins_used=[p.margin for p in plans],
                      bound="per layer: output rel-L2 <= margin x the reference threshold's (with several captured "
                            "sequences also on each one left out of the fit), and per head no fewer sampled "
                            "queries' heaviest keys kept") if spec.per_head else None)
    entry = make_entry(gpu=spec.gpu, shape=spec.entry_shape(), params=params, launch=cfg.launch, layers=layers,
                       provenance=provenance, measured=m, baselines=baselines, reference=reference,
                       on_gpu=spec.on_gpu, optuna=str(optuna.__version__))
    return replace(entry, measured=dict(entry.measured, **tail_figures(m)))


def tail_figures(m: dict) -> dict:
    """The entry's own tail errors, kept beside its `measured` figures (rounded as they are):
    `tail_rel_l2`, and `tail_rel_l2_by_source` on a calibration set. An entry without these keys
    (earlier releases) has an unknown tail error."""
    out = {}
    if m.get("tail_rel_l2") is not None:
        out["tail_rel_l2"] = round(m["tail_rel_l2"], 5)
    if m.get("tail_rel_l2_by_source"):
        out["tail_rel_l2_by_source"] = {k: round(v, 5) for k, v in m["tail_rel_l2_by_source"].items()}
    return out


def run_worker(spec: SweepSpec) -> None:
    """A worker process: trials only, on the studies of every length; writes nothing else.
    It measures the default only to resolve --max-error default, and untimed."""
    progress.set_quiet(spec.quiet)
    for n, name in spec.study_names().items():
        _worker_trials(resolve_length(spec.at(n)), name)


def _worker_trials(run: LengthData, name: str) -> None:
    cal = run.load(run.calibration)  # freed on return, before the next length's
    spec = run.spec
    if spec.max_error is None:
        spec = bound_by_default(spec, reference_measurement(cal, spec, run.measure_config, timed=False))
    studies.run_trials(studies.open_study(spec, name), objective_for(cal, spec, run.measure_config), spec)
