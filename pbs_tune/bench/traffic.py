"""GPU benchmark of PBS on serving traffic: packed batches, chunked prefill, padded model batches.

Parts (--parts):
  packed   a packed batch of prompts of unequal length (mixed workload, one seed each):
           `pbs_attention_varlen` vs the sum of single-sequence PBS runs and vs dense attention
           (per-sequence SDPA cuDNN and flash, and torch's flash varlen kernel where it runs).
  chunked  one long prompt prefilled in chunks against its growing prefix: per chunk and summed,
           PBS vs dense (flash and cuDNN with the lower-right causal mask); and the last chunk of a
           32k prompt at several chunk sizes (where chunked PBS starts to pay: the loader's min_chunk).
  shapes   the shipped profile on other GQA shapes (nearest tuned entry) and on a chunk, from its kernel
           library: time vs cuDNN, error, and Triton JIT calls (0 = every kernel came from the library).
           Run it in a fresh process: it binds the library first.
  fixture  the trained byte-level fixture through `apply`: a padded batch of 4 prompts and chunked
           prefill, greedy tokens at threshold 1 vs SDPA, prefill time with the shipped profile.
Every PBS run uses the paper default (block 128, segment 256, threshold 0.9) and this GPU's
default launch unless said otherwise; errors are relative L2 against dense SDPA in the same run.
"""
import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from ..op.pbs_attention import pbs_attention
from ..op.varlen import pbs_attention_varlen, sequence_view
from ..seqlen import parse_length
from ..measure.metrics import rel_l2
from ..measure.prefill import prefill, prefill_ms
from ..measure.workloads import make_qkv
from ..measure.timing import env_info, median_ms, rounded, sdpa_backend, write_json
from ..runtime.serving import tuned_attention
from ..runtime.loader import load_profile
from ..runtime.state import reset_stats, stats
from ..runtime.transformers_attention import apply

DEFAULT = dict(block_size=128, segment_size=256, threshold=0.9)


def dense_chunk(q, k, v, backend):
    """A call of dense causal attention of the last q_len of k_len positions on one SDPA backend
    (K/V repeated per query head beforehand, outside what is timed: cuDNN may refuse GQA)."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    mask = dict(is_causal=True) if q.shape[2] == k.shape[2] else \
        dict(attn_mask=causal_lower_right(q.shape[2], k.shape[2]))

    def call():
        with sdpa_kernel(sdpa_backend(backend)), torch.no_grad():
            return F.scaled_dot_product_attention(q, kk, vv, **mask)
    return call


def cudnn_split_chunk(q, k, v):
    """A call of dense chunked attention on cuDNN, which takes no lower-right causal mask: the chunk
    against its prefix (no mask) and against itself (causal), merged by their log-sum-exps."""
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    start = k.shape[2] - q.shape[2]
    cudnn = torch.ops.aten._scaled_dot_product_cudnn_attention

    def call():
        with torch.no_grad():
            o1, l1 = cudnn(q, kk[:, :, :start], vv[:, :, :start], None, True, 0.0, False, False)[:2]
            o2, l2 = cudnn(q, kk[:, :, start:], vv[:, :, start:], None, True, 0.0, True, False)[:2]
            l1, l2 = l1.reshape(q.shape[:-1]).float(), l2.reshape(q.shape[:-1]).float()
            lse = torch.logaddexp(l1, l2)
            return (o1 * torch.exp(l1 - lse)[..., None] + o2 * torch.exp(l2 - lse)[..., None]).to(q.dtype)
    return call


def timed_dense(row, name, fn):
    try:
        row[f"{name}_ms"] = median_ms(fn)
    except RuntimeError as exc:  # a backend that refuses this shape or mask
        row[f"{name}_error"] = str(exc).split("\n")[0][:160]


def torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    """torch's flash varlen kernel (causal, lower right), K/V repeated per query head."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    params = inspect.signature(varlen_attn).parameters
    causal = dict(is_causal=True) if "is_causal" in params else dict(window_size=(-1, 0))
    return lambda: varlen_attn(q, kk, vv, cu_q, cu_k, max_q, max_k, **causal)


