"""Tuned profiles: YAML files of chosen configs per (GPU, length, shape, dtype).

An entry is a typed `ProfileEntry` (params, launch, per-layer overrides, measurements and
provenance) that
every reader shares: the loader, the kernel library, the CLI and the reports. Entries are
checked field by field when a file is read, so a bad value is reported with its file, entry
and field instead of failing inside a model's forward. Writes are atomic (temp file +
rename) under a file lock and merge with what is there; a file that does not parse is
reported with its line and never overwritten.
"""
import datetime as _dt
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field

import yaml
from filelock import FileLock

from ..dtypes import NAMES as DTYPE_NAMES
from ..seqlen import format_length
from .launch import REQUIRED_FIELDS as LAUNCH_REQUIRED
from .launch import LaunchConfig
from .params import PbsParams, describe_config
from .provenance import Provenance

logger = logging.getLogger("pbs_tune")
SCHEMA_VERSION = 1
KEY_FIELDS = ("gpu", "seqlen", "heads", "kv_heads", "head_dim", "dtype")
REQUIRED = KEY_FIELDS + ("params", "launch")
DENSE = "dense"  # a layer override that keeps SDPA
# On a GPU whose entries were never tuned there (`not_tuned`) the loader runs PBS from this many keys
# only: the crossover against dense was never measured on it. On the H100 and H200 PBS ran 2.1-2.4x
# cuDNN at 32k and 0.9-1.1x at 8k; from 32k another GPU would have to favour dense attention over
# twice as much as Hopper does for PBS to lose.
UNTUNED_MIN_SEQLEN = 32768
# Chunks after a cached prefix that an entry has no measured crossover for (`min_chunk`) run PBS from
# this many queries. Measured before chunks kept a prefix state, when each chunk re-permuted the whole
# prefix (H200, 32k prefix: 2k chunks 0.97x the dense cuDNN split, 4k 1.46x; benchmarks/README.md).
MIN_CHUNK = 4096


class ProfileError(ValueError):
    """A profile file that cannot be used as it is."""


@dataclass(frozen=True)
class KernelKey:
    """What the compiled kernels of a config depend on: never the length, the head counts or the
    threshold itself (only whether it keeps every block), so a threshold-only re-tune reuses
    them; the loader warms up one config per key."""

    dtype: str
    head_dim: int
    block_size: int
    segment_size: int  # the segment sort is specialised on it
    permute: bool      # unpermuted selection runs no segment sort
    estimator: str     # "lse" runs the block-scores kernel
    keep_all: bool
    launch: LaunchConfig

    @classmethod
    def of(cls, entry, params: PbsParams, launch: LaunchConfig) -> "KernelKey":
        return cls(entry.dtype, entry.head_dim, params.block_size, params.segment_size, params.permute,
                   params.estimator, params.keeps_all, launch)


