"""The tuner's search space: PBS parameters and attend-kernel launch configs.

Parameters are drawn so that every combination tiles correctly by construction (segment =
block x blocks_per_segment, tile = block / split); configs whose compiled attend kernel does
not fit the device are pruned before they run, with the reason stored on the trial.
"""
from dataclasses import dataclass, replace

import optuna

from ..profile.launch import LaunchConfig, default_launch
from ..profile.params import ESTIMATORS, PbsParams
from ..profile.target import Target

# kernel: the portable attend kernel or the Hopper one (TMA); programs_per_sm: the Hopper
# kernel's persistent grid (0: a program per query tile).
KERNELS = {"portable": dict(), "tma": dict(tma=True)}
# tail_blocks / column_blocks: the retrieval knobs (PbsParams); the tail-rows error bound (tune/objective.py)
# is what makes the search keep them where a workload asks for far keys at its end.
GPU_SPACE = dict(block_size=(64, 128), blocks_per_segment=(2, 4, 8, 16), threshold=(0.6, 0.99), estimator=ESTIMATORS,
                 split=(1, 2), num_warps=(4, 8), num_stages=(2, 3, 4), kernel=tuple(KERNELS), programs_per_sm=(0, 1, 2),
                 tail_blocks=(0, 1, 2), column_blocks=(0, 4, 8, 16, 32))
# The interpreter runs tiny problems: small blocks, one launch shape (timing is meaningless), and the
# portable kernel only: the Hopper one is a GPU kernel the interpreter merely emulates, so a CPU profile
# naming it would show a launch no CPU has. A test that wants the emulation puts "tma" in `kernel`.
CPU_SPACE = dict(block_size=(16, 32), blocks_per_segment=(2, 4), threshold=(0.6, 0.99), estimator=ESTIMATORS,
                 split=(1,), num_warps=(4,), num_stages=(1,), kernel=("portable",), programs_per_sm=(0,),
                 tail_blocks=(0, 1), column_blocks=(0, 2, 4))


def gpu_space(arch: int) -> dict:
    """The GPU space for a compute capability: the Hopper kernel only where TMA exists (sm_90+)."""
    if arch >= 90:
        return GPU_SPACE
    return dict(GPU_SPACE, kernel=("portable",), programs_per_sm=(0,))

PUBLISHED_DEFAULT = dict(block_size=128, segment_size=256, threshold=0.9)  # the paper's default parameters
# Per-head mode: the trial's threshold is the reference each layer's allocation must match
# (error x margin, heaviest keys kept), so it is drawn from the allocation grid.
PER_HEAD_REFERENCES = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


@dataclass(frozen=True)
class TrialConfig:
    """What a trial runs: its PBS parameters and its launch. Stored on the trial once
    (`as_dict`, user attribute 'config') and read back only through `of_trial`."""

    params: PbsParams
    launch: LaunchConfig

    def as_dict(self):
        p = self.params
        return dict(block_size=p.block_size, segment_size=p.segment_size, threshold=round(float(p.threshold), 4),
                    estimator=p.estimator, tail_blocks=p.tail_blocks,
                    column_blocks=p.column_blocks, launch=self.launch.as_dict())

    @classmethod
    def from_dict(cls, d) -> "TrialConfig":
        """A stored trial's config; one stored before the retrieval knobs existed ran without them."""
        return cls(PbsParams(d["block_size"], d["segment_size"], d["threshold"], estimator=d.get("estimator", "mean"),
                             tail_blocks=d.get("tail_blocks", 0), column_blocks=d.get("column_blocks", 0)),
                   LaunchConfig(**d["launch"]))

    @classmethod
    def of_trial(cls, trial) -> "TrialConfig":
        return cls.from_dict(trial.user_attrs["config"])

    def planned(self, plan) -> PbsParams:
        """This trial's parameters with a layer plan's per-head thresholds, permutation and estimator."""
        return replace(self.params, threshold=tuple(plan.thresholds), permute=plan.permute,
                       estimator=plan.estimator)


