"""The one map between dtype names (as profiles and the CLI write them) and torch dtypes."""
import torch

BY_NAME = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
NAME_OF = {dtype: name for name, dtype in BY_NAME.items()}


def torch_dtype(name: str) -> torch.dtype:
    """'bfloat16' or 'bf16' -> torch.bfloat16; ValueError for anything else."""
    key = ALIASES.get(name, name)
    if key not in BY_NAME:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(BY_NAME)}")
    return BY_NAME[key]