@dataclass
class ProfileEntry:
    gpu: str
    seqlen: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    params: PbsParams
    launch: LaunchConfig
    layers: dict = field(default_factory=dict)  # layer index -> (PbsParams, LaunchConfig) or DENSE
    dense_faster: bool = False                  # SDPA beat the best sparse config at this length
    measured: dict = field(default_factory=dict)  # latency_ms, rel_l2, recall, density
    provenance: Provenance = field(default_factory=Provenance)  # data, study, checks, baselines
    # Why the loader never runs this entry (a held-out check over the error bound, with its figure);
    # None for an entry that passed. Written so that `show` lists it, never silently dropped.
    failed_check: str | None = None
    # Why this entry was never measured on its GPU (no such GPU was available): the loader then runs
    # it only from a conservative length and says so; None for an entry tuned where it runs.
    not_tuned: str | None = None
    # Chunked prefill: cached prefix length -> the fewest chunk queries from which PBS beat dense
    # chunked attention there (None: dense at every chunk size measured); written by
    # `python -m pbs_tune.bench.crossover --chunks --update`. Empty: not measured (MIN_CHUNK).
    min_chunk: dict = field(default_factory=dict)

    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEY_FIELDS)

    def shape(self) -> dict:
        """seqlen, heads, kv_heads, head_dim and dtype (its key without the GPU)."""
        return {k: getattr(self, k) for k in KEY_FIELDS[1:]}

    def min_chunk_at(self, prefix: int) -> float:
        """The fewest queries a chunk after `prefix` cached keys needs for PBS: the measurement at the
        longest measured prefix up to this one; MIN_CHUNK below every measured prefix or unmeasured."""
        at = [p for p in self.min_chunk if p <= prefix]
        if not at:
            return MIN_CHUNK
        value = self.min_chunk[max(at)]
        return math.inf if value is None else value

    def config_for_layer(self, layer_idx):
        """(PbsParams, LaunchConfig) for this layer, or None when it stays dense."""
        chosen = self.layers.get(layer_idx, (self.params, self.launch)) if layer_idx is not None \
            else (self.params, self.launch)
        return None if chosen == DENSE else chosen

    def configs(self):
        """Every (PbsParams, LaunchConfig) this entry can run: its own and its layers'."""
        own = [(self.params, self.launch)]
        return own + [c for c in self.layers.values() if c != DENSE and c not in own]

    def kernel_keys(self) -> list:
        return sorted({KernelKey.of(self, p, lc) for p, lc in self.configs()}, key=repr)

    def describe(self) -> str:
        """One line: '32k 32/8/128 bfloat16 b128 s256 τ0.9 128x128w8s3'."""
        return (f"{format_length(self.seqlen)} {self.heads}/{self.kv_heads}/{self.head_dim} {self.dtype} "
                f"{describe_config(self.params, self.launch)}")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in KEY_FIELDS}
        out.update(params=self.params.as_dict(), launch=self.launch.as_dict())
        if self.layers:
            out["layers"] = {str(i): (c if c == DENSE else dict(params=c[0].as_dict(), launch=c[1].as_dict()))
                             for i, c in sorted(self.layers.items())}
        if self.measured:
            out["measured"] = dict(self.measured)
        out.update(self.provenance.to_dict())
        out["dense_faster"] = self.dense_faster
        if self.min_chunk:
            out["min_chunk"] = dict(sorted(self.min_chunk.items()))
        for name in ("failed_check", "not_tuned"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d, where="entry"):
        """Check every field; ProfileError names `where` and the field at fault."""
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected a mapping, got {type(d).__name__}")
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ProfileError(f"{where} lacks {', '.join(missing)}")
        gpu = d["gpu"]
        if not isinstance(gpu, str) or not gpu:
            raise ProfileError(f"{where}: gpu must be a GPU name, got {gpu!r}")
        ints = {k: _positive_int(d[k], f"{where}: {k}") for k in ("seqlen", "heads", "kv_heads", "head_dim")}
        if ints["heads"] % ints["kv_heads"]:
            raise ProfileError(f"{where}: heads {ints['heads']} is not a multiple of kv_heads {ints['kv_heads']}")
        if d["dtype"] not in DTYPE_NAMES:
            raise ProfileError(f"{where}: dtype {d['dtype']!r} is not one of {', '.join(DTYPE_NAMES)}")
        params, launch = _config(d, where, ints["heads"])
        layers = {}
        raw_layers = d.get("layers") or {}
        if not isinstance(raw_layers, dict):
            raise ProfileError(f"{where}: layers must map layer indices to 'dense' or params/launch")
        for name, value in raw_layers.items():
            idx = _layer_index(name, f"{where}: layers")
            layers[idx] = DENSE if value == DENSE else _config(value, f"{where}: layers.{name}", ints["heads"])
        measured = d.get("measured") or {}
        if not isinstance(measured, dict):
            raise ProfileError(f"{where}: measured must be a mapping")
        reasons = {}
        for name in ("failed_check", "not_tuned"):
            reasons[name] = d.get(name)
            if reasons[name] is not None and (not isinstance(reasons[name], str) or not reasons[name]):
                raise ProfileError(f"{where}: {name} must be a sentence saying why, got {reasons[name]!r}")
        min_chunk = d.get("min_chunk") or {}
        if not isinstance(min_chunk, dict) or any(
                isinstance(p, bool) or not isinstance(p, int) or p <= 0 or not (
                    c is None or (isinstance(c, int) and not isinstance(c, bool) and c > 0))
                for p, c in min_chunk.items()):
            raise ProfileError(f"{where}: min_chunk must map prefix lengths to chunk sizes (positive integers, "
                               f"or null where dense won at every size), got {min_chunk!r}")
        known = set(REQUIRED) | {"layers", "measured", "dense_faster", "min_chunk"} | set(reasons)
        try:
            provenance = Provenance.from_dict({k: v for k, v in d.items() if k not in known}, where)
        except (ValueError, TypeError) as exc:
            raise ProfileError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
        return cls(gpu=gpu, dtype=d["dtype"], params=params, launch=launch, layers=layers,
                   dense_faster=bool(d.get("dense_faster", False)), measured=measured, provenance=provenance,
                   min_chunk=dict(min_chunk), **reasons, **ints)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProfileError(f"{what} must be a positive integer, got {value!r}")
    return value


