"""The tuner's search space: PBS parameters and attend-kernel launch configs.

Parameters are drawn so that every combination tiles correctly by construction (segment =
block x blocks_per_segment, tile = block / split); configs whose shared memory cannot fit
on the device are pruned before they run.
"""
from dataclasses import dataclass

import optuna

from ..op.launch_config import LaunchConfig, default_launch

GPU_SPACE = dict(block_size=(64, 128), blocks_per_segment=(2, 4, 8, 16), threshold=(0.6, 0.99),
                 split=(1, 2), num_warps=(4, 8), num_stages=(2, 3, 4))
# The interpreter runs tiny problems: small blocks, one launch shape (timing is meaningless).
CPU_SPACE = dict(block_size=(16, 32), blocks_per_segment=(2, 4), threshold=(0.6, 0.99),
                 split=(1,), num_warps=(4,), num_stages=(1,))

REFERENCE = dict(block_size=128, segment_size=256, threshold=0.9)  # published default


@dataclass(frozen=True)
class TrialConfig:
    block_size: int
    segment_size: int
    threshold: float
    launch: LaunchConfig

    def as_dict(self):
        return dict(block_size=self.block_size, segment_size=self.segment_size,
                    threshold=round(float(self.threshold), 4), launch=self.launch.as_dict())


def reference_config(head_dim, seqlen=None, cpu=False):
    """The published default (block 128, segment 256, threshold 0.9) with a stock launch."""
    bs, seg = REFERENCE["block_size"], REFERENCE["segment_size"]
    if cpu:
        bs, seg = 16, 32  # same ratio, interpreter-sized
    return TrialConfig(bs, seg, REFERENCE["threshold"], default_launch(bs, head_dim))


def shared_bytes(launch: LaunchConfig, head_dim: int, elem_bytes: int) -> int:
    """Lower estimate of the kernel's shared memory: Q tile + pipelined K and V tiles."""
    kv = 2 * launch.block_n * head_dim * elem_bytes
    return launch.block_m * head_dim * elem_bytes + max(1, launch.num_stages - 1) * kv


def suggest(trial: optuna.Trial, space: dict, *, head_dim: int, elem_bytes: int,
            smem_limit: int | None) -> TrialConfig:
    bs = trial.suggest_categorical("block_size", list(space["block_size"]))
    per_seg = trial.suggest_categorical("blocks_per_segment", list(space["blocks_per_segment"]))
    lo, hi = space["threshold"]
    threshold = trial.suggest_float("threshold", lo, hi)
    m_split = trial.suggest_categorical("m_split", list(space["split"]))
    n_split = trial.suggest_categorical("n_split", list(space["split"]))
    launch = LaunchConfig(block_m=max(16, bs // m_split), block_n=max(16, bs // n_split),
                          num_warps=trial.suggest_categorical("num_warps", list(space["num_warps"])),
                          num_stages=trial.suggest_categorical("num_stages", list(space["num_stages"])))
    cfg = TrialConfig(bs, bs * per_seg, threshold, launch)
    trial.set_user_attr("config", cfg.as_dict())
    if smem_limit is not None and shared_bytes(launch, head_dim, elem_bytes) > smem_limit:
        trial.set_user_attr("fail_reason", f"shared memory estimate {shared_bytes(launch, head_dim, elem_bytes)} "
                                           f"> device limit {smem_limit}")
        raise optuna.TrialPruned("launch config does not fit in shared memory")
    return cfg
