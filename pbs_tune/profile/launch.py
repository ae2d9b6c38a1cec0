"""Triton launch parameters of the attend kernel, chosen ahead of time by the tuner."""
import re
from dataclasses import asdict, dataclass, fields

MAX_PROGRAMS_PER_SM = 8


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes, warps and pipeline depth; `tma` picks the Hopper kernel (kernels/attend_hopper.py),
    whose grid can be persistent: `programs_per_sm` programs per SM (0: one per query tile)."""
    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False
    programs_per_sm: int = 0

    def check(self, block_size: int) -> None:
        """Raise ValueError when this config cannot tile PBS blocks of `block_size`."""
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not is_pow2(value) or value < 16:
                raise ValueError(f"launch.{name} must be a power of two >= 16, got {value}")
            if block_size % value:
                raise ValueError(f"launch.{name}={value} must divide block_size={block_size}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"launch.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if not 1 <= self.num_stages <= 8:
            raise ValueError(f"launch.num_stages must be in 1..8, got {self.num_stages}")
        if not isinstance(self.tma, bool):
            raise ValueError(f"launch.tma must be true or false, got {self.tma!r}")
        if not isinstance(self.programs_per_sm, int) or isinstance(self.programs_per_sm, bool) \
                or not 0 <= self.programs_per_sm <= MAX_PROGRAMS_PER_SM:
            raise ValueError(f"launch.programs_per_sm must be an integer in 0..{MAX_PROGRAMS_PER_SM}, "
                             f"got {self.programs_per_sm!r}")
        if not self.tma and self.programs_per_sm:
            raise ValueError("launch.programs_per_sm needs launch.tma: true (the Hopper kernel); the portable "
                             "kernel has no persistent grid")

    def check_device(self, capability) -> None:
        """Raise ValueError when this config cannot run on a GPU of this (major, minor) capability."""
        if self.tma and capability[0] < 9:
            raise ValueError(f"launch.tma needs a Hopper GPU or newer (sm_90+); this GPU is "
                             f"sm_{capability[0]}{capability[1]}: use tma: false")

    def as_dict(self) -> dict:
        """Fields that differ from the portable kernel's defaults are written; older profiles stay valid."""
        out = asdict(self)
        for f in fields(self)[4:]:
            if out[f.name] == f.default:
                del out[f.name]
        return out

    @classmethod
    def parse(cls, label: str) -> "LaunchConfig":
        """The inverse of `label`, e.g. '128x128w8s3' or '128x128w8s3-tma-p2'."""
        m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)(-tma)?(?:-p(\d+))?", label.strip())
        if m is None:
            raise ValueError(f"launch {label!r} is not like 128x128w8s3 or 128x128w8s3-tma-p2")
        bm, bn, w, s, tma, p = m.groups()
        return cls(int(bm), int(bn), int(w), int(s), tma=bool(tma), programs_per_sm=int(p or 0))

    def label(self) -> str:
        text = f"{self.block_m}x{self.block_n}w{self.num_warps}s{self.num_stages}"
        if self.tma:
            text += "-tma" + (f"-p{self.programs_per_sm}" if self.programs_per_sm else "")
        return text


REQUIRED_FIELDS = tuple(f.name for f in fields(LaunchConfig))[:4]


def default_launch(block_size: int, head_dim: int, capability: tuple[int, int] | None = None) -> LaunchConfig:
    """A config that is good on Hopper for D=128 (see DESIGN.md) and valid everywhere.

    Args:
        block_size: PBS block size (tokens); tiles are min(128, block_size) square.
        head_dim: D, 64 or 128.
        capability: the GPU's (major, minor), e.g. `torch.cuda.get_device_capability()`; from (9, 0) on,
            128x128 tiles with D=128 run the Hopper kernel (faster in every measured cell of density
            >= 0.2: benchmarks/results/HOPPER_KERNEL.md). None: the portable kernel.
    """
    tile = min(128, block_size)
    warps = 8 if tile == 128 and head_dim == 128 else 4
    hopper = capability is not None and capability[0] >= 9 and tile == 128 and head_dim == 128
    return LaunchConfig(block_m=tile, block_n=tile, num_warps=warps, num_stages=3, tma=hopper)


def is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and x & (x - 1) == 0