def reference_config(head_dim, target: Target):
    """The published default (block 128, segment 256, threshold 0.9) with the launch the untuned
    op uses on the target (on Hopper with D=128: the Hopper kernel), so that speedups over the
    default are over what a user gets without tuning."""
    bs, seg = PUBLISHED_DEFAULT["block_size"], PUBLISHED_DEFAULT["segment_size"]
    if not target.on_gpu:
        bs, seg = 16, 32  # same ratio, interpreter-sized
    return TrialConfig(PbsParams(bs, seg, PUBLISHED_DEFAULT["threshold"]),
                       default_launch(bs, head_dim, target.capability))


def default_knobs(space: dict) -> dict:
    """The retrieval knobs at PbsParams' defaults, or the nearest value below them the space holds."""
    out = {}
    for name in ("tail_blocks", "column_blocks"):
        default = PbsParams.__dataclass_fields__[name].default
        out[name] = max(v for v in space[name] if v <= default)
    return out


def searched_default(target: Target) -> PbsParams:
    """The untuned default as the search holds it (the study's first, enqueued trial): block
    128, segment 256, threshold 0.9 on a GPU, in the interpreter its largest block, 2 per segment;
    the retrieval knobs at their defaults."""
    space = GPU_SPACE if target.on_gpu else CPU_SPACE
    bs = space["block_size"][-1]
    return PbsParams(bs, 2 * bs, PUBLISHED_DEFAULT["threshold"], **default_knobs(space))


def launch_problem(cfg: TrialConfig, *, head_dim: int, dtype: str, target: Target) -> str | None:
    """Why this config's attend kernel cannot run on this GPU, or None. The kernel is compiled
    first (what the JIT would build, see kernels/aot.py), so its real shared memory is compared
    with the device's limit, not an estimate; Triton's cache then serves the JIT the same build."""
    from ..kernels.aot import attend_call, compile_call
    lc, arch, smem_limit = cfg.launch, target.arch, target.shared_memory
    try:
        lc.check_device(target.capability)
    except ValueError as exc:
        return str(exc)
    try:
        kernel = compile_call(attend_call(dtype=dtype, head_dim=head_dim, block_size=cfg.params.block_size,
                                          **lc.as_dict()), arch=arch)
    except Exception as exc:  # the compiler's own refusal, reported in one line
        return f"attend kernel does not compile for sm_{arch}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if kernel.metadata.shared > smem_limit:
        return f"attend kernel needs {kernel.metadata.shared} bytes of shared memory; the GPU allows {smem_limit}"
    return None


def suggest(trial: optuna.Trial, space: dict, per_head: bool = False) -> TrialConfig:
    bs = trial.suggest_categorical("block_size", list(space["block_size"]))
    per_seg = trial.suggest_categorical("blocks_per_segment", list(space["blocks_per_segment"]))
    lo, hi = space["threshold"]
    threshold = trial.suggest_categorical("threshold", list(PER_HEAD_REFERENCES)) if per_head \
        else trial.suggest_float("threshold", lo, hi)
    # Per-head plans choose the estimator per layer, with the thresholds (tune/allocate.py).
    estimator = "mean" if per_head else trial.suggest_categorical("estimator", list(space["estimator"]))
    tail = trial.suggest_categorical("tail_blocks", list(space["tail_blocks"]))
    columns = trial.suggest_categorical("column_blocks", list(space["column_blocks"]))
    m_split = trial.suggest_categorical("m_split", list(space["split"]))
    n_split = trial.suggest_categorical("n_split", list(space["split"]))
    kernel = trial.suggest_categorical("kernel", list(space["kernel"]))
    programs = trial.suggest_categorical("programs_per_sm", list(space["programs_per_sm"])) \
        if kernel != "portable" else 0
    launch = LaunchConfig(block_m=max(16, bs // m_split), block_n=max(16, bs // n_split),
                          num_warps=trial.suggest_categorical("num_warps", list(space["num_warps"])),
                          num_stages=trial.suggest_categorical("num_stages", list(space["num_stages"])),
                          programs_per_sm=programs, **KERNELS[kernel])
    cfg = TrialConfig(PbsParams(bs, bs * per_seg, threshold, estimator=estimator, tail_blocks=tail,
                                column_blocks=columns), launch)
    trial.set_user_attr("config", cfg.as_dict())
    return cfg
