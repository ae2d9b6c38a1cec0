"""One builder of profile entries, shared by `sweep`, `relaunch` and `plan`.

Whatever made the config, an entry carries the same things: its measured figures rounded the
same way, the dense baselines and the published default timed in the same run (and the
speed-ups derived from them only on a GPU), and its provenance stamped with the versions and
date it was made with.
"""
import dataclasses
import datetime as _dt

from ..profile.profiles import ProfileEntry
from ..profile.provenance import Baselines, Provenance


def measured_figures(m: dict, latency_ms: float | None = None) -> dict:
    """latency_ms, rel_l2, recall and density of a measurement, rounded as profiles keep them."""
    latency_ms = m.get("latency_ms") if latency_ms is None else latency_ms
    out = dict(latency_ms=None if latency_ms is None else round(latency_ms, 4), rel_l2=round(m["rel_l2"], 5),
               recall=round(m["recall"], 5), density=round(m["density"], 4))
    return {k: v for k, v in out.items() if v is not None}


def compared(latency_ms: float, baselines: dict, reference: dict, *, on_gpu: bool) -> tuple:
    """(Baselines, reference, speed-ups, dense_faster) of a config's latency beside dense SDPA and the
    published default timed in the same run. The interpreter's times only order trials on a CPU: no
    speed-up is derived from them, and dense is never called faster there."""
    base = Baselines.from_dict({k: (round(v, 4) if isinstance(v, float) else v) for k, v in baselines.items()})
    speedup = {name: round(ms / latency_ms, 3) for name, ms in (
        ("vs_cudnn", base.cudnn_ms), ("vs_flash", base.flash_ms), ("vs_reference", reference.get("latency_ms")))
        if ms and on_gpu}
    dense = base.fastest_ms()
    return (base, {k: (round(v, 5) if isinstance(v, float) else v) for k, v in reference.items()}, speedup,
            dense is not None and dense < latency_ms)


def stamped(provenance: Provenance, **versions) -> Provenance:
    """`provenance` with today's date and the torch and Triton versions (and any others given)."""
    import torch
    import triton
    return dataclasses.replace(provenance, date=_dt.date.today().isoformat(),
                               versions=dict(provenance.versions, torch=str(torch.__version__),
                                             triton=str(triton.__version__), **versions))


def make_entry(*, gpu: str, shape: dict, params, launch, provenance: Provenance, layers=None, measured=None,
               baselines=None, reference=None, on_gpu=False, **versions) -> ProfileEntry:
    """A profile entry of `shape` (seqlen, heads, kv_heads, head_dim, dtype) on `gpu`. With `measured`
    (a measurement with its latency) the entry keeps its figures and, with `baselines` and
    `reference` timed beside it, the comparison with dense attention and the default."""
    dense_faster = False
    if measured is not None:
        base, ref, speedup, dense_faster = compared(measured["latency_ms"], baselines or {}, reference or {},
                                                    on_gpu=on_gpu)
        provenance = dataclasses.replace(provenance, baselines=base, reference=ref, speedup=speedup)
    return ProfileEntry(gpu=gpu, params=params, launch=launch, layers=layers or {}, dense_faster=dense_faster,
                        measured=measured_figures(measured) if measured is not None else {},
                        provenance=stamped(provenance, **versions), **shape)
