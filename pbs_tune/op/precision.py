"""What the attend kernel reads in an 8-bit mode (`PbsParams.precision`), made once per call.

int8: Q per token and K per token (or per key block: `key_group`) in INT8 with float32 scales,
K smoothed by its head's mean key first (every score of a query row moves by q . mean, which
softmax ignores; the LSE gets it back). int8+fp8: also V in FP8 e4m3 with one scale per channel,
stored keys-contiguous, the layout 8-bit tensor cores read for P.V. Only the attend stage changes:
permutation and selection score in 16/32-bit as before, so the kept blocks are the same.
"""
from dataclasses import dataclass

import torch

from ..kernels.quantize import quantize_int8

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_MIN_KEYS = 32  # an FP8 product's reduction dimension (P.V's: the keys of a tile) is at least 32


@dataclass
class AttendInputs:
    """q, k (int8), v (16-bit, or an FP8 view of keys-contiguous storage) and the kernel's scales;
    `key_mean` (B, Hkv, D) is what smoothing took from every key."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scales: tuple
    key_mean: torch.Tensor

    def lse_shift(self, q, scale, heads_at_once=8):
        """(B, Hq, M) to add to the kernel's LSE: the scores lost q . mean to smoothing (float32, a few
        heads at a time: a float32 copy of a 128k-token Q would be 2 GiB)."""
        group = q.shape[1] // self.key_mean.shape[1]
        mean = self.key_mean.repeat_interleave(group, dim=1)
        return torch.cat([torch.einsum("bhmd,bhd->bhm", q[:, h:h + heads_at_once].float(), mean[:, h:h + heads_at_once])
                          for h in range(0, q.shape[1], heads_at_once)], dim=1) * scale


def attend_inputs(q, k, v, precision: str, *, key_group: int = 1) -> AttendInputs:
    """Quantize q (B, Hq, M, D) and permuted k, v (B, Hkv, N, D) for `precision` ("int8", "int8+fp8")."""
    key_mean = torch.mean(k, dim=2, dtype=torch.float32)  # no float32 copy of K
    q8, q_scale = quantize_int8(q)
    k8, k_scale = quantize_int8(k, mean=key_mean.contiguous(), group=key_group)
    v_scale = None
    if precision == "int8+fp8":
        v, v_scale = fp8_values(v)
    return AttendInputs(q8, k8, v, (q_scale, k_scale, v_scale), key_mean)


def fp8_values(v):
    """(an FP8 (B, Hkv, N, D) view of keys-contiguous storage, float32 (B, Hkv, D) scales): one scale
    per channel, max |v| / 448; rows of the storage padded to 16 bytes for tensor descriptors."""
    B, H, N, D = v.shape
    amax = torch.maximum(v.amax(dim=2), -v.amin(dim=2)).float()
    v_scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    storage = torch.zeros((B, H, D, -(-N // 16) * 16), device=v.device, dtype=FP8)
    for h in range(H):  # float32 one head at a time
        storage[:, h, :, :N] = (v[:, h].transpose(1, 2).float() / v_scale[:, h, :, None]).to(FP8)
    return storage[..., :N].transpose(2, 3), v_scale.contiguous()
