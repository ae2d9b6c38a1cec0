"""Building a profile's compiled-kernel library: `pbs-tune compile` and the end of a sweep.

Every config of a profile runs once through Triton's JIT (exercise.py); the kernels the JIT built
are taken from its in-memory cache and written (library_write.py), with the Triton, CUDA and torch
versions. A library is keyed by arch; an arch other than this GPU's is built without one
(cross_build.py).
"""
import os

import torch

from ..kernels import launch
from .exercise import exercise
from .library_bind import read
from .library_check import launched_kernels
from .library_write import write


def jit_kernels():
    """Every kernel Triton's JIT has built in this process for pbs-tune's kernel functions."""
    out = []
    for fn in launched_kernels():
        for caches in fn.device_caches.values():
            out += [k for k in caches[0].values() if hasattr(k, "asm")]
    return out


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


def verify_in_fresh_process(profile_paths, library=None, say=print) -> bool:
    """`pbs-tune verify` in a new process: a faulting kernel must not take this one's CUDA context."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "pbs_tune", "verify"]
    for p in profile_paths:
        cmd += ["--profile", p]
    if library:
        cmd += ["--kernels", library]
    done = subprocess.run(cmd)
    if done.returncode:
        say(f"verifying the kernel library failed (exit {done.returncode}): its kernels stay unverified and the "
            "loader runs the JIT; see above")
    return done.returncode == 0


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


def compile_profile(profile_path: str | None, archs=None, library: str | None = None, say=print) -> None:
    """`pbs-tune compile`: build the libraries of a profile for `archs` (default: the arch of the
    profile's GPU), natively for this GPU's arch and without a GPU for another (cross_build.py)."""
    import dataclasses

    from ..profile import profiles
    from ..profile import store as profile_store
    from ..profile.target import Target, arch_of, variant_in
    from . import cross_build
    here = Target.present()
    here = here if here is not None and here.on_gpu else None
    if profile_path is None:
        if here is None:
            raise ValueError("no GPU here: name the profile, e.g. pbs-tune compile --profile configs/a100-sxm.yaml")
        profile_path = profile_store.default_profile_path(here.name)
    prof = profiles.load(profile_path)
    if not prof.entries:
        raise ValueError(f"{prof.path} has no entries")
    held = sorted({e.gpu for e in prof.entries})
    variant = (variant_in(held, here.name) if here else None) or held[0]
    wanted = list(archs) if archs else [arch_of(variant) or (here and here.arch)]
    if None in wanted:
        raise ValueError(f"the arch of {variant} is not known here: name it, e.g. pbs-tune compile --profile "
                         f"{profile_path} --arch 80")
    if library and len(wanted) > 1:
        raise ValueError("--kernels names one library folder and a library holds one arch: give one --arch")
    prof = dataclasses.replace(prof, gpu=variant)
    if not prof.for_gpu(variant):
        say(f"{profile_path}: no entry of {variant} can run (each failed its held-out check): nothing to compile")
        return
    for arch in wanted:
        native = here is not None and arch == here.arch
        folder = library or (prof.library if prof.library and arch == arch_of(variant) else
                             profile_store.default_library_dir(profile_path, arch))
        if native:
            if variant != here.name:
                say(f"note: building {variant}'s kernels on {here.name}; they load only where the arch is the same")
            build(prof, folder)
            verify_in_fresh_process([profile_path], folder, say=say)
            manifest = read(folder)
        else:
            manifest = cross_build.build_for_arch(profile_path, variant, folder, arch)
        if arch == arch_of(variant) or (native and arch_of(variant) is None):
            profiles.merge_entries(profile_path, [], library=folder)  # the profile names its own arch's library
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        say(f"compiled {variant}'s kernels for sm_{arch} into {folder}, now {len(manifest['kernels'])} kernels "
            f"({size / 1024:.0f} KiB)" + ("" if native else " (built without that GPU; never run here: the loader "
                                          "runs the JIT until `pbs-tune verify` runs them on a GPU)"))


def parse_archs(text: str) -> list:
    """'80,89,90' -> [80, 89, 90] (compute capabilities, as --arch takes them)."""
    try:
        archs = [int(a) for a in text.split(",") if a.strip()]
    except ValueError:
        archs = []
    if not archs or min(archs) < 70:
        raise ValueError(f"--arch {text!r}: give compute capabilities such as 80,89,90,100")
    return archs
