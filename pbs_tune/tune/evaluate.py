"""Measure one PBS config on calibration data: latency, error (of the whole output and of its last
query block, `tail_rel_l2`), recall, density.

Dense attention (output and log-sum-exp) is computed once per calibration set and reused
by every trial; the dense baselines (SDPA cuDNN and flash) are timed on the same data.
"""
import math
from dataclasses import dataclass

import torch

from .. import progress

from ..op.pbs_attention import attend_blocks, check_inputs, permute_and_select
from ..profile.params import ESTIMATORS
from ..profile.provenance import DataSource
from ..profile.target import Target
from ..measure.timing import dense_baselines as sdpa_baselines
from ..measure.timing import median_ms
from ..measure.metrics import dense_lse, dense_reference, recall_from_lse, rel_l2, tail_rel_l2
from ..measure.workloads import CALIBRATION_SETS, make_qkv


@dataclass
class Calibration:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dense_out: torch.Tensor
    dense_lse: torch.Tensor
    source: DataSource
    layer_ids: tuple | None = None  # captured layers, None for a synthetic workload
    samples: int = 1  # sequences per layer: the batch is layers x samples, layer after layer
    sources: tuple = ()  # a calibration set: the workload of each equal, consecutive group of the batch

    @property
    def seqlen(self):
        return self.q.shape[2]

    @property
    def layers(self) -> int:
        return self.q.shape[0] // self.samples

    def layer(self, i) -> slice:
        """The batch rows of layer i (its samples)."""
        return slice(i * self.samples, (i + 1) * self.samples)

    def source_rows(self) -> list:
        """[(workload, batch rows)] of a calibration set; empty for one source."""
        size = self.q.shape[0] // max(1, len(self.sources))
        return [(name, slice(i * size, (i + 1) * size)) for i, name in enumerate(self.sources)]


def load_calibration(*, seqlen, heads, kv_heads, head_dim, dtype, device, workload="mixed",
                     calib_file=None, seed=0, samples=1) -> Calibration:
    """Synthetic workload Q/K/V (`samples` of them, a batch of `seed`; a calibration set: that
    many of each of its workloads), or captured ones (layers, each with its sequences, stacked as
    the batch)."""
    layer_ids, sources = None, ()
    progress.say(f"calibration data: {calib_file or workload} at {seqlen} tokens")
    if calib_file:
        q, k, v, layer_ids, samples = read_capture(calib_file, seqlen, dtype, device)
        source = DataSource.capture(calib_file)
    else:
        source = DataSource.workload(workload, samples=samples)
        sources = CALIBRATION_SETS.get(workload, ())
        parts = [make_qkv(w, seqlen=seqlen, batch=samples, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                          dtype=dtype, device=device, seed=seed) for w in sources or (workload,)]
        q, k, v = (torch.cat(t) if len(parts) > 1 else t[0] for t in zip(*parts))
        samples *= len(parts)
    if (q.shape[1], k.shape[1], q.shape[3]) != (heads, kv_heads, head_dim):
        raise ValueError(f"calibration shape {tuple(q.shape)}/{tuple(k.shape)} does not match "
                         f"--heads {heads} --kv-heads {kv_heads} --head-dim {head_dim}")
    progress.say(f"dense reference over {q.shape[0]} layer-sample(s)")
    with torch.no_grad():
        dense_out, dense_lse = _dense(q, k, v)
    return Calibration(q, k, v, dense_out, dense_lse, source, layer_ids, samples, sources)


