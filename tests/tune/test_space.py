"""Launch configs are compiled before they are timed; what does not fit is pruned with a reason."""
import os
import subprocess
import sys

CODE = """
from pbs_tune.op.launch_config import LaunchConfig
from pbs_tune.tune.space import TrialConfig, launch_problem
fits = TrialConfig(128, 256, 0.9, LaunchConfig(128, 128, 8, 2))
print(launch_problem(fits, head_dim=128, dtype="bfloat16", arch=90, smem_limit=232448))
print(launch_problem(fits, head_dim=128, dtype="bfloat16", arch=90, smem_limit=49152))
"""


def test_a_launch_config_is_judged_by_its_compiled_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    fits, too_big = out.stdout.strip().splitlines()[-2:]
    assert fits == "None"
    assert too_big.startswith("attend kernel needs ") and too_big.endswith("bytes of shared memory; the GPU allows 49152")
    assert int(too_big.split()[3]) > 49152