def part_packed(res, lengths, heads, kv_heads):
    seqs = [make_qkv("mixed", seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=i)
            for i, n in enumerate(lengths)]
    q, k, v = (torch.cat([s[j][0].transpose(0, 1) for s in seqs]).contiguous() for j in range(3))
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_gpu, n_max = cu.cuda(), max(lengths)
    row = dict(lengths=lengths, heads=heads, kv_heads=kv_heads, **DEFAULT)
    with torch.no_grad():
        out = pbs_attention_varlen(q, k, v, cu, cu, n_max, n_max, **DEFAULT)
        row["varlen_ms"] = median_ms(lambda: pbs_attention_varlen(q, k, v, cu, cu, n_max, n_max, **DEFAULT))
        row["varlen_cu_on_gpu_ms"] = median_ms(
            lambda: pbs_attention_varlen(q, k, v, cu_gpu, cu_gpu, n_max, n_max, **DEFAULT))
        torch.cuda.synchronize()
        t0 = time.perf_counter()  # host time to issue the whole packed op (the per-sequence loop)
        for _ in range(5):
            pbs_attention_varlen(q, k, v, cu, cu, n_max, n_max, **DEFAULT)
        row["varlen_host_issue_ms"] = (time.perf_counter() - t0) / 5 * 1e3
        torch.cuda.synchronize()
        singles, errors, same = [], [], []
        for i, (qs, ks, vs) in enumerate(seqs):
            singles.append(median_ms(lambda: pbs_attention(qs, ks, vs, **DEFAULT)))
            mine = sequence_view(out, int(cu[i]), int(cu[i + 1]))
            errors.append(rel_l2(mine, dense_chunk(qs, ks, vs, "flash")()))
            same.append(bool(torch.equal(mine, pbs_attention(qs, ks, vs, **DEFAULT))))
        row.update(single_ms=singles, single_sum_ms=sum(singles), rel_l2=errors, bit_identical_to_single=same)
        for backend in ("cudnn", "flash"):
            per = {}
            for i, (qs, ks, vs) in enumerate(seqs):
                timed_dense(per, str(i), dense_chunk(qs, ks, vs, backend))
            if all(f"{i}_ms" in per for i in range(len(seqs))):
                row[f"dense_{backend}_ms"] = [per[f"{i}_ms"] for i in range(len(seqs))]
                row[f"dense_{backend}_sum_ms"] = sum(row[f"dense_{backend}_ms"])
            else:
                row[f"dense_{backend}_error"] = next(v for key, v in per.items() if key.endswith("error"))
        try:
            timed_dense(row, "torch_flash_varlen", torch_varlen(q, k, v, cu_gpu, cu_gpu, n_max, n_max))
        except ImportError as exc:
            row["torch_flash_varlen_error"] = str(exc)
    row["varlen_vs_single_sum"] = row["varlen_ms"] / row["single_sum_ms"]
    for key in ("dense_cudnn_sum_ms", "dense_flash_sum_ms", "torch_flash_varlen_ms"):
        if key in row:
            row["speedup_vs_" + key[:-3]] = row[key] / row["varlen_ms"]
    res.setdefault("packed", []).append(rounded(row))
    print(json.dumps(rounded(row)), flush=True)


