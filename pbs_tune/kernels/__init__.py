"""Triton kernels of pbs-tune (installed as ``pbs_tune.kernels``)."""
from .attend import attend_launch
from .key_scores import key_scores

__all__ = ["attend_launch", "key_scores"]
