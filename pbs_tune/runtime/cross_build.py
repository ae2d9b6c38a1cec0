"""A profile's kernel library for a named GPU arch, built on any machine: no GPU needed.

On a GPU, `pbs-tune compile` runs the profile's configs through Triton's JIT and keeps what it
built (library_build.build). For another arch (an A100 profile built on an H100 or on a laptop)
that cannot work, so the same kernels are found and compiled in two steps, each in a fresh process:
which kernels - Triton's interpreter runs the library's exercise at small sizes and keys every
call as the JIT would (launch.calls_seen; a bfloat16 entry runs in float16, the interpreter has no
bfloat16, and its keys are retyped); then each key is compiled for the arch (kernels/aot.py) and
written with the same manifest and checks as a JIT-built library.
"""
import json
import os
import subprocess
import sys

from ..profile import profiles


def calls_of_profile(profile) -> list:
    """(key, launch.Call) of every kernel call of the runnable entries of `profile` (run under
    TRITON_INTERPRET=1), keys as a GPU run would have them. The op runs once per kernel config, with one
    query and one KV head, at the loader's short warm-up length: no key depends on the length, the head
    counts or the threshold's value (checked against libraries built by the JIT on a GPU). The selection
    buckets are recorded, not run."""
    import dataclasses

    from ..kernels import launch
    from . import exercise
    entries = profile.for_gpu(profile.gpu)
    lengths = sorted({e.seqlen for e in entries})
    out, ran = [], set()
    for e in entries:
        small = dataclasses.replace(e, heads=1, kv_heads=1, dtype="float16" if e.dtype == "bfloat16" else e.dtype)
        for params, lc in e.configs():
            one_head = dataclasses.replace(params, threshold=min(params.threshold)
                                           if isinstance(params.threshold, tuple) else params.threshold)
            kernel_key = profiles.KernelKey.of(e, params, lc)
            with launch.calls_seen() as seen:
                if kernel_key not in ran:
                    ran.add(kernel_key)
                    exercise.run_config_once(small, one_head, lc, exercise.prewarm_length(params), "cpu")
                with launch.recording() as recorded:
                    exercise.run_select_buckets(small, one_head, exercise.select_range(e, params, lengths),
                                                "cpu")
            out += [(_retyped(c.key, e.dtype), c) for c in seen + recorded]
    return out


def calls_of(profile_path: str, gpu: str) -> list:
    """(key, launch.Call) of every call the library's exercise makes for `gpu`'s entries of the profile
    (in this process: needs TRITON_INTERPRET=1)."""
    prof = profiles.load(profile_path)
    prof.gpu = gpu
    return calls_of_profile(prof)


def _keys_of(profile) -> list:
    return sorted({key for key, _ in calls_of_profile(profile)}, key=repr)


def _retyped(key, dtype):
    """A key from a float16 stand-in run, with the entry's own 16-bit type."""
    if dtype != "bfloat16":
        return key
    name, sig, consts, warps, stages = key
    return name, tuple((n, "*bf16" if t == "*fp16" else t, d) for n, t, d in sig), consts, warps, stages


def _as_key(obj):
    name, sig, consts, warps, stages = obj
    return name, tuple(tuple(s) for s in sig), tuple(tuple(c) for c in consts), warps, stages


def kernel_keys(profile_path: str, gpu: str) -> list:
    """The keys of the kernels `gpu`'s entries of the profile run, found by the interpreter in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pbs_tune.runtime.cross_build", "keys", profile_path, gpu], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"Triton's interpreter could not run the kernels of {profile_path} ({why[:200]})")
    return [_as_key(k) for k in json.loads(done.stdout.strip().splitlines()[-1])]


def build_for_arch(profile_path: str, gpu: str, library: str, arch: int) -> dict:
    """Compile the kernels of `gpu`'s entries for `arch` into the library folder; returns its manifest."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "pbs_tune.runtime.cross_build", "compile", profile_path, gpu, library,
                           str(arch)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building for sm_{arch} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:400]}")
    from .library_bind import read
    return read(library)


def compiled_for_arch(profile_path: str, gpu: str, arch: int) -> list:
    """Triton's CompiledKernels of `gpu`'s entries of the profile for `arch` (not under the interpreter)."""
    from ..kernels.aot import compile_key
    from .library_check import launched_kernels
    functions = {fn.__name__: fn for fn in launched_kernels()}
    return [compile_key(functions[k[0]], k, arch=arch) for k in kernel_keys(profile_path, gpu)]


def _compile(profile_path, gpu, library, arch):
    import triton

    from .library_write import write
    write(library, compiled_for_arch(profile_path, gpu, arch),
                         dict(triton=triton.__version__, device=f"none (built for sm_{arch})"))


def main(argv):
    what, profile_path, gpu = argv[:3]
    if what == "keys":
        import torch
        with torch.no_grad():
            prof = profiles.load(profile_path)
            prof.gpu = gpu
            print(json.dumps(_keys_of(prof)))
    else:
        _compile(profile_path, gpu, argv[3], int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
