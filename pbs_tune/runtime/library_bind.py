"""Binding a compiled-kernel library at run time: its format, its checks and the CUDA driver calls.

A library (made by library_build.py) is a folder of cubins and a manifest: per kernel its name
and symbol, target arch, warps, threads, shared memory, the runtime arguments in order with
their types and specialisation, the constexpr values, the scratch pointers Triton appends, and
a SHA-256 per file, and per kernel how it was verified on a GPU (library_verify.py). `bind`
checks the manifest and every file's hash, holds each cubin's parameter table against what the
launcher will pass (library_check.py), loads the verified cubins with NVIDIA's CUDA Python driver
bindings and hands them to `pbs_tune.kernels.launch`, which launches them without compiling. It
only reads: a library works from a checkout at any path, an installed wheel or a read-only copy.
Any problem (other arch, changed kernel sources, a missing or corrupted file, a kernel no GPU ran
since it was built) is reported in one line and the JIT takes over; a bad file is never used.
"""
import functools
import hashlib
import inspect
import json
import logging
import os
import re

import torch

from ..kernels import launch
from ..profile.target import Target
from .library_check import kernel_problems, unloaded_kernel

logger = logging.getLogger("pbs_tune")

FORMAT = 1
MANIFEST = "manifest.json"
_SHARED_DEFAULT = 49152  # a kernel may use more dynamic shared memory only after opting in


class LibraryError(RuntimeError):
    """A kernel library that must not be used as it is."""


def kernel_sources_hash() -> str:
    """SHA-256 over the Triton kernel sources (the files of pbs_tune/kernels that define @triton.jit
    functions): a library built from other sources is stale. The launcher and the ahead-of-time
    compiler beside them change no cubin, so editing them leaves a library current."""
    folder = os.path.dirname(launch.__file__)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                source = f.read()
            if re.search(rb"^@triton\.jit", source, re.M):
                digest.update(name.encode() + b"\0" + source)
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def launcher_hash() -> str:
    """SHA-256 over the source of what packs a call for a library kernel: a stamp made with another
    launcher vouches for nothing."""
    parts = (launch.BoundKernel, launch.named_arguments, launch.call_key, launch.runtime_params)
    return _sha256("".join(inspect.getsource(p) for p in parts).encode())


def verified(rec: dict) -> bool:
    """Was this kernel run on a GPU, from this library with this launcher, and matched the JIT?"""
    stamp = rec.get("verified")
    return isinstance(stamp, dict) and stamp.get("launcher") == launcher_hash()


