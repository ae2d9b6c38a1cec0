"""GPU benchmark and profile update: where PBS starts to beat dense attention, with the loader's
CUDA graphs (runtime/graphs.py).

For every entry of this GPU's profile up to 16k tokens: the entry's config on the mixed workload
at its own shape and length, from a CUDA graph (with its input copies) and eagerly, and SDPA
cuDNN / flash in the same process. `--update` rewrites each entry's `dense_faster` from the time
of what the loader runs (the graph below runtime/graphs.py's work limit, else eager) against
cuDNN and records the figures under `crossover`. `--fixture DIR` adds the trained fixture's
whole-model prefill at `--fixture-seqlen`: SDPA against the profile applied, with and without graphs.
"""
import argparse
import dataclasses
import json

import torch

from ..dtypes import torch_dtype
from ..op.pbs_attention import pbs_attention
from ..profile import profiles
from ..runtime.graphs import GraphCache
from ..seqlen import parse_length
from ..measure.workloads import make_qkv
from ..measure.timing import dense_baselines, env_info, median_ms, rounded, write_json
from ..measure.prefill import dense, prefill, prefill_ms
from ..runtime.loader import load_profile
from ..runtime.state import reset_stats, stats
from ..runtime.transformers_attention import apply


def entry_row(e):
    q, k, v = make_qkv("mixed", seqlen=e.seqlen, heads=e.heads, kv_heads=e.kv_heads, head_dim=e.head_dim,
                       dtype=torch_dtype(e.dtype), device="cuda", seed=11)
    p, lc = e.params, e.launch
    graphs = GraphCache(max_work=1 << 62)  # measure the graph whatever the loader's limit
    with torch.no_grad():
        graph_ms = median_ms(lambda: graphs.run(q, k, v, p, lc, None))
        eager_ms = median_ms(lambda: pbs_attention(q, k, v, p, launch=lc))
    row = dict(seqlen=e.seqlen, shape=f"{e.heads}/{e.kv_heads}/{e.head_dim}", dtype=e.dtype, graph_ms=graph_ms,
               eager_ms=eager_ms, **dense_baselines(q, k, v, on_gpu=True), dense_faster_before=e.dense_faster)
    dense_ms = row.get("cudnn_ms", row.get("flash_ms"))
    row["loader_ms"] = graph_ms if GraphCache().usable(q, k) else eager_ms
    row["dense_faster"] = row["loader_ms"] > dense_ms
    row["loader_vs_dense"] = dense_ms / row["loader_ms"]
    return rounded(row)


def fixture_prefill(model_dir, seqlen, prof):

    from ..models.fixtures import load_model
    model, _ = load_model(model_dir)
    ids = torch.randint(32, 127, (1, seqlen), generator=torch.Generator().manual_seed(5)).cuda()

    with dense(model):
        out = dict(model=model_dir, seqlen=seqlen, sdpa_ms=prefill_ms(model, ids))
    for graphs in (True, False):
        apply(model, prof, cuda_graphs=graphs)
        reset_stats()
        prefill(model, ids)
        out[f"stats_graphs_{graphs}"] = stats()
        out[f"pbs_ms_graphs_{graphs}"] = prefill_ms(model, ids)
        model.set_attn_implementation("sdpa")
    out["speedup_graphs"] = out["sdpa_ms"] / out["pbs_ms_graphs_True"]
    return rounded(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="Profile YAML (default: this GPU's, looked up)")
    ap.add_argument("--update", action="store_true", help="Rewrite dense_faster in the profile from the graph times")
    ap.add_argument("--fixture", default=None)
    ap.add_argument("--fixture-seqlen", default="8k")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prof = load_profile(path=args.profile)
    res = dict(env=env_info(), args=vars(args), profile=prof.path, entries=[])
    updated = []
    for e in prof.for_gpu(prof.gpu):
        if e.seqlen > 16384 or e.layers:
            continue
        row = entry_row(e)
        res["entries"].append(row)
        print(json.dumps(row), flush=True)
        crossover = dict(loader_ms=row["loader_ms"], graph_ms=row["graph_ms"], eager_ms=row["eager_ms"],
                         cudnn_ms=row.get("cudnn_ms"), flash_ms=row.get("flash_ms"), date=res["env"]["date"])
        updated.append(dataclasses.replace(e, dense_faster=row["dense_faster"],
                                           provenance=dataclasses.replace(e.provenance, crossover=crossover)))
        write_json(args.out, res)
    if args.update and updated:
        profiles.merge_entries(prof.path, updated)
        print(f"updated dense_faster of {len(updated)} entries in {prof.path}", flush=True)
    if args.fixture:
        res["fixture"] = fixture_prefill(args.fixture, parse_length(args.fixture_seqlen),
                                         load_profile(path=prof.path))
        print(json.dumps(res["fixture"]), flush=True)
        write_json(args.out, res)


if __name__ == "__main__":
    main()
