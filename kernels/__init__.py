"""Triton kernels of pbs-tune (installed as ``pbs_tune.kernels``)."""
from .attend import attend_launch

__all__ = ["attend_launch"]
