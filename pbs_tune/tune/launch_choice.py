"""Choose a config's launch over several calibration sources at once, not on the one it was
searched on.

Every launch computes the same kept blocks exactly, so the launch changes only the speed, but
which launch is fastest depends on the data: on an H200 a persistent Hopper grid chosen on the
mixed workload ran 0.92x the stock launch on a workload of another construction (issue 23).
So each candidate is timed on every source (each workload family, the calibration workload's next
seed, a capture when given) beside the stock launch of the same parameters, and the rule is:

    keep the candidates that are never slower than the stock launch on any source by more than
    NOISE; among them take the highest geometric-mean speedup over the sources.

The stock launch always qualifies, so the choice is never worse than it beyond noise.
"""
import dataclasses
import functools
import math

import torch

from .. import progress
from ..profile.launch import LaunchConfig, default_launch
from ..profile.provenance import DataSource, LaunchChoice
from ..profile.target import Target
from ..op.pbs_attention import pbs_attention
from ..measure.timing import median_ms
from . import space
from ..measure.workloads import CALIBRATION_SETS, FAMILIES, make_qkv

NOISE = 0.03  # run-to-run spread of do_bench medians of one config on the H200 is ~1-2%
RULE = (f"never slower than the stock launch on any source by more than {NOISE:.0%}; "
        f"then the best geometric-mean speedup over the sources")


def stock_launch(block_size: int, head_dim: int, target: Target) -> LaunchConfig:
    """The launch the untuned op uses for these parameters on this device."""
    return default_launch(block_size, head_dim, target.capability)


def candidates(launch: LaunchConfig, stock: LaunchConfig, arch: int | None) -> list:
    """The searched launch, the stock one, and the same tiles on the portable kernel and, where the
    Hopper kernel exists (sm_90+) or is asked for (a searched launch on it, or the interpreter's
    space holding it: space.CPU_SPACE), on it with each persistent grid."""
    base = dataclasses.replace(launch, tma=False, programs_per_sm=0)
    out = [stock, launch, base]
    hopper = "tma" in (space.gpu_space(arch) if arch is not None else space.CPU_SPACE)["kernel"]
    if hopper or launch.tma:
        out += [dataclasses.replace(base, tma=True, programs_per_sm=p) for p in space.GPU_SPACE["programs_per_sm"]]
    return list(dict.fromkeys(out))


def source_names(workload: str, seed: int, capture: str | None = None) -> list:
    """The sources a launch is judged on: the calibration data, its next seed (or the capture),
    and every other workload family (a calibration set of families: each at its next seed)."""
    if workload in CALIBRATION_SETS and not capture:
        return [str(DataSource.workload(w, seed + 1)) for w in CALIBRATION_SETS[workload]]
    own = [DataSource.capture(capture)] if capture else [DataSource.workload(workload, s) for s in (seed, seed + 1)]
    others = [DataSource.workload(w, seed) for w in (*FAMILIES, "mixed") if w != workload or capture]
    return [str(source) for source in own + others]


def load_source(name: str, *, seqlen, heads, kv_heads, head_dim, dtype, device):
    """(q, k, v) of a source name from `source_names` (a capture: its first layer and sequence)."""
    source = DataSource.parse(name)
    if source.capture_path:
        from .evaluate import read_capture
        q, k, v, _, _ = read_capture(source.capture_path, seqlen, dtype, device)
        return q[:1], k[:1], v[:1]
    return make_qkv(source.name, seqlen=seqlen, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                    device=device, seed=source.seed or 0)


def time_launches(params, launches, sources, *, shape: dict, target: Target, timer=None) -> dict:
    """{launch label: {source: ms}} of the whole op with `params` and each launch (`timer`: median_ms)."""
    timer = timer or median_ms
    times = {lc.label(): {} for lc in launches}
    steps = progress.Steps("launch choice: source", len(sources))
    for name in sources:
        qkv = load_source(name, **shape)
        for lc in launches:
            run = functools.partial(pbs_attention, *qkv, params, launch=lc)
            with torch.no_grad():
                times[lc.label()][name] = round(timer(run, target.on_gpu), 4)
        del qkv, run
        steps.step(name)
    return times


def robust_pick(times: dict, stock: str, noise: float = NOISE) -> tuple:
    """(chosen label, {label: summary}) by RULE from {label: {source: ms}}."""
    summary = {}
    for label, by_source in times.items():
        ratios = [times[stock][s] / ms for s, ms in by_source.items()]
        summary[label] = dict(worst=round(min(ratios), 4),
                              geomean=round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 4),
                              qualifies=min(ratios) >= 1.0 - noise)
    chosen = max((label for label, s in summary.items() if s["qualifies"]),
                 key=lambda label: (summary[label]["geomean"], label == stock))
    return chosen, summary


def choose_launch(params, launch: LaunchConfig, sources, *, shape: dict, target: Target, timer=None) -> tuple:
    """(LaunchConfig, LaunchChoice for the entry's provenance) chosen by RULE over `sources`."""
    stock = stock_launch(params.block_size, shape["head_dim"], target)
    launches = candidates(launch, stock, target.arch)
    times = time_launches(params, launches, sources, shape=shape, target=target, timer=timer)
    chosen, summary = robust_pick(times, stock.label())
    choice = LaunchChoice(rule=RULE, stock=stock.label(), searched=launch.label(), chosen=chosen,
                          sources=list(sources), latency_ms=times, summary=summary)
    return next(lc for lc in launches if lc.label() == chosen), choice
