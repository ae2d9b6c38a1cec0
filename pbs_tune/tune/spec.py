"""What one `pbs-tune sweep` tunes, on which data, and where its study, profile and library go.

`SweepSpec` holds every choice with its default (the CLI only turns flags into one), as plain
data: what it reads is resolved from it in one step (sweep_data.py), and worker processes are
handed it as JSON. `check_spec` says in one line what cannot work,
before any GPU work.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, replace
from functools import cached_property

from ..profile import profiles
from ..profile import store as profile_store
from ..profile.params import ESTIMATORS
from ..profile.target import CPU, Target, interpreter_size_error

DEFAULT_MAX_ERROR = 0.10  # relative L2 of the output against dense attention
DEFAULT_MARGIN = 0.95     # per-head plans: each layer's error within this share of the reference's
MARGIN_RANGE = (0.1, 1.0)
# The held-out family of each calibration workload: one the sweep did not calibrate on.
OTHER_FAMILY = dict(mixed="retrieval", retrieval="stripes", stripes="sink_local", sink_local="diffuse",
                    diffuse="mixed")


@dataclass(frozen=True)
class SweepSpec:
    """One sweep, whole: what to tune, on which data, and where the study, profile and library
    go. Worker processes are handed it as JSON (`to_json`/`from_json`), not as flags."""

    gpu: str
    seqlens: tuple
    storage: str
    profile: str
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    workload: str = "mixed"
    calib: str | None = None          # captured Q/K/V to tune on instead of the workload
    holdout_calib: str | None = None  # with calib: a capture of other text for the held-out check
    max_error: float | None = DEFAULT_MAX_ERROR  # None: the published default's error on the calibration data
    trials: int = 40
    timeout: float | None = None
    seed: int = 0
    heartbeat_s: int = 10  # a worker silent for 3x this long is presumed dead
    per_head: bool = False  # per-layer plans (tune/allocate.py) around each trial's global knobs
    margin: float = DEFAULT_MARGIN
    estimators: tuple = ESTIMATORS  # per_head: the block estimators a layer's plan may use
    # Workload samples calibrated on (None: 4 with per_head, else 1; a capture brings its own).
    samples: int | None = None
    study: str | None = None  # the study's name (one length) or names' prefix
    library: str | None = None  # kernel library folder (default: the profile's)
    workers: int = 1
    compile: bool = True
    quiet: bool = False  # no progress on stderr, in this process and the workers
    # Sources the chosen config's launch is judged on (tune/launch_choice.py); None: every
    # workload family and the next seed (or the capture) on a GPU, none in the interpreter.
    launch_sources: tuple | None = None
    rewrite: bool = False  # a length whose study is finished and entry written is measured and written again
    bound_default: bool = False  # max_error was resolved from the default's error (--max-error default)
    # With bound_default: the default's error on each workload of a calibration set, each a bound, and
    # the tail's bounds under "tail" and "tail:<workload>" (tune/objective.py default_bounds, tail_bounds).
    source_bounds: dict | None = None
    # "module:function" standing in for tune.evaluate.measure_config (same arguments and result): what the
    # trials, the default and the held-out checks measure (sweep_data.measurement). Tests of the
    # study's bookkeeping use it.
    stand_in: str | None = None

    def __post_init__(self):
        if self.samples is not None and self.samples > 1 and self.calib:
            raise ValueError("--samples draws workload samples; a --calib capture has its own (capture --sequences N)")
        if self.samples is None:
            object.__setattr__(self, "samples", 4 if self.per_head and not self.calib else 1)

    @cached_property
    def target(self) -> Target:
        """The GPU this sweep tunes, resolved once per process."""
        return Target.named(self.gpu)

    @property
    def on_gpu(self) -> bool:
        return self.gpu != CPU

    @property
    def seqlen(self) -> int:
        """The length of a one-length spec (`at`)."""
        (n,) = self.seqlens
        return n

    def at(self, seqlen: int) -> "SweepSpec":
        return replace(self, seqlens=(seqlen,))

    def study_names(self) -> dict:
        """{length: study name}: `study` itself for one length, else its prefix."""
        if self.study and len(self.seqlens) == 1:
            return {self.seqlens[0]: self.study}
        return {n: self.at(n).study_name(self.study) for n in self.seqlens}

    def study_name(self, prefix=None):
        source = "capture" if self.calib else self.workload
        base = (f"{self.gpu}-{self.seqlen}-{self.heads}x{self.kv_heads}x{self.head_dim}-{self.dtype}-"
                f"{source}" + (f"-x{self.samples}" if self.samples > 1 else "")
                + (self._per_head_suffix() if self.per_head else ""))
        return f"{prefix}-{base}" if prefix else base

    def _per_head_suffix(self) -> str:
        """Studies of plans over other estimators are other studies (mean alone: the earlier name)."""
        return "-per-head" + ("" if self.estimators == ("mean",) else "-" + "-".join(self.estimators))

    def entry_shape(self) -> dict:
        """What keys this length's profile entry besides its GPU."""
        return dict(seqlen=self.seqlen, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                    dtype=self.dtype)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        d = json.loads(text)
        return cls(**dict(d, seqlens=tuple(d["seqlens"]), estimators=tuple(d["estimators"])))


