import os

# Triton picks the interpreter when kernels are decorated: set it before any import.
os.environ.setdefault("TRITON_INTERPRET", "1")
# One pytest-xdist worker per core: each worker, and the processes its tests start, keeps to one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def _patch_the_language_once_per_launch():
    """Triton's interpreter swaps triton.language's builtins for its own at every kernel launch, and
    again at every call of a @triton.jit helper inside the kernel (inspect.getmembers over the
    language, about 0.3 ms a call: a third of this suite's time). Inside a launch the language is
    already swapped, so the helper calls skip it; what runs is unchanged. Left alone when this
    Triton's interpreter is not shaped as expected."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    executor, patch = getattr(interpreter, "GridExecutor", None), getattr(interpreter, "_patch_lang", None)
    if executor is None or patch is None or not callable(getattr(executor, "__call__", None)):
        return
    import inspect

    import triton.language as tl
    state = dict(launches=0, patched=set())

    class AlreadyPatched:
        def restore(self):
            pass

    def patch_lang(fn):
        # What the interpreter swaps for `fn`: the language modules its globals name (tl, tl.core).
        langs = {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}
        if state["launches"] and langs <= state["patched"]:
            return AlreadyPatched()
        if state["launches"]:
            state["patched"] |= langs
        return patch(fn)

    launch = executor.__call__

    def launch_once_patched(self, *args, **kwargs):
        state["launches"] += 1
        state["patched"] = set()
        try:
            return launch(self, *args, **kwargs)
        finally:
            state["launches"] -= 1
            state["patched"] = set()

    interpreter._patch_lang = patch_lang
    executor.__call__ = launch_once_patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_the_language_once_per_launch()


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is printed so that a failure can be replayed
    with PBS_TUNE_TEST_SEED=<seed> bash scripts/test.sh <test id>."""
    seed = int(os.environ.get("PBS_TUNE_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    torch.manual_seed(seed)
    print(f"torch seed: {seed} (replay: PBS_TUNE_TEST_SEED={seed})")
    return seed
