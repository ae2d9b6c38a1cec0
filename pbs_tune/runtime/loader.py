"""Loading a tuned profile for this process: find it, check it, bind its kernel library and warm
its configs up, so that no call at run time compiles or tunes.

`load_profile` looks the profile up (profile/store.py) for the GPU present, or reads a named
file; kernels come from the profile's compiled-kernel library (library_bind.py), and without a
usable library Triton's JIT takes over, said once. `ready` makes a profile built or read
elsewhere usable here (once per profile object).
"""
import dataclasses
import logging
import os
import time
import weakref

import torch

from ..profile import profiles
from ..profile import store as profile_store
from ..profile.target import CPU, present_gpu, resolve_gpu, runs_here, variant_in
from ..seqlen import format_length
from . import library_bind
from .exercise import prewarm_length, run_config_once, warm_columns
from .state import STATE

logger = logging.getLogger("pbs_tune")


def load_profile(gpu: str = "auto", path: str | None = None, *, use_library: bool = True) -> profiles.Profile:
    """The tuned profile for a GPU, with its kernels bound and warmed up so that no call compiles or tunes.

    Args:
        gpu: 'auto' (the GPU present) or a GPU's name ('h100-sxm', or a family: 'h100'); a path in its
            place (load_profile("my.yaml")) is taken as `path`.
        path: the profile file; None: looked up in $PBS_TUNE_HOME, the user's store and the shipped profiles.
        use_library: False (or PBS_TUNE_KERNELS=jit) leaves every kernel to Triton's JIT, not the profile's library.

    Returns:
        The `Profile` for that GPU (or its family's nearest variant, said once); one of a GPU not present
        loads as data only (runnable False). ProfileError where there is none.
    """
    use_library = use_library and os.environ.get("PBS_TUNE_KERNELS", "library") != "jit"
    if path is None and (os.sep in gpu or gpu.endswith((".yaml", ".yml"))):  # load_profile("my.yaml")
        path, gpu = gpu, "auto"
    if path is not None and not os.path.exists(path):
        raise profiles.ProfileError(f"no tuned profile at {path}: check the path, or make one here with: "
                                    + profile_store.sweep_hint(present_gpu() or CPU, path))
    try:
        wanted = resolve_gpu(gpu, must_be_present=False)
    except RuntimeError:
        raise profiles.ProfileError("no GPU here (set TRITON_INTERPRET=1 for the CPU interpreter); "
                                    "name the profile's GPU to read it as data, "
                                    "e.g. load_profile('h100-sxm')") from None
    t0 = time.perf_counter()
    prof = profiles.load(path or _find(wanted))
    variant = variant_in((e.gpu for e in prof.entries), wanted)
    if variant is None:
        raise profiles.ProfileError(f"{prof.path} has no entries for {wanted}; make them on that GPU with: "
                                    + profile_store.sweep_hint(wanted, prof.path))
    if variant != wanted:
        logger.warning("pbs_tune: %s has no entries for %s; using those tuned on %s (same family, "
                       "other clocks and bandwidth: re-tune with pbs-tune sweep --gpu %s for exact timings)",
                       prof.path, wanted, variant, wanted)
    for e in prof.entries:
        if e.gpu == variant and e.failed_check:
            logger.warning("pbs_tune: %s: the entry %s is never run: %s", prof.path, e.describe(), e.failed_check)
    untuned = next((e.not_tuned for e in prof.entries if e.gpu == variant and e.not_tuned), None)
    if untuned:
        logger.warning("pbs_tune: %s: %s; PBS runs from %s tokens, SDPA below", prof.path, untuned,
                       format_length(profiles.UNTUNED_MIN_SEQLEN))
    runnable = runs_here(variant)
    prof = dataclasses.replace(prof, gpu=variant, runnable=runnable, load_times=dict(read_s=time.perf_counter() - t0))
    if runnable and variant != CPU:
        prof.load_times.update(_bind_kernels(prof, use_library))
    logger.info("pbs_tune: loaded %s: %s", prof.path,
                ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in prof.load_times.items()))
    return prof


def _find(gpu):
    found = profile_store.find_profile(gpu)
    if found is None:
        raise profiles.ProfileError(f"no tuned profile for {gpu} (searched {profile_store.searched_folders()}); "
                                    f"make one with: {profile_store.sweep_hint(gpu)}")
    return found.path


def _bind_kernels(prof, use_library=True) -> dict:
    """Load the profile's kernel library once per process, then pay torch's and the kernels'
    first-use costs with one short call per config, at load time rather than on a prompt.
    Returns where the time went."""
    t0 = time.perf_counter()
    if use_library and prof.library not in STATE.bound_libraries:
        try:
            if prof.library is None:
                raise library_bind.LibraryError(f"{prof.path} names no kernel library (pbs-tune compile makes one)")
            STATE.bound_libraries[prof.library] = library_bind.bind(prof.library, prof.path)
        except library_bind.LibraryError as exc:
            STATE.bound_libraries[prof.library] = 0
            logger.warning("pbs_tune: %s; Triton's JIT compiles the kernels on first use instead", exc)
    t1 = time.perf_counter()
    _prewarm(prof.for_gpu(prof.gpu))
    return dict(bind_s=t1 - t0, warm_up_s=time.perf_counter() - t1)


def _prewarm(entries):
    for e in entries:
        for params, launch in e.configs():
            key = profiles.KernelKey.of(e, params, launch)
            if key in STATE.prewarmed:
                continue
            STATE.prewarmed.add(key)
            run_config_once(e, params, launch, prewarm_length(params))
            warm_columns(e, params)
    torch.cuda.synchronize()


def _require_runnable(prof):
    if not prof.runnable:
        raise profiles.ProfileError(f"{prof.path} is tuned for {prof.gpu} and this machine has "
                                    f"{present_gpu() or 'no GPU'}: running it needs that GPU")


def ready(prof):
    """A profile made or loaded elsewhere, checked and bound to this process (once). One read
    with profiles.load() names no GPU: it is used through a copy that names the GPU present,
    made once, so the caller's object is never changed."""
    if prof.gpu is None:
        ref, copy = STATE.resolved.get(id(prof), (None, None))
        if ref is None or ref() is not prof:
            gpu = present_gpu()
            copy = dataclasses.replace(prof, gpu=gpu, runnable=gpu is not None, load_times={})
            STATE.resolved[id(prof)] = (weakref.ref(prof), copy)
        prof = copy
    _require_runnable(prof)
    if not prof.for_gpu(prof.gpu):
        raise profiles.ProfileError(f"{prof.path} has no entries for {prof.gpu} that passed their held-out check; "
                                    f"make them with: {profile_store.sweep_hint(prof.gpu, prof.path)}")
    if prof.gpu != CPU and "bind_s" not in prof.load_times:
        prof.load_times.update(_bind_kernels(prof))
    return prof
