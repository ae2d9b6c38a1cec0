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

from ..dtypes import torch_dtype

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


def kernels_source_hash() -> str:
    """SHA-256 over the Triton kernel sources: a cache built from other sources is stale."""
    from .. import kernels
    folder = os.path.dirname(kernels.__file__)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def write_manifest(path: str, entries, earlier_configs=()) -> dict:
    tdir = os.path.join(path, "triton")
    configs = list(earlier_configs) + [c for c in _kernel_keys(entries) if c not in earlier_configs]
    manifest = dict(triton=str(triton.__version__), torch=str(torch.__version__),
                    kernels=kernels_source_hash(), configs=configs, files=_file_hashes(tdir))
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
    if manifest.get("kernels") != kernels_source_hash():
        return "built from other kernel sources"
    actual = _file_hashes(os.path.join(path, "triton"))
    for name, digest in manifest.get("files", {}).items():
        if actual.get(name) != digest:
            return f"file {name} is missing or corrupted"
    return None


def _kernel_keys(entries) -> list:
    """Every entry's kernel identities (ProfileEntry.kernel_key), as JSON-ready dicts."""
    keys = []
    for e in entries:
        for k in e.kernel_keys():
            d = dict(dtype=k.dtype, head_dim=k.head_dim, block_size=k.block_size, keep_all=k.keep_all,
                     **k.launch.as_dict())
            if d not in keys:
                keys.append(d)
    return keys


def build(gpu: str, entries, root: str = "cache", device: str = "cuda", fresh: bool = True) -> dict:
    """Compile every kernel the entries use into cache/<gpu>/ (emptied first if `fresh`).

    Runs the whole op once per entry at its tuned length on random data, so the key-score,
    selection and attend kernels are all compiled exactly as the loader will call them.
    """
    path = cache_dir(gpu, root)
    kept = []
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(os.path.join(path, MANIFEST)):
        with open(os.path.join(path, MANIFEST)) as f:
            kept = json.load(f).get("configs", [])
    point_triton_at(path)
    seen = set()
    for e in entries:
        for params, launch in e.configs():
            key = (e.dtype, e.heads, e.kv_heads, e.head_dim, params.block_size, params.threshold >= 1.0, launch)
            if key not in seen:
                seen.add(key)
                run_config_once(e, params, launch, e.seqlen, device)
    _compile_select_buckets(entries, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return write_manifest(path, entries, kept)


def run_config_once(entry, params, launch, seqlen, device="cuda"):
    """Run the whole op once, on random data of the entry's shape, with one of its configs."""
    from ..attention.op import pbs_attention
    dtype = torch_dtype(entry.dtype)
    q = torch.randn(1, entry.heads, seqlen, entry.head_dim, device=device, dtype=dtype)
    k = torch.randn(1, entry.kv_heads, seqlen, entry.head_dim, device=device, dtype=dtype)
    pbs_attention(q, k, k, block_size=params.block_size, segment_size=params.segment_size,
                  threshold=params.threshold, launch=launch)


def run_entry_once(entry, seqlen, device="cuda"):
    """Run the whole op once with the entry's own config."""
    run_config_once(entry, entry.params, entry.launch, seqlen, device)


def _compile_select_buckets(entries, device):
    """An entry serves prompts up to the next tuned length (the last one up to 4x its own);
    the selection kernel is compiled per power-of-two block count, so cover that range."""
    from ..kernels.block_select import select_rows
    lengths = sorted({e.seqlen for e in entries})
    for e in entries:
        for params, _ in e.configs():
            bs = params.block_size
            longer = [n for n in lengths if n > e.seqlen]
            top = -(-((longer[0] - 1) if longer else 4 * e.seqlen) // bs)
            nb = 1 << (-(-e.seqlen // bs) - 1).bit_length()
            while True:
                group = e.heads // e.kv_heads  # one KV head: the kernel is not specialised on counts
                kb = torch.zeros((1, 1, nb), dtype=torch.int32, device=device)
                logits = torch.zeros((1, group, nb, nb), dtype=torch.float32, device=device)
                select_rows(logits, kb, kb, kb[:, :, 0].contiguous(), heads=group, seqlen=nb * bs,
                            block_size=bs, segment_size=params.segment_size, threshold=params.threshold)
                if nb >= top:
                    break
                nb *= 2


_ensured = set()


def ensure(gpu: str, entries, root: str = "cache", device: str = "cuda") -> str | None:
    """Point Triton at a valid cache holding `entries`' kernels; returns what had to be fixed.

    A stale or corrupted cache is rebuilt from scratch; configs it lacks are compiled into
    it (logged by the caller: that is the one time the run compiles). Checked once per process.
    """
    path = cache_dir(gpu, root)
    memo = (os.path.abspath(path), tuple(sorted(json.dumps(k, sort_keys=True) for k in _kernel_keys(entries))))
    if memo in _ensured:
        point_triton_at(path)
        return None
    problem = check(path)
    if problem is not None:
        build(gpu, entries, root, device, fresh=True)
    else:
        with open(os.path.join(path, MANIFEST)) as f:
            have = json.load(f).get("configs", [])
        missing = [e for e in entries if any(k not in have for k in _kernel_keys([e]))]
        if missing:
            problem = f"{len(missing)} config(s) were not compiled yet"
            build(gpu, missing, root, device, fresh=False)
    point_triton_at(path)
    _ensured.add(memo)
    return problem
