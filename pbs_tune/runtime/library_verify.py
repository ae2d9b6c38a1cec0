"""Verifying a kernel library on a GPU, so that no kernel reaches a user untried: `pbs-tune verify`.

Every call of the profiles' exercise (the op once per config, every selection bucket) runs twice
on the same random inputs: with the library's kernels bound, then through Triton's JIT. A kernel
is stamped verified in the manifest (how, device, versions, launcher) when it launched from the
library and every comparison it took part in matched: bit for bit where the library is this GPU's
arch (built by the same Triton as the JIT here, it must be the same code); for a library of another
arch, which cannot run here, its PTX from the same build (its cubins rebuilt byte-identical) is run
instead and must match the JIT's sm_<here> build within round-off. The loader binds only stamped
kernels, so a kernel change no GPU ran ships with the JIT, never with a crash. Run it in a fresh
process: a kernel that faults takes the CUDA context with it (`library_build.verify_in_fresh_process`).
"""
import datetime
import hashlib
import json
import os
import tempfile

import torch

from ..kernels import launch
from ..measure.metrics import rel_l2
from ..profile import profiles
from ..profile.target import Target, variant_in
from . import exercise
from .library_bind import LibraryError, MANIFEST, bound_kernel, launcher_hash, library_lock, problem_with, read

PTX_TOLERANCE = 1e-2   # rel-L2 of the op's output, PTX of another arch against this GPU's JIT build
ROWS_AGREEING = 0.99   # selection rows whose kept count agrees, PTX of another arch (sums in another order)


def _images(library, manifest, profile_paths, gpus, here_arch) -> tuple:
    """({file: image to load}, how): the cubins for this GPU's arch, else the PTX of the same build."""
    if manifest["arch"] == here_arch:
        out = {}
        for rec in manifest["kernels"]:
            with open(os.path.join(library, rec["file"]), "rb") as f:
                out[rec["file"]] = f.read()
        return out, "built for this arch and run against the JIT: bit-identical"
    from .cross_build import compiled_for_arch
    from .library_write import record_of
    out = {}
    for path, gpu in zip(profile_paths, gpus):
        for compiled in compiled_for_arch(path, gpu, manifest["arch"]):
            rec, cubin = record_of(compiled)
            if manifest["files"].get(rec["file"]) == hashlib.sha256(cubin).hexdigest():
                out[rec["file"]] = compiled.asm["ptx"].encode() + b"\0"
    return out, f"its PTX (cubin rebuilt byte-identical) run on sm_{here_arch} against the JIT within round-off"


def _compare(kernels, native, run) -> tuple:
    """Run `run()` from the library and through the JIT; (matched, kernels launched, note)."""
    before = {id(k): k.launches for k in kernels}
    with launch.using(kernels):
        jit_before = launch.jit_calls
        lib = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        from_jit = launch.jit_calls - jit_before
    launched = [k for k in kernels if k.launches > before[id(k)]]
    with launch.using():
        ref = run()
    if isinstance(lib, torch.Tensor):
        if native:
            ok = torch.equal(lib, ref)
        else:
            ok = rel_l2(lib.float(), ref.float()) <= PTX_TOLERANCE
        note = f"max abs diff {float((lib.float() - ref.float()).abs().max()):.3g}"
    else:  # selection buckets: (count, full, index) each
        agree = total = 0
        ok = True
        for (c1, f1, i1), (c2, f2, i2) in zip(lib, ref):
            same = (c1 == c2) & (f1 == f2)
            agree, total = agree + int(same.sum()), total + same.numel()
            if native:
                width = torch.arange(i1.shape[-1], device=i1.device) < c1[..., None]
                ok = ok and bool(same.all()) and torch.equal(i1[width], i2[width])
        ok = ok and (native or agree >= ROWS_AGREEING * total)
        note = f"{agree} of {total} selection rows agree"
    return ok, launched, note + (f", {from_jit} calls not from the library" if from_jit else "")


def verify(profile_paths, library=None, say=print, device="cuda") -> dict:
    """Verify the library shared by these profiles (the first's by default) on the GPU present and
    stamp its kernels; returns {verified, kernels, failed}."""
    here = Target.present()
    if here is None or not here.on_gpu:
        raise LibraryError("verifying a kernel library needs a CUDA GPU")
    profs = [profiles.load(p) for p in profile_paths]
    gpus = []
    for prof in profs:
        held = sorted({e.gpu for e in prof.entries})
        gpus.append(variant_in(held, here.name) or held[0])
    library = library or profs[0].library
    manifest = read(library)
    problem = problem_with(dict(manifest, arch=here.arch))
    if problem:
        raise LibraryError(f"kernel library {library} cannot be verified: {problem}")
    images, how = _images(library, manifest, profile_paths, gpus, here.arch)
    records = {r["file"]: r for r in manifest["kernels"]}
    kernels = {f: bound_kernel(images[f], records[f]) for f in records if f in images}  # compiles the PTX
    by_kernel = {id(k): f for f, k in kernels.items()}
    native = manifest["arch"] == here.arch
    failed = {}
    launched_ok = set()
    for prof, gpu in zip(profs, gpus):
        prof.gpu = gpu
        entries = prof.for_gpu(gpu)
        lengths = sorted({e.seqlen for e in entries})
        for e in entries:
            for params, lc in e.configs():
                runs = [(f"{e.describe()} op", lambda: exercise.run_config_once(
                            e, params, lc, exercise.prewarm_length(params), device, seed=1)),
                        (f"{e.describe()} selection", lambda: exercise.run_select_buckets(
                            e, params, exercise.select_range(e, params, lengths), device, seed=1))]
                for what, run in runs:
                    ok, launched, note = _compare(list(kernels.values()), native, run)
                    files = {by_kernel[id(k)] for k in launched}
                    if ok:
                        launched_ok |= files
                    else:
                        for f in files:
                            failed.setdefault(f, []).append(f"{what}: {note}")
                        say(f"mismatch: {what}: {note}")
    stamp = dict(how=how, device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else here.name,
                 arch=here.arch, triton=_triton_version(), torch=torch.__version__,
                 date=datetime.date.today().isoformat(), launcher=launcher_hash())
    good = sorted(launched_ok - set(failed))
    _stamp(library, good, stamp)
    say(f"verified {len(good)} of {len(records)} kernels of {library} on {stamp['device']} ({how})"
        + (f"; {len(failed)} failed" if failed else "")
        + (f"; {len(records) - len(good) - len(failed)} never launched by the profiles' calls"
           if len(records) - len(good) - len(failed) else ""))
    return dict(verified=len(good), kernels=len(records), failed=failed)


def _triton_version():
    import triton
    return triton.__version__


def _stamp(library, files, stamp):
    """Write the stamps into the manifest in place, atomically (the cubins and their hashes unchanged)."""
    with library_lock(library):
        manifest = read(library)
        for rec in manifest["kernels"]:
            if rec["file"] in files:
                rec["verified"] = stamp
        fd, tmp = tempfile.mkstemp(dir=library, prefix=".manifest-")
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(library, MANIFEST))
