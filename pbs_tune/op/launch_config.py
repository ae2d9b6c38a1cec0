"""Triton launch parameters of the attend kernel, chosen ahead of time by the tuner."""
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3

    def check(self, block_size: int) -> None:
        """Raise ValueError when this config cannot tile PBS blocks of `block_size`."""
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not _is_pow2(value) or value < 16:
                raise ValueError(f"launch.{name} must be a power of two >= 16, got {value}")
            if block_size % value:
                raise ValueError(f"launch.{name}={value} must divide block_size={block_size}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"launch.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"launch.num_stages must be in 1..8, got {self.num_stages}")

    def as_dict(self) -> dict:
        return asdict(self)


def default_launch(block_size: int, head_dim: int) -> LaunchConfig:
    """A config that is good on Hopper for D=128 (see DESIGN.md) and valid everywhere."""
    tile = min(128, block_size)
    warps = 8 if tile == 128 and head_dim == 128 else 4
    return LaunchConfig(block_m=tile, block_n=tile, num_warps=warps, num_stages=3)


def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and x & (x - 1) == 0
