"""Short GPU names ('h100', 'a100', ...) that key profiles and kernel caches."""
import os
import re

import torch

CPU = "cpu"  # Triton's interpreter on the CPU: used by tests and CI


def detect_gpu() -> str:
    """Short name of GPU 0, or 'cpu' when only the Triton interpreter is available."""
    if torch.cuda.is_available():
        return short_name(torch.cuda.get_device_name(0))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return CPU
    raise RuntimeError("no CUDA GPU found (set TRITON_INTERPRET=1 to run on the CPU interpreter)")


def short_name(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA A100-SXM4-80GB' -> 'a100'."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name.upper().replace("-", " "))
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def resolve_gpu(requested: str) -> str:
    """'auto' names the present GPU; any other name must match it."""
    present = detect_gpu()
    if requested in (None, "", "auto"):
        return present
    if requested.lower() != present:
        raise ValueError(f"--gpu {requested} does not match the GPU present ({present}); "
                         f"run on a {requested} or pass --gpu auto")
    return present


def device_for(gpu: str) -> str:
    return "cpu" if gpu == CPU else "cuda"
