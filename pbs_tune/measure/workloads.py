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
deterministic for a given seed and device.

Every family ends with a *question* (``question=True``, the default): the last rows ask for a
few far keys ("needles", 2-4 per KV head at depths of 5-90%), each row for one of them, so that
most of that row's attention mass lands on its needle, while the mean-pooled query of the block
(which averages the different questions) points at none in particular. Those rows are the ones a
prefill returns logits for and generation reads; PBS picks their key blocks from that pooled
query, so a config can drop a needle and barely move the whole output's error (see
measure/metrics.py, `tail_rel_l2`). ``question=False`` makes the data of earlier releases, bit for
bit (profiles and results recorded before the question were measured on it). Real users
calibrate on Q/K/V captured from their own model instead (``pbs-tune capture``).

The names below are plain data; torch is imported where Q/K/V are made, so that the CLI can
offer the workloads without loading it.
"""
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where Q/K/V are made
    import torch

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
# The question: the last QUESTION_ROWS rows (the largest searched block; at most a quarter of a short
# sequence) ask for NEEDLES keys per KV head at NEEDLE_DEPTH of the sequence. A row's logit at its
# needle is NEEDLE_LOGIT + ln(N): what competes with it (heavy hitters, topic spans) grows as ln(N).
QUESTION_ROWS = 128
NEEDLES = (2, 4)
NEEDLE_DEPTH = (0.05, 0.9)
NEEDLE_LOGIT = 28.0
# Rows sampled to size the needles' values (`_size_needle_values`).
SAMPLE_ROWS = 16


def family_of_heads(workload: str, kv_heads: int):
    if workload == "mixed":
        return [MIXED[i % len(MIXED)] for i in range(kv_heads)]
    if workload not in FAMILIES:
        raise ValueError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
    return [workload] * kv_heads


def make_qkv(workload="mixed", *, seqlen, batch=1, heads=32, kv_heads=8, head_dim=128,
             dtype=None, device="cpu", seed=0, question: bool = True):
    """Return q (B, heads, N, D), k and v (B, kv_heads, N, D), contiguous (dtype: bfloat16 by default).
    `question`: the last rows ask for far needle keys (module docstring); False: the data of earlier
    releases (the question draws from a generator of its own, so the rest is the same either way)."""
    import torch
    dtype = dtype or torch.bfloat16
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4, got {head_dim}")
    if question and head_dim < 8:
        raise ValueError(f"head_dim {head_dim} leaves no room for the question's needle directions; "
                         f"use head_dim >= 8 or question=False")
    families = family_of_heads(workload, kv_heads)
    gen = torch.Generator(device=device).manual_seed(seed)
    ask = torch.Generator(device=device).manual_seed(question_seed(seed)) if question else None
    group = heads // kv_heads
    n, d = seqlen, head_dim
    q = torch.empty((batch, heads, n, d), dtype=dtype, device=device)
    k = torch.empty((batch, kv_heads, n, d), dtype=dtype, device=device)
    needles = []
    for b in range(batch):
        for h, fam in enumerate(families):
            qh, kh, where = _head_qk(FAMILIES[fam], group, n, d, gen, device, ask)
            q[b, h * group:(h + 1) * group] = qh.to(dtype)
            k[b, h] = kh.to(dtype)
            needles.append((b, h, where))
    v = torch.randn((batch, kv_heads, n, d), generator=gen, device=device).to(dtype)
    for b, h, where in needles:
        if where is not None:
            _size_needle_values(q[b, h * group:(h + 1) * group], k[b, h], v[b, h], where, ask)
    return q, k, v


def question_seed(seed: int) -> int:
    """The seed of the question's generator: a function of the workload's seed, apart from its stream."""
    return (seed * 2654435761 + 0x9E3779B9) % (1 << 62)


def question_rows(seqlen: int) -> int:
    """How many last rows ask the question: QUESTION_ROWS, at most a quarter of the sequence."""
    return min(QUESTION_ROWS, seqlen // 4)


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


def _head_qk(fam, group, n, d, gen, device, ask=None):
    """Q for the `group` query heads of one KV head, and its K (float32), and the needles' positions:
    with `ask` (the question's generator), the question at the end (`_ask`), else None."""
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
    if ask is None:
        return q, k, None
    where = _needle_positions(n, ask, device)
    if where is None:
        return q, k, None
    # Needle directions avoid the sink's and the heavy hitters' and, where the family uses them, the
    # topics': all of them where the head has room beside them, else those the question's rows look for
    # and those of the needles' own spans (a needle must not ride on a topic its question shares).
    used = 2 + (topics.shape[0] if fam["topic"] else 0)
    avoid = basis[:, :used]
    if basis.shape[1] - used < where.numel() and fam["topic"]:
        asked = target[(n - question_rows(n)) // QUERY_CHUNK:]
        avoid = torch.cat([basis[:, :2], topics[torch.cat([asked, span_topic[where // SPAN]])].T], dim=1)
    if basis.shape[1] - avoid.shape[1] < where.numel():
        avoid = basis[:, :2]
    where = where[:basis.shape[1] - avoid.shape[1]]
    _ask(q, k, where, _directions(avoid, where.numel(), ask))
    return q, k, where


def _needle_positions(n: int, gen: "torch.Generator", device) -> "torch.Tensor | None":
    """NEEDLES distinct key positions at NEEDLE_DEPTH of the sequence, before the question's rows; None
    when the sequence is too short to ask."""
    import torch
    rows = question_rows(n)
    lo = max(SINK_TOKENS, int(NEEDLE_DEPTH[0] * n))
    hi = min(int(NEEDLE_DEPTH[1] * n), n - rows)
    count = int(torch.randint(NEEDLES[0], NEEDLES[1] + 1, (1,), generator=gen, device=device))
    if rows < 1 or hi - lo < 1:
        return None
    return lo + torch.randperm(hi - lo, generator=gen, device=device)[:count]


def _directions(avoid: "torch.Tensor", count: int, gen: "torch.Generator") -> "torch.Tensor":
    """`count` orthonormal directions (rows) orthogonal to the columns of `avoid`."""
    import torch
    span, _ = torch.linalg.qr(avoid)
    drawn = torch.randn((avoid.shape[0], count), generator=gen, device=avoid.device)
    directions, _ = torch.linalg.qr(drawn - span @ (span.T @ drawn))
    return directions.T


def _ask(q: "torch.Tensor", k: "torch.Tensor", where: "torch.Tensor", directions: "torch.Tensor") -> None:
    """Put the question in place (in place): the needle keys at `where` get a direction each; the last
    `question_rows` rows of every query head ask for one needle each, in turn (the heads of the group
    starting at different needles), at logit NEEDLE_LOGIT + ln(N)."""
    import torch
    group, n, d = q.shape
    half, rows, count = d // 2, question_rows(n), where.numel()
    a = math.sqrt(NEEDLE_LOGIT + math.log(n)) * math.sqrt(math.sqrt(d))
    k[where, half:] += a * directions
    asked = (torch.arange(rows, device=q.device)[None, :] + torch.arange(group, device=q.device)[:, None]) % count
    q[:, n - rows:, half:] += a * directions[asked]


def _size_needle_values(q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor", where: "torch.Tensor",
                        gen: "torch.Generator") -> None:
    """Scale the needles' values (in place) to the output size of a typical row of this head (the RMS
    output norm of SAMPLE_ROWS rows of the second half, exact attention). A row that reads one value
    is as large as that value; one that averages many random values is smaller. Sized so, the
    question's rows weigh in the whole output's error by their number, as on a model, and do not
    drown the other rows' error (on `diffuse` they would hold ~90% of the output's norm)."""
    import torch
    n, d = k.shape
    lo, hi = n // 2, n - question_rows(n)
    if hi <= lo:
        return
    rows = lo + torch.randperm(hi - lo, generator=gen, device=k.device)[:SAMPLE_ROWS]
    scores = (q[:, rows].float() @ k.float().T) / math.sqrt(d)                   # (group, rows, n)
    later = torch.arange(n, device=k.device)[None, :] > rows[:, None]
    out = torch.softmax(scores.masked_fill(later, float("-inf")), dim=-1) @ v.float()
    typical = out.pow(2).sum(-1).mean().sqrt()
    values = v[where].float()
    v[where] = (values * (typical / values.norm(dim=-1, keepdim=True))).to(v.dtype)
