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


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is printed so that a failure can be replayed
    with PBS_TUNE_TEST_SEED=<seed> bash scripts/test.sh <test id>."""
    seed = int(os.environ.get("PBS_TUNE_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    torch.manual_seed(seed)
    print(f"torch seed: {seed} (replay: PBS_TUNE_TEST_SEED={seed})")
    return seed
