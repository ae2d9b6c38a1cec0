"""Tuned profiles: YAML files of chosen configs per (GPU, length, shape, dtype).

Writes are atomic (temp file + rename) under a file lock and merge with what is there;
a file that does not parse is reported with its line and never overwritten.
"""
import datetime as _dt
import os
import tempfile
from dataclasses import dataclass, field

import yaml
from filelock import FileLock

SCHEMA_VERSION = 1
KEY_FIELDS = ("gpu", "seqlen", "heads", "kv_heads", "head_dim", "dtype")
REQUIRED = KEY_FIELDS + ("params", "launch")


class ProfileError(ValueError):
    """A profile file that cannot be used as it is."""


@dataclass
class Profile:
    path: str
    entries: list = field(default_factory=list)
    gpu: str | None = None  # the GPU it was loaded for (set by the loader)

    def for_shape(self, *, gpu, heads, kv_heads, head_dim, dtype):
        return sorted((e for e in self.entries if e["gpu"] == gpu and e["heads"] == heads
                       and e["kv_heads"] == kv_heads and e["head_dim"] == head_dim
                       and e["dtype"] == dtype), key=lambda e: e["seqlen"])

    def pick(self, seqlen, **shape):
        """Entry tuned for the largest length <= seqlen, or None below the smallest."""
        below = [e for e in self.for_shape(**shape) if e["seqlen"] <= seqlen]
        return below[-1] if below else None


def default_path(gpu: str, root: str = "configs") -> str:
    return os.path.join(root, f"{gpu}.yaml")


def load(path: str) -> Profile:
    """Read and validate a profile; ProfileError names the file and line of any problem."""
    if not os.path.exists(path):
        raise ProfileError(f"{path}: no such profile")
    with open(path) as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
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
    for i, e in enumerate(entries):
        missing = [k for k in REQUIRED if not isinstance(e, dict) or k not in e]
        if missing:
            raise ProfileError(f"{path}: entry {i} lacks {', '.join(missing)}")
    return Profile(path, entries)


def entry_key(entry) -> tuple:
    return tuple(entry[k] for k in KEY_FIELDS)


def merge_entries(path: str, new_entries) -> Profile:
    """Add or replace entries (same key) in the profile at `path`, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileLock(path + ".lock", timeout=120):
        current = load(path).entries if os.path.exists(path) else []
        merged = {entry_key(e): e for e in current}
        for e in new_entries:
            merged[entry_key(e)] = e
        entries = sorted(merged.values(), key=lambda e: (e["gpu"], e["dtype"], e["heads"], e["seqlen"]))
        doc = dict(schema_version=SCHEMA_VERSION,
                   updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   entries=entries)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".profile-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return Profile(path, entries)
