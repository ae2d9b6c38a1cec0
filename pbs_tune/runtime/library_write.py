"""Writing a compiled-kernel library: per kernel its cubin and a manifest record (library_bind.py
reads them), a SHA-256 per file, the folder swapped in whole so that a reader never sees half.
No IR is kept. Both ways of building (library_build.py natively, cross_build.py for another arch)
end here.
"""
import json
import os
import re
import shutil
import tempfile

from .library_bind import FORMAT, MANIFEST, LibraryError, _sha256, kernel_sources_hash, library_lock, read


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


def write(path: str, compiled_kernels, built_with: dict) -> dict:
    """Add kernels to the library folder at `path`, atomically; returns the manifest.

    A library is keyed by arch and shared by every profile of it (an H100 and an H200 profile
    both run sm_90 cubins), so a current library (same arch, same kernel sources) keeps the
    kernels it holds; a stale or unreadable one is replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with library_lock(path):
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
