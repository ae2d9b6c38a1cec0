"""The compiled-kernel library of a profile: cubins plus what launching them needs.

`pbs-tune compile` (and the end of `pbs-tune sweep`) runs every config of a profile once on
the GPU through Triton's JIT, takes the kernels the JIT built from its in-memory cache and
writes, per kernel, the cubin and a manifest record: kernel and symbol name, target arch,
warps, threads, shared memory, the runtime arguments in order with their types and
specialisation, the constexpr values, the scratch pointers Triton appends, and the Triton,
CUDA and torch versions, with a SHA-256 per file. No IR is kept.

At run time `bind` checks the manifest and every file's hash, loads the cubins with NVIDIA's
CUDA Python driver bindings and hands them to `pbs_tune.kernels.launch`, which launches
them without compiling. It only reads: a library works from a checkout at any path, an
installed wheel or a read-only copy. Any problem (other arch, changed kernel sources, a
missing or corrupted file) is reported in one line and the JIT takes over; a bad file is
never used.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile

import torch
from filelock import FileLock

from ..kernels import launch

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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _param_count(ptx: str, symbol: str) -> int:
    m = re.search(r"\.entry\s+" + re.escape(symbol) + r"\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise LibraryError(f"{symbol}: no .entry in the PTX")
    return m.group(1).count(".param")


def record_of(compiled) -> tuple:
    """(manifest record, cubin bytes) of a Triton CompiledKernel (JIT-built or ahead of time)."""
    src, md = compiled.src, compiled.metadata
    sig, consts = [], {}
    for i, name in enumerate(src.fn.arg_names):
        kind = src.signature[name]
        if kind == "constexpr":
            consts[name] = src.constants[(i,)]
        else:
            attrs = src.attrs.get((i,), [])
            sig.append([name, kind, any(list(a) == ["tt.divisibility", 16] for a in attrs)])
    if getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False) \
            or getattr(md, "launch_pdl", False):
        raise LibraryError(f"{md.name}: clusters, cooperative or PDL launches are not supported by the launcher")
    extra = _param_count(compiled.asm["ptx"], md.name) - len(sig)
    scratch = [[getattr(md, "global_scratch_size", 0), getattr(md, "global_scratch_align", 1)],
               [getattr(md, "profile_scratch_size", 0), getattr(md, "profile_scratch_align", 1)]]
    if not 0 <= extra <= len(scratch):
        raise LibraryError(f"{md.name}: {extra} parameters beyond the arguments; this Triton's ABI is unknown")
    cubin = compiled.asm["cubin"]
    rec = dict(kernel=src.fn.__name__, symbol=md.name, arch=md.target.arch, signature=sig,
               constexprs=sorted(consts.items()), num_warps=md.num_warps, num_stages=md.num_stages,
               threads=md.num_warps * md.target.warp_size, shared=md.shared, scratch=scratch[:extra],
               file=f"{md.name}-{_sha256(cubin)[:16]}.cubin")
    return rec, cubin


def record_key(rec) -> tuple:
    return launch.make_key(rec["kernel"], rec["signature"], dict(rec["constexprs"]), rec["num_warps"],
                           rec["num_stages"])


def write(path: str, compiled_kernels, built_with: dict) -> dict:
    """Add kernels to the library folder at `path`, atomically; returns the manifest.

    A library is keyed by arch and shared by every profile of it (an H100 and an H200 profile
    both run sm_90 cubins), so a current library (same arch, same kernel sources) keeps the
    kernels it holds; a stale or unreadable one is replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with FileLock(os.path.join(tempfile.gettempdir(), "pbs-tune-library-" + _sha256(path.encode())[:16] + ".lock")):
        records, blobs = _current_kernels(path)
        for ck in compiled_kernels:
            rec, cubin = record_of(ck)
            if rec["file"] not in blobs:
                records.append(rec)
                blobs[rec["file"]] = cubin
        archs = {r["arch"] for r in records}
        if len(archs) != 1:
            raise LibraryError(f"a library holds kernels of one arch, got {sorted(archs)}")
        manifest = dict(format=FORMAT, arch=archs.pop(), kernel_sources=kernel_sources_hash(), built_with=built_with,
                        kernels=sorted(records, key=lambda r: (r["kernel"], r["file"])),
                        files={name: _sha256(data) for name, data in sorted(blobs.items())})
        _replace_folder(path, blobs, manifest)
    return manifest


def _current_kernels(path) -> tuple:
    """(records, {file: cubin}) of the library at `path` if it is current, else nothing."""
    try:
        manifest = read(path)
    except LibraryError:
        return [], {}
    if manifest.get("kernel_sources") != kernel_sources_hash():
        return [], {}
    blobs = {}
    for rec in manifest["kernels"]:
        with open(os.path.join(path, rec["file"]), "rb") as f:
            blobs[rec["file"]] = f.read()
    return list(manifest["kernels"]), blobs