def library_lock(path: str):
    """The lock held while a library folder or its manifest is rewritten (one per folder, any process)."""
    import tempfile

    from filelock import FileLock
    name = "pbs-tune-library-" + _sha256(os.path.abspath(path).encode())[:16] + ".lock"
    return FileLock(os.path.join(tempfile.gettempdir(), name))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: str) -> dict:
    """The manifest of a library after checking every file's hash; LibraryError says what is wrong."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise LibraryError(f"no kernel library at {path}")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise LibraryError(f"{mpath} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LibraryError(f"{mpath} is not a format-{FORMAT} kernel library manifest")
    files = manifest.get("files", {})
    for rec in manifest.get("kernels", []):
        name = rec.get("file")
        if name not in files:
            raise LibraryError(f"{mpath}: {name} has no recorded hash")
        try:
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
        except OSError:
            raise LibraryError(f"{os.path.join(path, name)} is missing") from None
        if _sha256(data) != files[name]:
            raise LibraryError(f"{os.path.join(path, name)} is corrupted (SHA-256 differs from the manifest)")
    return manifest


def problem_with(manifest: dict) -> str | None:
    """Why this library cannot serve this process (GPU arch, kernel sources), or None."""
    if manifest.get("kernel_sources") != kernel_sources_hash():
        return "it was built from other kernel sources than the installed ones"
    if not torch.cuda.is_available():
        return "no CUDA GPU is present"
    here = Target.present()
    if manifest.get("arch") != here.arch:
        return f"it was built for sm_{manifest.get('arch')} and this GPU is sm_{here.arch}"
    try:
        import cuda.bindings.driver  # noqa: F401
    except ImportError:
        return "NVIDIA's CUDA Python bindings are not installed (pip install cuda-bindings)"
    return None


def bind(path: str, profile_path: str = "PROFILE") -> int:
    """Load a library's verified cubins into the current CUDA context and register them for launching.

    Returns the number of kernels bound; raises LibraryError when it cannot be used. Kernels no GPU
    verified (library_verify.py) are left to the JIT, said once."""
    manifest = read(path)
    problem = problem_with(manifest)
    if problem:
        raise LibraryError(f"kernel library {path} is not used: {problem}")
    records, images = [], {}
    for rec in manifest["kernels"]:
        with open(os.path.join(path, rec["file"]), "rb") as f:
            images[rec["file"]] = f.read()
        wrong = kernel_problems(rec, images[rec["file"]])
        if wrong:
            raise LibraryError(f"kernel library {path} is not used: {wrong[0]}; rebuild it (pbs-tune compile)")
        if verified(rec):
            records.append(rec)
    unverified = len(manifest["kernels"]) - len(records)
    if not records:
        raise LibraryError(f"kernel library {path} is not used: none of its kernels was run on a GPU since it was "
                           f"built ({_built_by(manifest)}); on an sm_{manifest.get('arch')} GPU, check it with: "
                           f"pbs-tune verify --profile {profile_path}")
    if unverified:
        logger.warning("pbs_tune: %d of the %d kernels of %s were never run on a GPU since they were built (%s): "
                       "those run through Triton's JIT; check them with: pbs-tune verify --profile %s", unverified,
                       len(manifest["kernels"]), path, _built_by(manifest), profile_path)
    from cuda.bindings import driver
    _ensure_context(driver)
    bound = [bound_kernel(images[rec["file"]], rec) for rec in records]
    launch.register(bound)
    return len(bound)


def _built_by(manifest) -> str:
    built = manifest.get("built_with") or {}
    return f"Triton {built.get('triton', '?')} on {built.get('device', '?')}"


def bound_kernel(image: bytes, rec: dict) -> launch.BoundKernel:
    """One manifest record's kernel loaded from `image` (its cubin, or PTX the driver compiles) into the
    current CUDA context."""
    from cuda.bindings import driver
    _ensure_context(driver)
    module = _check(driver.cuModuleLoadData(image), "cuModuleLoadData")
    function = _check(driver.cuModuleGetFunction(module, rec["symbol"].encode()), "cuModuleGetFunction")
    if rec["shared"] > _SHARED_DEFAULT:
        _opt_in_shared(driver, function)
    return unloaded_kernel(rec, function)


def _check(result, what):
    from cuda.bindings import driver
    err, *value = result
    if err != driver.CUresult.CUDA_SUCCESS:
        raise LibraryError(f"{what} failed: {err.name}")
    return value[0] if value else None


def _ensure_context(driver):
    """Use the primary context of torch's current device, as the CUDA runtime (and torch) do."""
    _check(driver.cuInit(0), "cuInit")
    ctx = _check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if not int(ctx):
        dev = _check(driver.cuDeviceGet(torch.cuda.current_device()), "cuDeviceGet")
        ctx = _check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        _check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


def _opt_in_shared(driver, function):
    """Allow the kernel all dynamic shared memory the device offers beyond its static part."""
    dev = _check(driver.cuDeviceGet(torch.cuda.current_device()), "cuDeviceGet")
    optin = _check(driver.cuDeviceGetAttribute(
        driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev), "cuDeviceGetAttribute")
    static = _check(driver.cuFuncGetAttribute(
        driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function), "cuFuncGetAttribute")
    _check(driver.cuFuncSetCacheConfig(function, driver.CUfunc_cache.CU_FUNC_CACHE_PREFER_SHARED),
           "cuFuncSetCacheConfig")
    _check(driver.cuFuncSetAttribute(
        function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, optin - static),
        "cuFuncSetAttribute")
