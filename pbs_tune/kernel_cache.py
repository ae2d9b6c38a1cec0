"""Compiled attend kernels per GPU under cache/<gpu>/, so run time compiles nothing.

The cache is Triton's own on-disk cache, pointed at cache/<gpu>/triton, plus a manifest
recording the Triton version and a SHA-256 of every file. A file that fails its hash, or
a cache built by another Triton version, is detected and the cache is rebuilt, never used.
"""
import hashlib
import json
import os
import shutil

import torch
import triton

MANIFEST = "manifest.json"


def cache_dir(gpu: str, root: str = "cache") -> str:
    return os.path.join(root, gpu)


def point_triton_at(path: str) -> str:
    """Make Triton read and write compiled kernels under `path`/triton."""
    tdir = os.path.abspath(os.path.join(path, "triton"))
    os.makedirs(tdir, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = tdir
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "cache"):
        knobs.cache.dir = tdir
    return tdir


def _file_hashes(tdir: str) -> dict:
    out = {}
    for dirpath, _, files in os.walk(tdir):
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, tdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def write_manifest(path: str, entries) -> dict:
    tdir = os.path.join(path, "triton")
    manifest = dict(triton=str(triton.__version__), torch=str(torch.__version__),
                    configs=[_kernel_key(e) for e in entries], files=_file_hashes(tdir))
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def check(path: str) -> str | None:
    """None when the cache is usable as it is, else why it is not."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        return "no manifest"
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    if manifest.get("triton") != triton.__version__:
        return f"built by triton {manifest.get('triton')}, running {triton.__version__}"
    actual = _file_hashes(os.path.join(path, "triton"))
    for name, digest in manifest.get("files", {}).items():
        if actual.get(name) != digest:
            return f"file {name} is missing or corrupted"
    return None


def _kernel_key(entry) -> dict:
    """What a compiled attend kernel depends on (not the sequence length)."""
    return dict(dtype=entry["dtype"], head_dim=entry["head_dim"], block_size=entry["params"]["block_size"],
                **entry["launch"])


def build(gpu: str, entries, root: str = "cache", device: str = "cuda") -> dict:
    """Compile the attend kernel of every entry into a fresh cache/<gpu>/ and hash it."""
    from .evaluate import DTYPES
    from .launch import LaunchConfig
    from .op import attend
    from .permutation import identity_permutation
    from .selection import block_list_from_mask

    path = cache_dir(gpu, root)
    shutil.rmtree(path, ignore_errors=True)
    point_triton_at(path)
    seen = set()
    for e in entries:
        key = json.dumps(_kernel_key(e), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        bs = e["params"]["block_size"]
        n = 2 * bs
        dtype = DTYPES[e["dtype"]]
        q = torch.randn(1, 1, n, e["head_dim"], device=device, dtype=dtype)
        kv = torch.randn(1, 1, n, e["head_dim"], device=device, dtype=dtype)
        perm = identity_permutation(kv, kv)
        keep = torch.ones(2, 2, dtype=torch.bool, device=device).tril().expand(1, 1, 2, 2)
        attend(q, perm, block_list_from_mask(keep, perm.positions, bs), launch=LaunchConfig(**e["launch"]))
    if device == "cuda":
        torch.cuda.synchronize()
    return write_manifest(path, entries)


def ensure(gpu: str, entries, root: str = "cache", device: str = "cuda") -> str:
    """Point Triton at a valid cache for `entries`, rebuilding it when stale or corrupted."""
    path = cache_dir(gpu, root)
    problem = check(path)
    if problem is None:
        with open(os.path.join(path, MANIFEST)) as f:
            have = json.load(f).get("configs", [])
        missing = [e for e in entries if _kernel_key(e) not in have]
        if missing:
            problem = f"{len(missing)} config(s) not compiled yet"
    if problem is not None:
        build(gpu, entries, root, device)
    point_triton_at(path)
    return problem
