"""What one length of a sweep reads, resolved in one step before its trials: the measurement
function, the calibration data and the held-out data as plain requests, and the launch sources.

SweepSpec stays plain data (what the user asked); this is where it meets files and tensors. A
request is read with `load` where it is used and freed when that scope ends, so the sweep never
holds two data sets at once (at 128k a calibration set is GBs of GPU memory).
"""
import importlib
from dataclasses import dataclass
from typing import Callable

from ..dtypes import torch_dtype
from ..measure.workloads import CALIBRATION_SETS
from . import launch_choice
from .evaluate import Calibration, load_calibration, measure_config
from .spec import OTHER_FAMILY, SweepSpec


@dataclass(frozen=True)
class DataRequest:
    """One data set: a workload family's seed (a batch of `samples`), or a capture file."""

    workload: str
    seed: int
    capture: str | None = None


@dataclass(frozen=True)
class LengthData:
    """One length's sweep, resolved: `spec` (one length), the function a config is measured with,
    the calibration data, the held-out data the chosen config is checked on, and the sources its
    launch is judged on."""

    spec: SweepSpec
    measure_config: Callable
    calibration: DataRequest
    held_out: tuple
    launch_sources: tuple

    def shape(self) -> dict:
        """The shape of this length's inputs, as launch_choice times them."""
        s = self.spec
        return dict(seqlen=s.seqlen, heads=s.heads, kv_heads=s.kv_heads, head_dim=s.head_dim,
                    dtype=torch_dtype(s.dtype), device=s.target.device)

    def load(self, request: DataRequest) -> Calibration:
        """Read one data set (with its dense reference); it lives as long as the caller's scope."""
        return load_calibration(**self.shape(), workload=request.workload, calib_file=request.capture,
                                seed=request.seed, samples=self.spec.samples)


def resolve_length(spec: SweepSpec) -> LengthData:
    """The data and measurement of a one-length spec (SweepSpec.at)."""
    return LengthData(spec, measurement(spec), DataRequest(spec.workload, spec.seed, spec.calib),
                      held_out_requests(spec), launch_sources(spec))


def measurement(spec: SweepSpec) -> Callable:
    """The function that measures a config on calibration data: `spec.stand_in`
    ("module:function", tests of the study's bookkeeping), else evaluate.measure_config."""
    if spec.stand_in is None:
        return measure_config
    module, _, name = spec.stand_in.partition(":")
    return getattr(importlib.import_module(module), name)


def held_out_requests(spec: SweepSpec) -> tuple:
    """What the chosen config is checked on afterwards: the workload's next seed and the next seed
    of another workload family (never calibrated on), or the capture of other text. A calibration
    set (every family) is checked on its next seed."""
    if spec.calib:
        return (DataRequest(spec.workload, spec.seed + 1, spec.holdout_calib),) if spec.holdout_calib else ()
    same = DataRequest(spec.workload, spec.seed + 1)
    if spec.workload in CALIBRATION_SETS:
        return (same,)
    return same, DataRequest(OTHER_FAMILY[spec.workload], spec.seed + 1)


def launch_sources(spec: SweepSpec) -> tuple:
    """The data the chosen launch is judged on: spec.launch_sources, else every workload family and
    the next seed (or the capture) on a GPU, none in the interpreter."""
    if spec.launch_sources is not None:
        return tuple(spec.launch_sources)
    return tuple(launch_choice.source_names(spec.workload, spec.seed, spec.calib)) if spec.on_gpu else ()