def part_chunked(res, n, chunk, heads, kv_heads, sizes_at=32768, sizes=(512, 1024, 2048, 4096, 8192)):
    q, k, v = make_qkv("mixed", seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=7)
    rows = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            qc, kc, vc = q[:, :, start:end], k[:, :, :end], v[:, :, :end]
            row = dict(prefix=start, chunk=end - start)
            row["pbs_ms"] = median_ms(lambda: pbs_attention(qc, kc, vc, **DEFAULT))
            out, blocks = pbs_attention(qc, kc, vc, return_blocks=True, **DEFAULT)
            row["density"] = blocks.density()
            for backend in ("cudnn", "flash"):
                timed_dense(row, f"dense_{backend}", dense_chunk(qc, kc, vc, backend))
            flash = dense_chunk(qc, kc, vc, "flash")()
            row["rel_l2"] = rel_l2(out, flash)
            if start:
                split = cudnn_split_chunk(qc, kc, vc)
                try:
                    row["dense_cudnn_split_rel_l2_vs_flash"] = rel_l2(split(), flash)
                    timed_dense(row, "dense_cudnn_split", split)
                except RuntimeError as exc:
                    row["dense_cudnn_split_error"] = str(exc).split("\n")[0][:160]
            rows.append(rounded(row))
            print(json.dumps(rows[-1]), flush=True)
        summary = dict(n=n, chunk=chunk, heads=heads, kv_heads=kv_heads, pbs_ms=sum(r["pbs_ms"] for r in rows))
        for r in rows:  # the first chunk has no prefix: plain causal cuDNN is the split's value there
            if not r["prefix"] and "dense_cudnn_ms" in r:
                r["dense_cudnn_split_ms"] = r["dense_cudnn_ms"]
        for backend in ("cudnn", "cudnn_split", "flash"):
            if all(f"dense_{backend}_ms" in r for r in rows):
                summary[f"dense_{backend}_ms"] = sum(r[f"dense_{backend}_ms"] for r in rows)
                summary[f"speedup_vs_{backend}"] = summary[f"dense_{backend}_ms"] / summary["pbs_ms"]
        sizes_rows = []
        for size in sizes:  # the last chunk of a `sizes_at` prompt
            qc, kc, vc = q[:, :, sizes_at - size:sizes_at], k[:, :, :sizes_at], v[:, :, :sizes_at]
            row = dict(prefix=sizes_at - size, chunk=size,
                       pbs_ms=median_ms(lambda: pbs_attention(qc, kc, vc, **DEFAULT)))
            for backend in ("cudnn", "flash"):
                timed_dense(row, f"dense_{backend}", dense_chunk(qc, kc, vc, backend))
            timed_dense(row, "dense_cudnn_split", cudnn_split_chunk(qc, kc, vc))
            sizes_rows.append(rounded(row))
            print(json.dumps(sizes_rows[-1]), flush=True)
    res["chunked"] = dict(summary=rounded(summary), chunks=rows, last_chunk_sizes=sizes_rows)
    print(json.dumps(res["chunked"]["summary"]), flush=True)


