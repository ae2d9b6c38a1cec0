"""Re-choose a profile's launch configs, keeping their PBS parameters.

Every launch config computes the same kept blocks exactly, so an entry's block, segment,
threshold and its measured error stay valid when the attend kernel gains a launch choice (the
Hopper kernel) or when a launch chosen on one workload proves fragile on others; only the
launch changes. `relaunch_entry` judges the candidates over several sources
(tune/launch_choice.py) or on the entry's own data, and re-measures the entry with the dense
baselines and the published default timed in the same run.
"""
import dataclasses
import datetime as _dt

from ..profile import profiles
from ..profile.profiles import ProfileEntry
from ..profile.provenance import DataSource
from ..profile.target import Target, interpreter_size_error, variant_in
from ..seqlen import format_length
from . import launch_choice
from . import space as search_space
from .entry import make_entry
from .evaluate import Calibration, dense_baselines, load_calibration, measure_config


def calibration_for(entry: ProfileEntry, device: str, seed: int = 0) -> Calibration:
    """The entry's own calibration data: its synthetic workload (with as many samples), or its
    captured Q/K/V file."""
    from ..dtypes import torch_dtype
    source = entry.provenance.calibration or DataSource.workload("mixed")
    return load_calibration(seqlen=entry.seqlen, heads=entry.heads, kv_heads=entry.kv_heads,
                            head_dim=entry.head_dim, dtype=torch_dtype(entry.dtype), device=device,
                            workload=source.name if source.kind == "workload" else "mixed",
                            calib_file=source.capture_path, seed=seed,
                            samples=entry.provenance.samples or source.samples)


def sources_for(entry: ProfileEntry) -> list:
    """The sources an entry's launch is judged on: its own calibration's and every workload family."""
    source = entry.provenance.calibration or DataSource.workload("mixed")
    return launch_choice.source_names(source.name if source.kind == "workload" else "mixed", 0, source.capture_path)


def relaunch_entry(entry: ProfileEntry, cal: Calibration, *, target: Target, sources=None) -> ProfileEntry:
    """The entry with a re-chosen launch, its figures re-measured in this run on its own data.
    With `sources` the launch is judged over all of them (launch_choice.RULE); without, the
    fastest on the entry's own data wins."""
    if entry.layers:
        raise ValueError(f"entry {entry.describe()} has per-layer plans; re-plan it (pbs-tune plan) instead")
    choice = None
    if sources:
        shape = dict(entry.shape(), dtype=cal.q.dtype, device=cal.q.device)
        best, choice = launch_choice.choose_launch(entry.params, entry.launch, sources, shape=shape, target=target)
        got = measure_config(cal, search_space.TrialConfig(entry.params, best), target=target)
        times = choice.latency_ms
    else:
        stock = launch_choice.stock_launch(entry.params.block_size, entry.head_dim, target)
        results = {lc: measure_config(cal, search_space.TrialConfig(entry.params, lc), target=target)
                   for lc in launch_choice.candidates(entry.launch, stock, target.arch)}
        times = {lc.label(): round(r["latency_ms"], 4) for lc, r in results.items()}
        best = min(results, key=lambda lc: results[lc]["latency_ms"])
        got = results[best]
    ref_cfg = search_space.reference_config(entry.head_dim, target)
    reference = dict(config=ref_cfg.as_dict(), **measure_config(cal, ref_cfg, target=target))
    provenance = dataclasses.replace(entry.provenance, relaunch=dict(
        latency_ms=times, chosen=best.label(), date=_dt.date.today().isoformat(),
        **({"rule": choice.rule, "summary": choice.summary} if choice else {})))
    return make_entry(gpu=entry.gpu, shape=entry.shape(), params=entry.params, launch=best, provenance=provenance,
                      measured=got, baselines=dense_baselines(cal, target=target), reference=reference,
                      on_gpu=target.on_gpu)


def relaunch_profile(profile_path: str, out_path: str, *, sources: str, say) -> list:
    """`pbs-tune relaunch`: every entry of this GPU's in `profile_path` re-launched (`sources`: 'all'
    judges over every source, 'own' on its own data) and written to `out_path`."""
    target = Target.present()
    if target is None:
        raise ValueError("relaunch times kernels: it needs a CUDA GPU (or TRITON_INTERPRET=1 for a dry run)")
    prof = profiles.load(profile_path)
    entries = prof.for_gpu(variant_in((e.gpu for e in prof.entries), target.name))
    if not entries:
        raise ValueError(f"{profile_path} has no entries for {target.name}")
    too_big = not target.on_gpu and next(filter(None, (interpreter_size_error(e.seqlen, e.heads) for e in entries)),
                                         None)
    if too_big:
        raise ValueError(f"{too_big}; relaunch {profile_path} on the GPU it was tuned on")
    new = []
    for e in entries:
        cal = calibration_for(e, target.device)
        updated = relaunch_entry(e, cal, target=target, sources=sources_for(e) if sources == "all" else None)
        summary = updated.provenance.relaunch.get("summary")
        if summary:
            what = ", ".join(f"{k} worst {v['worst']}x geomean {v['geomean']}x" for k, v in summary.items())
        else:
            what = ", ".join(f"{k} {v:.3f} ms" for k, v in updated.provenance.relaunch["latency_ms"].items())
        say(f"{format_length(e.seqlen):>6}: {what} -> {updated.launch.label()} "
            f"({updated.provenance.speedup.get('vs_cudnn', '-')}x cuDNN)")
        new.append(updated)
        del cal
    profiles.merge_entries(out_path, new)
    say(f"wrote {len(new)} entries to {out_path}")
    return new
