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

import torch
import triton

from ..runtime.profiles import ProfileEntry
from . import launch_choice
from . import space as search_space
from .evaluate import Calibration, compared, dense_baselines, load_calibration, measure


def calibration_for(entry: ProfileEntry, device: str, seed: int = 0) -> Calibration:
    """The entry's own calibration data: its synthetic workload (with as many samples), or its
    captured Q/K/V file."""
    from ..dtypes import torch_dtype
    source = entry.info.get("calibration", "workload:mixed")
    kind, _, name = source.partition(":")
    if kind not in ("workload", "capture"):
        raise ValueError(f"entry {entry.describe()}: unknown calibration {source!r}")
    return load_calibration(seqlen=entry.seqlen, heads=entry.heads, kv_heads=entry.kv_heads,
                            head_dim=entry.head_dim, dtype=torch_dtype(entry.dtype), device=device,
                            workload=name.split(" ")[0] if kind == "workload" else "mixed",
                            calib_file=name if kind == "capture" else None, seed=seed,
                            samples=entry.info.get("samples", 1) if kind == "workload" else 1)


def sources_for(entry: ProfileEntry) -> list:
    """The sources an entry's launch is judged on: its own calibration's and every workload family."""
    kind, _, name = entry.info.get("calibration", "workload:mixed").partition(":")
    return launch_choice.source_names(name.split(" ")[0] if kind == "workload" else "mixed", 0,
                                      name if kind == "capture" else None)


def relaunch_entry(entry: ProfileEntry, cal: Calibration, *, arch: int | None, on_gpu: bool,
                   sources=None) -> ProfileEntry:
    """The entry with a re-chosen launch, its figures re-measured in this run on its own data.
    With `sources` the launch is judged over all of them (launch_choice.RULE); without, the
    fastest on the entry's own data wins."""
    if entry.layers:
        raise ValueError(f"entry {entry.describe()} has per-layer plans; re-plan it (pbs-tune plan) instead")
    record = None
    if sources:
        shape = dict(seqlen=entry.seqlen, heads=entry.heads, kv_heads=entry.kv_heads, head_dim=entry.head_dim,
                     dtype=cal.q.dtype, device=cal.q.device)
        best, record = launch_choice.choose_launch(entry.params, entry.launch, sources, shape=shape, on_gpu=on_gpu)
        got = measure(cal, search_space.TrialConfig(entry.params, best), on_gpu=on_gpu)
        times = record["latency_ms"]
    else:
        stock = launch_choice.stock_launch(entry.params.block_size, entry.head_dim, on_gpu)
        results = {lc: measure(cal, search_space.TrialConfig(entry.params, lc), on_gpu=on_gpu)
                   for lc in launch_choice.candidates(entry.launch, stock, arch)}
        times = {lc.label(): round(r["latency_ms"], 4) for lc, r in results.items()}
        best = min(results, key=lambda lc: results[lc]["latency_ms"])
        got = results[best]
    ref_cfg = search_space.reference_config(entry.head_dim, cpu=not on_gpu)
    reference = dict(config=ref_cfg.as_dict(), **measure(cal, ref_cfg, on_gpu=on_gpu))
    lat = got["latency_ms"]
    figures = compared(lat, dense_baselines(cal, on_gpu=on_gpu), reference, on_gpu=on_gpu)
    dense_faster = figures.pop("dense_faster")
    info = dict(entry.info, **figures,
                relaunch=dict(latency_ms=times, chosen=best.label(), date=_dt.date.today().isoformat(),
                              **({"rule": record["rule"], "summary": record["summary"]} if record else {})),
                versions=dict(entry.info.get("versions", {}), torch=str(torch.__version__),
                              triton=str(triton.__version__)),
                date=_dt.date.today().isoformat())
    measured = dict(latency_ms=round(lat, 4), rel_l2=round(got["rel_l2"], 5), recall=round(got["recall"], 5),
                    density=round(got["density"], 4))
    return dataclasses.replace(entry, launch=best, measured=measured, info=info, dense_faster=dense_faster)