def part_shapes(res, n, shapes):
    from ..kernels import launch
    prof = load_profile()
    rows = []
    with torch.no_grad():
        for heads, kv_heads in shapes:
            q, k, v = make_qkv("mixed", seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=5)
            for name, qc in (("prompt", q), ("chunk", q[:, :, n // 2:])):  # a chunk: the second half
                before = launch.jit_calls
                reset_stats()
                out = tuned_attention(qc, k, v, profile=prof)
                row = dict(heads=heads, kv_heads=kv_heads, n=n, queries=qc.shape[2], what=name,
                           stats=stats(), jit_calls=launch.jit_calls - before,
                           rel_l2=rel_l2(out, dense_chunk(qc, k, v, "flash")()),
                           pbs_ms=median_ms(lambda: tuned_attention(qc, k, v, profile=prof)))
                for backend in ("cudnn", "flash"):
                    timed_dense(row, f"dense_{backend}", dense_chunk(qc, k, v, backend))
                if name == "chunk":
                    timed_dense(row, "dense_cudnn", cudnn_split_chunk(qc, k, v))
                if "dense_cudnn_ms" in row:
                    row["speedup_vs_cudnn"] = row["dense_cudnn_ms"] / row["pbs_ms"]
                rows.append(rounded(row))
                print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()
    res["shapes"] = rows


def part_fixture(res, model_dir, lengths, chunk):

    from ..models.fixtures import load_model
    from ..profile import profiles
    model, _ = load_model(model_dir)
    gen = torch.Generator().manual_seed(3)
    n_max = max(lengths)
    ids = torch.randint(32, 127, (len(lengths), n_max), generator=gen).cuda()   # printable bytes
    mask = torch.zeros(len(lengths), n_max, dtype=torch.long, device="cuda")
    for b, n in enumerate(lengths):
        mask[b, n_max - n:] = 1                                                    # left padding
    prof = load_profile()
    exact = profiles.Profile(path="<threshold 1>", gpu=prof.gpu, entries=[
        dataclasses.replace(e, params=dataclasses.replace(e.params, threshold=1.0), dense_faster=False)
        for e in prof.entries])
    out = dict(model=model_dir, lengths=lengths, chunk=chunk, profile=prof.path)

    def greedy(**kw):
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, **kw)

    def chunked_prefill():
        return prefill(model, ids, mask, chunk)

    model.set_attn_implementation("sdpa")
    out["sdpa_prefill_ms"] = prefill_ms(model, ids, mask)
    out["sdpa_chunked_prefill_ms"] = prefill_ms(model, ids, mask, chunk)
    want_tokens, want_chunked = greedy(), chunked_prefill().float()
    apply(model, exact, min_chunk=chunk)
    reset_stats()
    out["tau1_same_tokens"] = bool(torch.equal(greedy(), want_tokens))
    out["tau1_stats"] = stats()
    got = chunked_prefill().float()
    out["tau1_chunked_logits_rel_diff"] = rel_l2(got, want_chunked)
    out["tau1_chunked_top1_equal"] = bool(torch.equal(got.argmax(-1), want_chunked.argmax(-1)))
    if hasattr(model.generation_config, "prefill_chunk_size"):
        out["tau1_generate_chunked_same_tokens"] = bool(torch.equal(greedy(prefill_chunk_size=chunk), want_tokens))
    apply(model, prof)  # what a user gets: chunks follow the profile's measured crossovers
    reset_stats()
    prefill(model, ids, mask)
    out["pbs_stats_one_prefill"] = stats()
    reset_stats()
    chunked_prefill()
    out["pbs_stats_one_chunked_prefill"] = stats()
    out["pbs_prefill_ms"] = prefill_ms(model, ids, mask)
    out["pbs_chunked_prefill_ms"] = prefill_ms(model, ids, mask, chunk)
    out["pbs_tokens_equal_dense"] = bool(torch.equal(greedy(), want_tokens))
    out["speedup_prefill"] = out["sdpa_prefill_ms"] / out["pbs_prefill_ms"]
    out["speedup_chunked_prefill"] = out["sdpa_chunked_prefill_ms"] / out["pbs_chunked_prefill_ms"]
    res["fixture"] = rounded(out)
    print(json.dumps(res["fixture"]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="packed,chunked,fixture", help="packed, chunked, shapes, fixture")
    ap.add_argument("--packed", default="16k,24k,48k,64k", help="prompt lengths of the packed batch")
    ap.add_argument("--chunked", default="128k:16k", help="prompt:chunk")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--shapes", default="32/8,28/4,64/8,8/8,8/1,4/1,7/1", help="heads/kv_heads for --parts shapes")
    ap.add_argument("--shapes-seqlen", default="32k")
    ap.add_argument("--fixture", default="fixtures/byte-llama")
    ap.add_argument("--fixture-lengths", default="20k,24k,28k,32k")
    ap.add_argument("--fixture-chunk", default="8k")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = dict(env=env_info(), args=vars(args))
    if "shapes" in args.parts:
        part_shapes(res, parse_length(args.shapes_seqlen),
                    [tuple(int(x) for x in s.split("/")) for s in args.shapes.split(",")])
        write_json(args.out, res)
    if "packed" in args.parts:
        part_packed(res, [parse_length(x) for x in args.packed.split(",")], args.heads, args.kv_heads)
        write_json(args.out, res)
    if "chunked" in args.parts:
        n, chunk = (parse_length(x) for x in args.chunked.split(":"))
        part_chunked(res, n, chunk, args.heads, args.kv_heads)
        write_json(args.out, res)
    if "fixture" in args.parts:
        part_fixture(res, args.fixture, [parse_length(x) for x in args.fixture_lengths.split(",")],
                     parse_length(args.fixture_chunk))
        write_json(args.out, res)


if __name__ == "__main__":
    main()
