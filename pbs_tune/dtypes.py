"""The one map between dtype names (as profiles and the CLI write them) and torch dtypes. The names
are plain strings, so that reading a profile or printing `--help` does not load torch."""
NAMES = ("bfloat16", "float16", "float32")
ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str):
    """'bfloat16' or 'bf16' -> torch.bfloat16; ValueError for anything else."""
    import torch
    key = ALIASES.get(name, name)
    if key not in NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(NAMES)}")
    return getattr(torch, key)


def name_of(dtype) -> str | None:
    """torch.bfloat16 -> 'bfloat16'; None for a dtype no profile can name."""
    name = str(dtype).removeprefix("torch.")
    return name if name in NAMES else None
