"""Synthetic LLM-like Q/K/V for tuning and benchmarks (no model weights can be fetched here).

Each KV head belongs to one *head family*, built from interpretable logit terms (all in
units of the scaled score q.k/sqrt(D)):

* ``sink_local``  attention sink on the first tokens + a RoPE-style local window.
* ``stripes``     vertical stripes: a few percent of keys, scattered at random positions,
                  are heavy hitters that every query attends to (what PBS's permutation
                  gathers into few blocks).
* ``retrieval``   document-like text: short spans carry one of many topics; each query
                  chunk retrieves the spans of one earlier topic (scattered, span-shaped).
* ``diffuse``     broad attention with little structure (hard to sparsify).
* ``mixed``       a preset mixing the four over the KV heads, calibrated so that PBS at
                  threshold 0.9 keeps roughly 30-45% of causal blocks at 32k-128k, as the
                  paper reports for real models (see benchmarks/results/h100_op_mixed.json).

The first half of the head dimension carries rotary position features, the second half
carries content directions (sink, heavy hitters, topics) and noise. Generation is
deterministic for a given seed and device. Real users calibrate on Q/K/V captured from
their own model instead (``pbs-tune capture``).

The names below are plain data; torch is imported where Q/K/V are made, so that the CLI can
offer the workloads without loading it.
"""
import math

FAMILIES = {
    # local: logit at distance 0; sink: logit of the first tokens; hh: heavy-hitter logit;
    # topic: logit of a matching span; noise: std of the random logit term.
    "sink_local": dict(local=18.0, sink=14.0, hh=0.0, topic=0.0, noise=1.0),
    "stripes": dict(local=6.0, sink=12.0, hh=22.0, topic=0.0, noise=1.0),
    "retrieval": dict(local=6.0, sink=10.0, hh=0.0, topic=20.0, noise=1.0),
    "diffuse": dict(local=1.5, sink=2.0, hh=0.0, topic=0.0, noise=0.6),
}
# KV-head share of each family in the mixed preset (cycled over the KV heads).
MIXED = ("stripes", "sink_local", "retrieval", "stripes", "sink_local", "retrieval", "stripes", "diffuse")
WORKLOADS = tuple(FAMILIES) + ("mixed",)
# Calibration sets: one sample of each of several workloads, so that a sweep can hold its error
# bound on each of them (tune/sweep.py), not on their average, where one family's low error
# would pay for another's high one.
CALIBRATION_SETS = {"families": WORKLOADS}

SINK_TOKENS = 4
HEAVY_FRACTION = 0.05
SPAN = 32
TOPICS = 48
QUERY_CHUNK = 2048


def family_of_heads(workload: str, kv_heads: int):
    if workload == "mixed":
        return [MIXED[i % len(MIXED)] for i in range(kv_heads)]
    if workload not in FAMILIES:
        raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    return [workload] * kv_heads


def make_qkv(workload="mixed", *, seqlen, batch=1, heads=32, kv_heads=8, head_dim=128,
             dtype=None, device="cpu", seed=0):
    """Return q (B, heads, N, D), k and v (B, kv_heads, N, D), contiguous (dtype: bfloat16 by default)."""
    import torch
    dtype = dtype or torch.bfloat16
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4, got {head_dim}")
    families = family_of_heads(workload, kv_heads)
    gen = torch.Generator(device=device).manual_seed(seed)
    group = heads // kv_heads
    n, d = seqlen, head_dim
    q = torch.empty((batch, heads, n, d), dtype=dtype, device=device)
    k = torch.empty((batch, kv_heads, n, d), dtype=dtype, device=device)
    for b in range(batch):
        for h, fam in enumerate(families):
            qh, kh = _head_qk(FAMILIES[fam], group, n, d, gen, device)
            q[b, h * group:(h + 1) * group] = qh.to(dtype)
            k[b, h] = kh.to(dtype)
    v = torch.randn((batch, kv_heads, n, d), generator=gen, device=device).to(dtype)
    return q, k, v


def _rotary(n, half, device):
    """cos/sin of RoPE angles for positions 0..n-1 over half/2 frequency pairs."""
    import torch
    pairs = half // 2
    inv_freq = 10000.0 ** (-torch.arange(pairs, device=device, dtype=torch.float32) / pairs)
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def _rotate(vec, cos, sin):
    """Apply the rotation of every position to one (half,) vector: -> (n, half)."""
    import torch
    a, b = vec[0::2], vec[1::2]
    out = torch.empty((cos.shape[0], vec.shape[0]), device=vec.device)
    out[:, 0::2] = a * cos - b * sin
    out[:, 1::2] = a * sin + b * cos
    return out


def _head_qk(fam, group, n, d, gen, device):
    """Q for the `group` query heads of one KV head, and its K (float32)."""
    import torch
    half = d // 2
    root = math.sqrt(math.sqrt(d))  # q.k / sqrt(d) = L  when  |q| = |k| = sqrt(L) * d**0.25
    cos, sin = _rotary(n, half, device)
    basis, _ = torch.linalg.qr(torch.randn((d - half, d - half), generator=gen, device=device))
    e_sink, e_hh = basis[:, 0], basis[:, 1]
    topics = basis[:, 2:2 + TOPICS].T                     # (n_topics, d-half); fewer when d is small

    k = torch.zeros((n, d), device=device)
    q = torch.zeros((group, n, d), device=device)
    c = torch.randn((half,), generator=gen, device=device)
    c = c / c.norm() * math.sqrt(fam["local"]) * root
    k[:, :half] = _rotate(c, cos, sin)
    q[:, :, :half] = k[:, :half]

    s = math.sqrt(fam["sink"]) * root
    k[:SINK_TOKENS, half:] += s * e_sink
    q[:, :, half:] += s * e_sink

    if fam["hh"]:
        n_hh = max(1, int(HEAVY_FRACTION * n))
        where = torch.randperm(n, generator=gen, device=device)[:n_hh]
        weight = 0.6 + 0.4 * torch.rand((n_hh, 1), generator=gen, device=device)
        a = math.sqrt(fam["hh"]) * root
        k[where, half:] += a * weight * e_hh
        q[:, :, half:] += a * e_hh

    if fam["topic"]:
        a = math.sqrt(fam["topic"]) * root
        n_spans = -(-n // SPAN)
        span_topic = torch.randint(topics.shape[0], (n_spans,), generator=gen, device=device)
        k[:, half:] += a * topics[span_topic].repeat_interleave(SPAN, dim=0)[:n]
        n_chunks = -(-n // QUERY_CHUNK)
        # Each query chunk looks for a topic that appeared before it (span 0 always has).
        first = torch.randint(0, 1 << 30, (n_chunks,), generator=gen, device=device)
        spans_seen = torch.clamp(torch.arange(n_chunks, device=device) * (QUERY_CHUNK // SPAN), min=1)
        target = span_topic[first % spans_seen]
        q[:, :, half:] += a * topics[target].repeat_interleave(QUERY_CHUNK, dim=0)[:n]

    sigma = math.sqrt(fam["noise"]) * root / math.sqrt(d - half)
    k[:, half:] += sigma * torch.randn((n, d - half), generator=gen, device=device)
    q[:, :, half:] += sigma * torch.randn((group, n, d - half), generator=gen, device=device)
    return q, k
