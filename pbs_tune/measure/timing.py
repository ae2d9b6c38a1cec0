"""The one measuring helper shared by the sweep and the benchmarks: median latency
(`triton.testing.do_bench` on the GPU), the dense SDPA baselines, the run's environment
and the JSON writer that keeps every number with the device and versions it came from."""
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

DENSE_BACKENDS = ("cudnn", "flash")


def median_ms(fn, on_gpu: bool = True) -> float:
    """Median latency: do_bench on the GPU (warm-up sized to the call); one wall-clock run in
    the interpreter, where the number only orders configs and each run takes seconds (most of a
    CPU sweep's time)."""
    if on_gpu:
        import triton
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est = (time.perf_counter() - t0) * 1e3
        return float(triton.testing.do_bench(fn, warmup=max(25, 2 * est), rep=max(100, 6 * est),
                                             return_mode="median"))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def sdpa_backend(name):
    from torch.nn.attention import SDPBackend
    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]


def dense_sdpa_ms(q, k, v, backend: str) -> float:
    """Dense causal SDPA on one backend, K/V repeated per query head (cuDNN may refuse GQA)."""
    from torch.nn.attention import sdpa_kernel
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    with sdpa_kernel(sdpa_backend(backend)), torch.no_grad():
        return median_ms(lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True), True)


def dense_baselines(q, k, v, *, on_gpu: bool) -> dict:
    """{'cudnn_ms': ..., 'flash_ms': ...} on the GPU; a backend that refuses is recorded as '<name>_error'."""
    if not on_gpu:
        return {}
    out = {}
    for name in DENSE_BACKENDS:
        try:
            out[f"{name}_ms"] = dense_sdpa_ms(q, k, v, name)
        except RuntimeError as exc:  # backend unavailable for this dtype/GPU
            out[f"{name}_error"] = str(exc)[:200]
    return out


def env_info() -> dict:
    """Device and versions, recorded with every number."""
    import triton
    info = dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), date=time.strftime("%Y-%m-%d"))
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}")
    else:
        info["device"] = "cpu"
    return info


def rounded(row: dict, digits=4) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in row.items()}


def write_json(path: str, result: dict) -> None:
    """Write a benchmark result (env first) atomically enough for a killed run to keep the last one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)