PARAMS_REQUIRED = ("block_size", "segment_size", "threshold")


def _layer_index(name, what):
    try:
        idx = int(name)
    except (TypeError, ValueError):
        idx = -1
    if idx < 0:
        raise ProfileError(f"{what}: {name!r} is not a layer index (0, 1, ...)")
    return idx


def _config(d, where, heads):
    """(PbsParams, LaunchConfig) from a mapping with 'params' and 'launch', checked."""
    if not isinstance(d, dict) or not isinstance(d.get("params"), dict) or not isinstance(d.get("launch"), dict):
        raise ProfileError(f"{where}: expected 'params' and 'launch' mappings (or 'dense' for a layer)")
    p, lc = d["params"], d["launch"]
    if "precision" in p:
        raise ProfileError(f"{where}: params.precision is no longer a parameter: the 8-bit attend modes were "
                           f"removed (slower than 16-bit on Hopper); delete the `precision:` line")
    for part, value, fields in (("params", p, PbsParams.__dataclass_fields__),
                                ("launch", lc, LaunchConfig.__dataclass_fields__)):
        extra = sorted(set(value) - set(fields))
        if extra:
            raise ProfileError(f"{where}: {part} has unknown field(s) {', '.join(map(str, extra))}")
        lacking = [f for f in fields if f not in value
                   and (f in LAUNCH_REQUIRED if part == "launch" else f in PARAMS_REQUIRED)]
        if lacking:
            raise ProfileError(f"{where}: {part} lacks {', '.join(lacking)}")
    try:
        params = PbsParams(**p)  # a field left out takes its default (the retrieval knobs: on)
        params.per_head(heads)
    except ValueError as exc:
        raise ProfileError(f"{where}: params.{exc}") from None
    launch = LaunchConfig(**{k: (_positive_int(v, f"{where}: launch.{k}") if k in LAUNCH_REQUIRED else v)
                             for k, v in lc.items()})
    try:
        launch.check(params.block_size)
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None
    return params, launch


@dataclass
class Profile:
    path: str
    entries: list = field(default_factory=list)  # ProfileEntry
    gpu: str | None = None      # whose entries the loader uses (set by the loader)
    library: str | None = None  # folder of its compiled kernels (the file's `kernels:`, relative to it)
    runnable: bool = True       # False when loaded as data for a GPU that is not present
    load_times: dict = field(default_factory=dict)  # where load_profile() spent its time
    _nearest: dict = field(default_factory=dict, repr=False, compare=False)  # shape -> serving shape
    _by_shape: dict = field(default_factory=dict, repr=False, compare=False)  # shape -> entries by length
    _index_size: int = field(default=-1, repr=False, compare=False)

    def for_gpu(self, gpu):
        """The entries of `gpu` that may run: not one that failed its held-out check."""
        return [e for e in self.entries if e.gpu == gpu and not e.failed_check]

    def for_shape(self, *, gpu, heads, kv_heads, head_dim, dtype):
        """Entries of one shape that may run, by length (indexed once: the loader asks at every
        attention call). An entry that failed its held-out check is never among them."""
        if self._index_size != len(self.entries):
            self._by_shape = {}
            for e in sorted((e for e in self.entries if not e.failed_check), key=lambda e: e.seqlen):
                self._by_shape.setdefault((e.gpu, e.heads, e.kv_heads, e.head_dim, e.dtype), []).append(e)
            self._index_size = len(self.entries)
        return list(self._by_shape.get((gpu, heads, kv_heads, head_dim, dtype), ()))

    def pick(self, seqlen, *, nearest=False, **shape):
        """Entry tuned for the largest length <= seqlen, or None below the smallest. With
        `nearest`, a shape without entries uses the nearest tuned one (`nearest_shape`)."""
        if nearest:
            shape = self.nearest_shape(**shape) or shape
        below = [e for e in self.for_shape(**shape) if e.seqlen <= seqlen]
        return below[-1] if below else None

    def nearest_shape(self, *, gpu, heads, kv_heads, head_dim, dtype):
        """The tuned shape that serves this one: itself if tuned, else the one of the same GPU,
        head_dim and dtype with the closest GQA ratio (then head count), said once; None if none.
        What a config costs and keeps depends on the ratio (query heads sharing one key order),
        not on the head count, and the kernels take any head count."""
        want = (heads, kv_heads)
        key = (gpu, heads, kv_heads, head_dim, dtype)
        if key not in self._nearest:
            tuned = {(e.heads, e.kv_heads) for e in self.entries
                     if (e.gpu, e.head_dim, e.dtype) == (gpu, head_dim, dtype) and not e.failed_check}
            best = None
            if tuned and want not in tuned:
                ratio = heads / kv_heads
                best = min(tuned, key=lambda hk: (abs(math.log(hk[0] / hk[1] / ratio)),
                                                  abs(math.log(hk[0] / heads)), hk))
                logger.warning("pbs_tune: %s has no entry for %d/%d heads (head_dim %d, %s); using the nearest "
                               "tuned shape %d/%d (re-tune with pbs-tune sweep --heads %d --kv-heads %d for this one)",
                               self.path, heads, kv_heads, head_dim, dtype, *best, heads, kv_heads)
            elif tuned:
                best = want
            self._nearest[key] = None if best is None else dict(gpu=gpu, heads=best[0], kv_heads=best[1],
                                                                 head_dim=head_dim, dtype=dtype)
        return self._nearest[key]


