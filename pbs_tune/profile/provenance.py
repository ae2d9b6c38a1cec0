"""Where an entry's figures came from: its data, its study, its checks and what it was timed against.

Profiles keep these as plain YAML keys beside the entry (files of earlier releases read the
same); in memory they are typed, and this module is the only one that builds or parses a data
source name or reads those keys.
"""
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class DataSource:
    """Calibration or judging data: a synthetic workload (with its seed, and how many samples of
    it) or a capture file. Written 'workload:mixed', 'workload:mixed x4', 'workload:stripes@1',
    'capture:PATH'."""

    kind: str            # "workload" or "capture"
    name: str            # the workload's name, or the capture's path
    seed: int | None = None
    samples: int = 1

    def __post_init__(self):
        if self.kind not in ("workload", "capture"):
            raise ValueError(f"unknown data source kind {self.kind!r}: workload or capture")

    @classmethod
    def workload(cls, name: str, seed: int | None = None, samples: int = 1) -> "DataSource":
        return cls("workload", name, seed, samples)

    @classmethod
    def capture(cls, path: str) -> "DataSource":
        return cls("capture", path)

    @classmethod
    def parse(cls, text: str) -> "DataSource":
        kind, sep, rest = str(text).partition(":")
        if not sep or kind not in ("workload", "capture") or not rest:
            raise ValueError(f"data source {text!r} is not like 'workload:mixed' or 'capture:PATH'")
        if kind == "capture":
            return cls.capture(rest)
        name, _, samples = rest.partition(" x")
        name, _, seed = name.partition("@")
        return cls.workload(name, int(seed) if seed else None, int(samples) if samples else 1)

    def __str__(self) -> str:
        if self.kind == "capture":
            return f"capture:{self.name}"
        return (f"workload:{self.name}" + (f"@{self.seed}" if self.seed is not None else "")
                + (f" x{self.samples}" if self.samples > 1 else ""))

    @property
    def capture_path(self) -> str | None:
        return self.name if self.kind == "capture" else None


def _from(cls, d: dict, where: str):
    """A dataclass from its dict form; unknown keys are an error naming `where`."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    return cls(**d)


def _dict(obj) -> dict:
    """The dataclass's fields that are set (not None), in order."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass
class HeldOutCheck:
    """The chosen config and the published default on data the search never saw."""

    source: str
    trial: int
    calibration_rel_l2: float
    rel_l2: float
    reference_rel_l2: float | None
    within_bound: bool
    latency_ms: float | None = None
    reference_latency_ms: float | None = None
    speedup_vs_reference: float | None = None
    rel_l2_by_source: dict | None = None            # a calibration set: the error on each workload
    reference_rel_l2_by_source: dict | None = None
    # The tail (the last query block's rows, tune/objective.py), bounded beside the whole output:
    # None where it was not measured (files of earlier releases), and then not written.
    tail_rel_l2: float | None = None
    calibration_tail_rel_l2: float | None = None
    reference_tail_rel_l2: float | None = None
    tail_bound: float | None = None
    tail_rel_l2_by_source: dict | None = None
    reference_tail_rel_l2_by_source: dict | None = None

    @classmethod
    def from_dict(cls, d, where="held_out") -> "HeldOutCheck":
        return _from(cls, d, where)

    def to_dict(self) -> dict:
        d = _dict(self)
        for name in ("latency_ms", "reference_latency_ms", "speedup_vs_reference"):
            d.setdefault(name, None)  # written as null: not timed (interpreter)
        return d

    def by_source(self) -> str:
        """Its error on each workload of a calibration set beside the default's, or ''."""
        return _beside_default(self.rel_l2_by_source, self.reference_rel_l2_by_source)

    def tail_by_source(self) -> str:
        """Its tail error on each workload of a calibration set beside the default's, or ''."""
        return _beside_default(self.tail_rel_l2_by_source, self.reference_tail_rel_l2_by_source)


def _beside_default(errors: dict | None, reference: dict | None) -> str:
    """'name err (default err), ...' of a held-out check's errors per workload."""
    ref = reference or {}
    return ", ".join(f"{name} {err:.4f} (default {ref.get(name, float('nan')):.4f})"
                     for name, err in (errors or {}).items())


