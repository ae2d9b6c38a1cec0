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
int8 = TrialConfig(PbsParams(128, 256, 0.9, precision="int8"), LaunchConfig(128, 128, 8, 3, tma=True))
print(launch_problem(int8, head_dim=128, dtype="bfloat16", target=Target("h100-sxm", 90, 232448)))
from pbs_tune.kernels.aot import attend_call, compile_call
for arch, precision, tma in ((90, "int8+fp8", True), (89, "int8+fp8", False), (80, "int8", False)):
    ptx = compile_call(attend_call(dtype="bfloat16", head_dim=128, block_size=128, block_m=64, block_n=64, num_warps=4,
                                   num_stages=2, tma=tma, precision=precision), arch=arch).asm["ptx"]
    print(arch, "s8" if ".s8" in ptx else "-", "e4m3" if "e4m3" in ptx else "-", "wgmma" if "wgmma" in ptx else "mma")
"""


def test_a_launch_config_is_judged_by_its_compiled_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    fits, too_big, hopper_on_h100, hopper_on_a100, int8, *eight_bit = out.stdout.strip().splitlines()[-8:]
    assert int8 == "None"
    # The 8-bit modes compile to 8-bit tensor-core products: wgmma on Hopper, mma on Ada and Ampere.
    assert eight_bit == ["90 s8 e4m3 wgmma", "89 s8 e4m3 mma", "80 s8 - mma"]
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


def test_8_bit_precisions_are_drawn_only_where_the_gpu_has_their_units():
    import optuna
    import pytest

    from pbs_tune.profile.target import Target
    from pbs_tune.tune import space
    from pbs_tune.tune.spec import chosen_precisions
    assert space.gpu_space(80)["precision"] == ("input", "int8")
    assert space.gpu_space(89)["precision"] == ("input", "int8", "int8+fp8")
    assert space.space_for(Target("h100-sxm", 90, 232448), ("input", "int8"))["precision"] == ("input", "int8")
    assert chosen_precisions(None, "a100-sxm") == ("input", "int8")
    assert chosen_precisions(None, "cpu") == ("input",)  # the interpreter searches 8-bit modes only when named
    assert chosen_precisions(("int8+fp8",), "cpu") == ("int8+fp8",)
    with pytest.raises(ValueError, match="precision 'int8\\+fp8' needs sm_89\\+ and a100-sxm is sm_80: choose "
                                         "--precisions from input,int8"):
        chosen_precisions(("input", "int8+fp8"), "a100-sxm")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(30):
        trial = study.ask()
        drawn.add(space.suggest(trial, space.gpu_space(80)).params.precision)
        study.tell(trial, 1.0)
    assert drawn == {"input", "int8"}