def _replace_folder(path, blobs, manifest):
    """Write the folder beside `path` and swap it in with renames, so a reader never sees half."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(dir=parent, prefix=".library-")
    try:
        for name, data in blobs.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".library-old-")
            os.replace(path, os.path.join(old, "x"))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    major, minor = torch.cuda.get_device_capability()
    if manifest.get("arch") != major * 10 + minor:
        return f"it was built for sm_{manifest.get('arch')} and this GPU is sm_{major * 10 + minor}"
    try:
        import cuda.bindings.driver  # noqa: F401
    except ImportError:
        return "NVIDIA's CUDA Python bindings are not installed (pip install cuda-bindings)"
    return None


def bind(path: str) -> int:
    """Load a library's cubins into the current CUDA context and register them for launching.

    Returns the number of kernels bound; raises LibraryError when it cannot be used."""
    manifest = read(path)
    problem = problem_with(manifest)
    if problem:
        raise LibraryError(f"kernel library {path} is not used: {problem}")
    from cuda.bindings import driver
    _ensure_context(driver)
    bound = []
    for rec in manifest["kernels"]:
        with open(os.path.join(path, rec["file"]), "rb") as f:
            cubin = f.read()
        module = _check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
        function = _check(driver.cuModuleGetFunction(module, rec["symbol"].encode()), "cuModuleGetFunction")
        if rec["shared"] > _SHARED_DEFAULT:
            _opt_in_shared(driver, function)
        bound.append(launch.BoundKernel(record_key(rec), function, rec["threads"], rec["shared"],
                                        tuple(tuple(s) for s in rec["signature"]),
                                        tuple(tuple(s) for s in rec["scratch"])))
    launch.register(bound)
    return len(bound)


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


# ---- building (on the GPU, by `pbs-tune compile`) ----

def jit_kernels():
    """Every kernel Triton's JIT has built in this process for pbs-tune's kernel functions."""
    out = []
    for fn in launched_kernels():
        for caches in fn.device_caches.values():
            out += [k for k in caches[0].values() if hasattr(k, "asm")]
    return out


def launched_kernels():
    """The @triton.jit functions that pbs-tune launches (through `launch.run`)."""
    from ..kernels.attend import _attend_fwd
    from ..kernels.attend_hopper import _attend_fwd_tma
    from ..kernels.block_scores import _block_lse
    from ..kernels.block_select import _select_rows
    from ..kernels.key_scores import _key_scores_mean, _key_scores_stats
    from ..kernels.segment_sort import _segment_permute
    return (_attend_fwd, _attend_fwd_tma, _key_scores_stats, _key_scores_mean, _select_rows, _segment_permute,
            _block_lse)


def build_in_fresh_process(profile_path, library=None):
    """`pbs-tune compile` in a new process: the library holds exactly what the JIT builds for the
    profile there, nothing a sweep or plan compiled along the way."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "pbs_tune", "compile", "--profile", profile_path]
    if library:
        cmd += ["--kernels", library]
    if subprocess.run(cmd).returncode:
        raise RuntimeError("building the kernel library failed (see above); run: pbs-tune " + " ".join(cmd[3:]))


def build(profile, path: str) -> dict:
    """Compile every kernel `profile` needs (in this process, through the JIT) and add them to
    the library at `path`."""
    import triton
    if launch.library_size():
        raise RuntimeError("build the kernel library in a fresh process (kernels are already bound here)")
    exercise(profile)
    torch.cuda.synchronize()
    built_with = dict(triton=triton.__version__, torch=torch.__version__, cuda=torch.version.cuda,
                      device=torch.cuda.get_device_name(0))
    return write(path, jit_kernels(), built_with)


def exercise(profile, device="cuda"):
    """Run every kernel the profile's runnable entries (and their layers' plans) can launch, each
    once: what the library must hold. The build compiles what this runs; the CPU tests run it in
    the interpreter and compare its kernel keys with those of real calls (launch.keys_seen)."""
    entries = profile.for_gpu(profile.gpu)
    lengths = sorted({e.seqlen for e in entries})
    for e in entries:
        for params, lc in e.configs():
            run_config_once(e, params, lc, e.seqlen, device)
            run_select_buckets(e, params, select_range(e, params, lengths), device)


def select_range(entry, params, lengths) -> tuple:
    """(shortest, longest) prompt whose selection kernel a config of this entry runs: from the
    loader's warm-up length to the next tuned length (4x its own for the longest)."""
    longer = [n for n in lengths if n > entry.seqlen]
    return prewarm_length(params), (longer[0] - 1) if longer else 4 * entry.seqlen


def run_config_once(entry, params, launch_config, seqlen, device="cuda"):
    """The whole op once, on random data of the entry's shape, with one of its configs."""
    from ..dtypes import torch_dtype
    from ..op.pbs_attention import pbs_attention
    dtype = torch_dtype(entry.dtype)
    q = torch.randn(1, entry.heads, seqlen, entry.head_dim, device=device, dtype=dtype)
    k = torch.randn(1, entry.kv_heads, seqlen, entry.head_dim, device=device, dtype=dtype)
    pbs_attention(q, k, k, **params.op_args(), launch=launch_config)


def prewarm_length(params) -> int:
    """The short prompt the loader runs once per config at load time."""
    return 2 * params.segment_size


def run_select_buckets(entry, params, lengths: tuple, device="cuda"):
    """The selection kernel is specialised on the power-of-two block count: build every bucket
    from the loader's prewarm length up to the longest prompt this entry serves (`select_range`)."""
    shortest, longest = lengths
    from ..kernels.block_select import select_rows
    from ..op.selection import bisects
    bs = params.block_size
    nb = 1 << (-(-shortest // bs) - 1).bit_length()
    top = -(-longest // bs)
    group = entry.heads // entry.kv_heads  # one KV head: the kernel is not specialised on counts
    keep_all = params.keeps_all
    while True:
        kb = torch.zeros((1, 1, nb), dtype=torch.int32, device=device)
        logits = None if keep_all else torch.zeros((1, group, nb, nb), dtype=torch.float32, device=device)
        select_rows(logits, kb, kb, kb[:, :, 0].contiguous(), heads=group, seqlen=nb * bs, block_size=bs,
                    segment_size=params.segment_size, threshold=torch.ones(group, device=device), bisect=bisects(nb))
        if nb >= top:
            break
        nb *= 2