def check_spec(spec: SweepSpec) -> None:
    """Everything that can be wrong with a sweep, said in one line before any GPU work."""
    if not MARGIN_RANGE[0] <= spec.margin <= MARGIN_RANGE[1]:
        raise ValueError(f"--margin {spec.margin} is outside {MARGIN_RANGE[0]}..{MARGIN_RANGE[1]}")
    if spec.heads % spec.kv_heads:
        raise ValueError(f"--heads {spec.heads} must be a multiple of --kv-heads {spec.kv_heads}")
    if spec.holdout_calib and not spec.calib:
        raise ValueError("--holdout-calib checks a --calib sweep; a workload is checked on its next seed")
    if spec.holdout_calib:
        from .evaluate import captured_layers
        (_, held_ids), (_, calib_ids) = captured_layers(spec.holdout_calib), captured_layers(spec.calib)
        if held_ids != calib_ids:
            raise ValueError(f"--holdout-calib {spec.holdout_calib} holds layers {held_ids}; --calib holds "
                             f"{calib_ids}: capture the same --layers")
    # The user store's folder is made on first use; a folder the user named must exist.
    from .storage import check_storage
    check_storage(spec.storage, create_folder=spec.storage == profile_store.default_storage_url())
    if spec.on_gpu and spec.dtype == "float32":
        raise ValueError("--dtype float32 is only for the CPU interpreter; use bfloat16 or float16")
    if not spec.on_gpu:
        too_big = next(filter(None, (interpreter_size_error(n, spec.heads) for n in spec.seqlens)), None)
        if too_big or spec.dtype == "bfloat16":
            why = too_big or "the CPU interpreter cannot run bfloat16"
            raise ValueError(f"{why}; on this CPU try: {profile_store.sweep_hint(CPU)}")
    if os.path.exists(spec.profile):
        profiles.load(spec.profile)  # fail now, not after an hour of tuning


@dataclass(frozen=True)
class PlanSpec:
    """What one `pbs-tune plan` makes (tune/model_plan.py): per-layer plans for one model from
    `seqlen` tokens, judged by the model, written to `profile`."""

    model: str                     # a model folder, or 'smollm2'
    seqlen: int
    profile: str
    gguf_file: str | None = None
    text_file: str | None = None   # calibration text (default: installed Python sources)
    margin: float = DEFAULT_MARGIN
    reference: float = 0.9         # the uniform threshold the plans must match
    probes: int = 40               # retrieval probe prompts (0: none)
    block_size: int = 128
    segment_size: int = 256
    dtype: str = "bfloat16"
    estimators: tuple = ESTIMATORS

    def __post_init__(self):
        if self.segment_size % self.block_size:
            raise ValueError(f"--segment-size {self.segment_size} must be a multiple of --block-size {self.block_size}")


def default(name: str, of=SweepSpec):
    """A field's default (SweepSpec's, or PlanSpec's): what the CLI shows and uses for a flag left out."""
    return of.__dataclass_fields__[name].default


def worker_count(text: str, on_gpu: bool) -> int:
    """--workers: a positive number, or 'auto' (one per visible GPU; on a CPU one interpreter
    worker per core, up to 4)."""
    if text == "auto":
        if on_gpu:
            import torch
            return torch.cuda.device_count()
        return max(1, min(4, os.cpu_count() or 1))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers must be a positive number or 'auto', got {text!r}")
    return n