@dataclass
class LaunchChoice:
    """A launch judged over several sources (tune/launch_choice.py): the rule, the candidates'
    times per source and their summaries against the stock launch."""

    rule: str
    stock: str
    searched: str
    chosen: str
    sources: list
    latency_ms: dict   # {launch label: {source: ms}}
    summary: dict      # {launch label: {worst, geomean, qualifies}}

    @classmethod
    def from_dict(cls, d, where="launch_choice") -> "LaunchChoice":
        return _from(cls, d, where)

    def to_dict(self) -> dict:
        return _dict(self)

    def describe(self) -> str:
        s = self.summary[self.chosen]
        return (f"{self.chosen} (worst {s['worst']}x, geomean {s['geomean']}x the stock {self.stock}) "
                f"over {len(self.sources)} sources")


@dataclass
class Baselines:
    """Dense SDPA timed in the same run as the entry: cuDNN and flash, or why a backend refused."""

    cudnn_ms: float | None = None
    flash_ms: float | None = None
    errors: dict = field(default_factory=dict)  # backend -> its refusal

    @classmethod
    def from_dict(cls, d) -> "Baselines":
        d = d or {}
        return cls(d.get("cudnn_ms"), d.get("flash_ms"),
                   {k[:-len("_error")]: v for k, v in d.items() if k.endswith("_error")})

    def to_dict(self) -> dict:
        out = {k: v for k, v in (("cudnn_ms", self.cudnn_ms), ("flash_ms", self.flash_ms)) if v is not None}
        out.update({f"{k}_error": v for k, v in self.errors.items()})
        return out

    def fastest_ms(self) -> float | None:
        times = [t for t in (self.cudnn_ms, self.flash_ms) if t is not None]
        return min(times) if times else None


@dataclass
class Provenance:
    """Everything an entry records about how it was made; written beside it as plain keys."""

    calibration: DataSource | None = None
    study: str | None = None
    trial: int | None = None
    samples: int | None = None                     # workload samples calibrated on (> 1)
    max_error: float | None = None
    max_error_is_default: bool | None = None       # the bound was the default's error (--max-error default)
    max_error_by_source: dict | None = None        # ... on each workload of a calibration set
    rel_l2_by_source: dict | None = None
    baselines: Baselines = field(default_factory=Baselines)
    reference: dict = field(default_factory=dict)  # the published default measured in the same run
    speedup: dict = field(default_factory=dict)    # vs_cudnn, vs_flash, vs_reference
    held_out: list = field(default_factory=list)   # HeldOutCheck
    launch_choice: LaunchChoice | None = None
    per_head: dict | None = None                   # sweep --per-head: the plans' margin and bound
    plan: dict | None = None                       # pbs-tune plan: the margin used and the probe log
    relaunch: dict | None = None                   # pbs-tune relaunch: the launches timed and chosen
    crossover: dict | None = None                  # bench.crossover: loader, graph and eager times
    versions: dict = field(default_factory=dict)
    date: str | None = None
    extra: dict = field(default_factory=dict)      # keys this release does not know, kept as they were

    @classmethod
    def from_dict(cls, d: dict, where="entry") -> "Provenance":
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("calibration") is not None:
            d["calibration"] = DataSource.parse(d["calibration"])
        held = d.get("held_out") or []
        d["held_out"] = [HeldOutCheck.from_dict(h, f"{where}: held_out")
                         for h in (held if isinstance(held, list) else [held])]  # earlier files: one dict
        if d.get("launch_choice") is not None:
            d["launch_choice"] = LaunchChoice.from_dict(d["launch_choice"], f"{where}: launch_choice")
        d["baselines"] = Baselines.from_dict(d.get("baselines"))
        for name in ("reference", "speedup", "versions"):
            d[name] = d.get(name) or {}
        return cls(**d, extra=extra)

    def to_dict(self) -> dict:
        """The set fields as plain YAML values; unset (None) and empty ones are left out."""
        out = {}
        for f in fields(self)[:-1]:
            value = getattr(self, f.name)
            if isinstance(value, DataSource):
                value = str(value)
            elif isinstance(value, (LaunchChoice, Baselines)):
                value = value.to_dict()
            elif f.name == "held_out":
                value = [h.to_dict() for h in value]
            if value is not None and value != [] and value != {}:
                out[f.name] = value
        return {**out, **self.extra}
