"""GPU names that key profiles and kernel libraries: the family and its variant.

Variants of one family differ in clocks, power and memory bandwidth (H100 SXM vs PCIe vs
NVL), so timings tuned on one must not silently stand for another: profiles are named by
variant ('h100-sxm'), and a family name ('h100') selects whichever variant is present.
"""
import os
import re

import torch

CPU = "cpu"  # Triton's interpreter on the CPU: used by tests and CI


def detect_gpu() -> str:
    """Variant name of GPU 0 ('h100-sxm'), or 'cpu' when only the Triton interpreter is available."""
    if torch.cuda.is_available():
        return variant_name(torch.cuda.get_device_name(0))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return CPU
    raise RuntimeError("no CUDA GPU found; to run on the CPU (Triton's interpreter), start Python with "
                       "TRITON_INTERPRET=1 set in the environment")


def present_gpu() -> str | None:
    """Like detect_gpu, but None where there is neither a GPU nor the interpreter."""
    try:
        return detect_gpu()
    except RuntimeError:
        return None


def family_name(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA A100-SXM4-80GB' -> 'a100'; 'NVIDIA GH200 480GB' -> 'gh200'."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name.upper().replace("-", " "))
    return m.group(1).lower() if m else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def variant_name(device_name: str) -> str:
    """Family plus form factor where the name tells it: 'h100-sxm', 'h100-pcie', 'h100-nvl', 'h200-sxm'.

    An H100 SXM5 reports 'NVIDIA H100 80GB HBM3' and an H200 SXM plain 'NVIDIA H200'; both are SXM.
    """
    family = family_name(device_name)
    upper = device_name.upper()
    if "PCIE" in upper:
        return f"{family}-pcie"
    if "NVL" in upper:
        return f"{family}-nvl"
    if "SXM" in upper or (family == "h100" and "HBM3" in upper) or family == "h200":
        return f"{family}-sxm"
    return family


def family_of(name: str) -> str:
    """'h100-sxm' -> 'h100'; 'h100' -> 'h100'."""
    return name.split("-", 1)[0]


def resolve_gpu(requested) -> str:
    """'auto' names the present GPU; a family ('h100') or variant ('h100-sxm') must match it."""
    present = detect_gpu()
    if requested in (None, "", "auto"):
        return present
    wanted = requested.lower()
    if wanted not in (present, family_of(present)):
        raise ValueError(f"--gpu {requested} does not match the GPU present ({present}); "
                         f"run this on that GPU or pass --gpu auto")
    return present


def device_for(gpu: str) -> str:
    return "cpu" if gpu == CPU else "cuda"