def load(path: str) -> Profile:
    """Read and validate a profile; ProfileError names the file, line or entry of any problem."""
    if not os.path.exists(path):
        raise ProfileError(f"{path}: no such profile")
    if os.path.isdir(path):
        raise ProfileError(f"{path} is a directory; give the profile's .yaml file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ProfileError(f"{path} is not a text file; give a profile .yaml written by pbs-tune sweep") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ProfileError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return Profile(path, [])
    if not isinstance(data, dict) or "entries" not in data:
        raise ProfileError(f"{path}: expected a mapping with 'schema_version' and 'entries'")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ProfileError(f"{path}: schema_version {data.get('schema_version')!r} is not "
                           f"{SCHEMA_VERSION}; re-run pbs-tune sweep to regenerate it")
    entries = data["entries"] or []
    if not isinstance(entries, list):
        raise ProfileError(f"{path}: 'entries' must be a list")
    library = data.get("kernels")
    if library is not None and not isinstance(library, str):
        raise ProfileError(f"{path}: 'kernels' must be the folder of its kernel library, relative to the file")
    if library is not None:
        library = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), library))
    return Profile(path, [ProfileEntry.from_dict(e, f"{path}: entry {i}") for i, e in enumerate(entries)],
                   library=library)


def merge_entries(path: str, new_entries, library: str | None = None) -> Profile:
    """Add or replace entries (same key) in the profile at `path`, atomically.

    `new_entries` are ProfileEntry objects or dicts in the file's format (checked the same way).
    `library` (a folder) is recorded relative to the file; otherwise the file keeps its own.
    """
    new_entries = [e if isinstance(e, ProfileEntry) else ProfileEntry.from_dict(e, f"new entry {i}")
                   for i, e in enumerate(new_entries)]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    lock_path = os.path.join(tempfile.gettempdir(), "pbs-tune-" + os.path.abspath(path).replace(os.sep, "_") + ".lock")
    with FileLock(lock_path, timeout=120):
        current = load(path) if os.path.exists(path) else Profile(path)
        library = library or current.library
        merged = {e.key(): e for e in current.entries}
        for e in new_entries:
            merged[e.key()] = e
        entries = sorted(merged.values(), key=lambda e: (e.gpu, e.dtype, e.heads, e.seqlen))
        doc = dict(schema_version=SCHEMA_VERSION,
                   updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        if library:
            doc["kernels"] = os.path.relpath(os.path.abspath(library), folder)
        doc["entries"] = [e.to_dict() for e in entries]
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".profile-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                yaml.dump(doc, f, Dumper=_ProfileDumper, sort_keys=False, allow_unicode=True, width=120)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return Profile(path, entries, library=library and os.path.abspath(library))


class _ProfileDumper(yaml.SafeDumper):
    """Block style, except that a list of plain values (per-head thresholds) is one line."""

    def represent_list(self, data):
        flat = all(isinstance(x, (int, float, str, bool)) or x is None for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_ProfileDumper.add_representer(list, _ProfileDumper.represent_list)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
