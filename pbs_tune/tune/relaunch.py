"""Re-time a profile's entries over launch configs, keeping their PBS parameters.

Every launch config computes the same kept blocks exactly, so an entry's block, segment,
threshold and its measured error stay valid when the attend kernel gains a launch choice (the
Hopper kernel); only which launch is fastest can change. `relaunch_entry` times the entry's own
launch and the candidates on the data the entry was tuned on, with the dense baselines and
the published default timed in the same run, and keeps the fastest.
"""
import dataclasses
import datetime as _dt

import torch
import triton

from ..op.launch_config import LaunchConfig
from ..op.pbs_attention import portable
from ..runtime.profiles import ProfileEntry
from . import space as search_space
from .evaluate import Calibration, compared, dense_baselines, load_calibration, measure


def candidates(launch: LaunchConfig, arch: int | None) -> list:
    """The entry's launch, the same tiles on the portable kernel and, from sm_90 on (and in the
    interpreter, arch None), on the Hopper kernel with each persistent-grid choice of the space."""
    base = portable(launch)
    out = [launch, base]
    if arch is None or arch >= 90:
        out += [dataclasses.replace(base, tma=True, programs_per_sm=p) for p in search_space.GPU_SPACE["programs_per_sm"]]
    return list(dict.fromkeys(out))


def calibration_for(entry: ProfileEntry, device: str, seed: int = 0) -> Calibration:
    """The entry's own calibration data: its synthetic workload, or its captured Q/K/V file."""
    from ..dtypes import torch_dtype
    source = entry.info.get("calibration", "workload:mixed")
    kind, _, name = source.partition(":")
    if kind not in ("workload", "capture"):
        raise ValueError(f"entry {entry.describe()}: unknown calibration {source!r}")
    return load_calibration(seqlen=entry.seqlen, heads=entry.heads, kv_heads=entry.kv_heads,
                            head_dim=entry.head_dim, dtype=torch_dtype(entry.dtype), device=device,
                            workload=name if kind == "workload" else "mixed",
                            calib_file=name if kind == "capture" else None, seed=seed)


def relaunch_entry(entry: ProfileEntry, cal: Calibration, *, arch: int | None, on_gpu: bool) -> ProfileEntry:
    """The entry with the fastest of `candidates` as its launch, its figures re-measured in this run."""
    if entry.layers:
        raise ValueError(f"entry {entry.describe()} has per-layer plans; re-plan it (pbs-tune plan) instead")
    times, results = {}, {}
    for lc in candidates(entry.launch, arch):
        cfg = search_space.TrialConfig(entry.params, lc)
        results[lc] = measure(cal, cfg, on_gpu=on_gpu)
        times[lc.label()] = round(results[lc]["latency_ms"], 4)
    best = min(results, key=lambda lc: results[lc]["latency_ms"])
    got = results[best]
    ref_cfg = search_space.reference_config(entry.head_dim, cpu=not on_gpu)
    reference = dict(config=ref_cfg.as_dict(), **measure(cal, ref_cfg, on_gpu=on_gpu))
    lat = got["latency_ms"]
    figures = compared(lat, dense_baselines(cal, on_gpu=on_gpu), reference)
    dense_faster = figures.pop("dense_faster")
    info = dict(entry.info, **figures,
                relaunch=dict(latency_ms=times, chosen=best.label(), date=_dt.date.today().isoformat()),
                versions=dict(entry.info.get("versions", {}), torch=str(torch.__version__),
                              triton=str(triton.__version__)),
                date=_dt.date.today().isoformat())
    measured = dict(latency_ms=round(lat, 4), rel_l2=round(got["rel_l2"], 5), recall=round(got["recall"], 5),
                    density=round(got["density"], 4))
    return dataclasses.replace(entry, launch=best, measured=measured, info=info, dense_faster=dense_faster)