def _capture_header(path):
    """{tensor name: (shape, dtype)} of a capture, read from its header only; one clear error for a
    file that is not a safetensors capture."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for unreadable files
        raise ValueError(f"{path} is not a safetensors capture ({str(exc).splitlines()[0]}); "
                         f"make one with pbs-tune capture --model ... --out FILE") from None


def captured_layers(path) -> tuple:
    """(tensor-name prefixes, model layer indices) of a capture, read from its header only."""
    layers = sorted({name.split(".")[0] for name in _capture_header(path)})
    return layers, tuple(int(n[len("layer"):]) if n[len("layer"):].isdigit() else i for i, n in enumerate(layers))


def captured_shape(path) -> dict:
    """heads, kv_heads, head_dim and dtype of a capture (its first layer's q and k), header only."""
    header = _capture_header(path)
    layer = min(name.split(".")[0] for name in header)
    if f"{layer}.q" not in header or f"{layer}.k" not in header:
        raise ValueError(f"{path}: expected tensors '<layer>.q/.k/.v' as written by pbs-tune capture")
    (q_shape, q_dtype), (k_shape, _) = header[f"{layer}.q"], header[f"{layer}.k"]
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    return dict(heads=q_shape[-3], kv_heads=k_shape[-3], head_dim=q_shape[-1], dtype=names.get(q_dtype, q_dtype))


def read_capture(path, seqlen, dtype, device):
    from safetensors.torch import load_file
    layers, ids = captured_layers(path)  # checks the file first
    tensors = load_file(path)
    try:
        # (heads, seqlen, dim) per layer, or (sequences, heads, seqlen, dim): one layout for both.
        q, k, v = (torch.stack([_with_sequences(tensors[f"{layer}.{x}"]) for layer in layers]) for x in "qkv")
    except KeyError as exc:
        raise ValueError(f"{path}: expected tensors '<layer>.q/.k/.v' as written by pbs-tune capture ({exc})") from None
    except RuntimeError:
        raise ValueError(f"{path}: its layers differ in shape; capture them in one run of pbs-tune capture") from None
    if q.shape[3] < seqlen:
        raise ValueError(f"{path}: captured {q.shape[3]} tokens, fewer than --seqlen {seqlen}")
    samples = q.shape[1]
    return (*(t[:, :, :, :seqlen].flatten(0, 1).to(device=device, dtype=dtype).contiguous() for t in (q, k, v)),
            ids, samples)


def _with_sequences(t):
    return t[None] if t.dim() == 3 else t


def _dense(q, k, v):
    """Dense causal output (float32 reference) and LSE (attend kernel with every block)."""
    return dense_reference(q, k, v), dense_lse(q, k, v)


def measure_config(cal: Calibration, cfg, *, target: Target, timed: bool = True) -> dict:
    """Latency of the whole op (permute + select + attend) and its accuracy (`timed=False`:
    accuracy only, latency None)."""
    check_inputs(cal.q, cal.k, cal.v, cfg.params, launch=cfg.launch)
    return _measure_parts(cal, cfg, [(slice(None), cfg.params)], target=target, timed=timed)


def dense_baselines(cal: Calibration, *, target: Target) -> dict:
    """SDPA cuDNN and flash latency on the calibration data (GPU only)."""
    return sdpa_baselines(cal.q, cal.k, cal.v, on_gpu=target.on_gpu)


def layer_plans(cal: Calibration, cfg, margin: float, cache: dict | None = None, estimators=ESTIMATORS) -> list:
    """Per calibration layer: permute or not, the estimator and per-head thresholds whose error is
    within `margin` x that of cfg.threshold, keeping as many heaviest keys (tune/allocate.py); with
    several sequences per layer, checked on each one left out.
    The curves depend on block, segment and estimators only (every launch keeps the same blocks, and the
    reference threshold is a point of the grid), so `cache` keeps them from trial to trial.
    `estimators`: those a layer may use, each with and without the permutation."""
    from .allocate import choose_plan, layer_curves, variants_of
    p = cfg.params
    key = (p.block_size, p.segment_size, tuple(estimators), p.tail_blocks, p.column_blocks)
    cache = {} if cache is None else cache
    if key not in cache:
        steps = progress.Steps(f"per-head curves at block {p.block_size}, segment {p.segment_size}: layer",
                               cal.layers)
        cache[key] = []
        for i in range(cal.layers):
            cache[key].append(layer_curves(cal.q[cal.layer(i)], cal.k[cal.layer(i)], cal.v[cal.layer(i)],
                                           block_size=p.block_size, segment_size=p.segment_size,
                                           launch=cfg.launch, variants=variants_of(estimators),
                                           tail_blocks=p.tail_blocks, column_blocks=p.column_blocks))
            steps.step()
    return [choose_plan(curves, margin=margin, reference=p.threshold) for curves in cache[key]]


def measure_layers(cal: Calibration, cfg, plans, *, target: Target, timed: bool = True) -> dict:
    """Like `measure`, but each layer runs its own plan, one after another, as in a model."""
    return _measure_parts(cal, cfg, [(cal.layer(i), cfg.planned(p)) for i, p in enumerate(plans)],
                          target=target, timed=timed)


def _measure_parts(cal: Calibration, cfg, parts, *, target: Target, timed: bool = True) -> dict:
    """Time the op over `parts` [(batch slice, PbsParams)] in turn; accuracy over all: the whole
    output's rel_l2 and the tail's (the last query block of every sequence, the rows a prefill
    returns logits for), each also per workload of a calibration set."""
    scale = 1.0 / math.sqrt(cal.q.shape[-1])
    inputs = [(cal.q[cut], cal.k[cut], cal.v[cut], params) for cut, params in parts]

    def run(return_lse=False):
        results = []
        for q, k, v, params in inputs:
            perm, blocks = permute_and_select(q, k, v, params, scale=scale)
            results.append((attend_blocks(q, perm, blocks, launch=cfg.launch, scale=scale, return_lse=return_lse),
                            blocks))
        return results

    with torch.no_grad():
        progress.say(f"  running the op for accuracy ({len(parts)} part{'s' if len(parts) > 1 else ''})")
        results = run(return_lse=True)
        if timed:
            progress.say("  timing it")
        latency = median_ms(run, target.on_gpu) if timed else None
    out = torch.cat([r[0][0] for r in results])
    lse = torch.cat([r[0][1] for r in results])
    kept = sum(r[1].kept_blocks() for r in results)
    candidates = sum(r[1].candidate_blocks() for r in results)
    tail = cfg.params.block_size
    by_source = {name: rel_l2(out[rows], cal.dense_out[rows]) for name, rows in cal.source_rows()}
    tail_by_source = {name: tail_rel_l2(out[rows], cal.dense_out[rows], tail) for name, rows in cal.source_rows()}
    return dict(latency_ms=latency, rel_l2=rel_l2(out, cal.dense_out),
                tail_rel_l2=tail_rel_l2(out, cal.dense_out, tail), recall=recall_from_lse(lse, cal.dense_lse),
                density=kept / candidates,
                **(dict(rel_l2_by_source=by_source, tail_rel_l2_by_source=tail_by_source) if by_source else {}))
