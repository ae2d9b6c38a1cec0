"""Launch configs are compiled before they are timed; what does not fit is pruned with a reason."""
import os
import subprocess
import sys

CODE = """
from pbs_tune.profile.launch import LaunchConfig
from pbs_tune.profile.target import Target
from pbs_tune.profile.profiles import PbsParams
from pbs_tune.tune.space import TrialConfig, launch_problem
fits = TrialConfig(PbsParams(128, 256, 0.9), LaunchConfig(128, 128, 8, 2))
print(launch_problem(fits, head_dim=128, dtype="bfloat16", target=Target("h100-sxm", 90, 232448)))
print(launch_problem(fits, head_dim=128, dtype="bfloat16", target=Target("h100-sxm", 90, 49152)))
hopper = TrialConfig(PbsParams(128, 256, 0.9), LaunchConfig(128, 128, 8, 3, tma=True, programs_per_sm=1))
print(launch_problem(hopper, head_dim=128, dtype="bfloat16", target=Target("h100-sxm", 90, 232448)))
print(launch_problem(hopper, head_dim=128, dtype="bfloat16", target=Target("a100-sxm", 80, 166912)))
"""


def test_a_launch_config_is_judged_by_its_compiled_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    fits, too_big, hopper_on_h100, hopper_on_a100 = out.stdout.strip().splitlines()[-4:]
    assert fits == "None" and hopper_on_h100 == "None"
    assert hopper_on_a100.startswith("launch.tma needs a Hopper GPU or newer (sm_90+); this GPU is sm_80")
    assert (too_big.startswith("attend kernel needs ")
            and too_big.endswith("bytes of shared memory; the GPU allows 49152"))
    assert int(too_big.split()[3]) > 49152


def test_the_hopper_kernel_is_drawn_only_where_tma_exists():
    import optuna

    from pbs_tune.tune import space
    assert space.gpu_space(80)["kernel"] == ("portable",) and space.gpu_space(80)["programs_per_sm"] == (0,)
    assert "tma" in space.gpu_space(90)["kernel"]
    assert space.CPU_SPACE["kernel"] == ("portable",) and space.CPU_SPACE["programs_per_sm"] == (0,)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(40):
        trial = study.ask()
        cfg = space.suggest(trial, space.gpu_space(90))
        cfg.launch.check(cfg.params.block_size)  # every draw is a valid config
        drawn.add((cfg.launch.tma, cfg.launch.programs_per_sm))
        study.tell(trial, 1.0)
    assert (False, 0) in drawn and any(tma and p > 0 for tma, p in drawn)
    assert not any(not tma and p for tma, p in drawn)  # no persistent grid without the Hopper kernel
