"""GPU benchmark of chunked prefill with a prefix state (op/prefix.py), and the per-entry crossover
the loader follows (profiles.ProfileEntry.min_chunk).

Parts (--parts):
  families   per workload family (held-out seeds), the chunk after a 127k prefix at 2k, 4k and 8k
             queries: PBS with the prefix state, PBS re-permuting the whole prefix (no state), and
             dense chunked attention (cuDNN on the prefix plus cuDNN on the diagonal, merged by
             log-sum-exp; flash with the lower-right mask); errors against dense, beside the same
             rows of whole-prompt PBS.
  prompt     a 128k mixed prompt prefilled chunk by chunk: every chunk timed, summed, the same.
  crossover  per entry of this GPU's profile: prefixes of half and all of its length, chunks of
             512 to 8k queries, what the loader runs (a CUDA graph where it would use one, else the
             chunk with its state) against the best dense chunk; `--update` writes each entry's
             `min_chunk` (the fewest queries from which PBS won at every larger size measured).
Every PBS run uses the paper default (block 128, segment 256, threshold 0.9) with this GPU's default
launch, except the crossover, which runs each entry's own config.
"""
import argparse
import dataclasses
import json

import torch

from ..dtypes import torch_dtype
from ..kernels import launch as kernel_launch
from ..measure.metrics import rel_l2
from ..measure.timing import env_info, median_ms, rounded, write_json
from ..measure.workloads import FAMILIES, make_qkv
from ..op.pbs_attention import attend_blocks, pbs_attention, permute_and_select
from ..op.permutation import KeyPermutation
from ..op.prefix import PrefixState, extend, pbs_attention_chunk, select
from ..profile import profiles
from ..profile.params import PbsParams
from ..runtime.graphs import GraphCache
from ..runtime.loader import load_profile
from ..seqlen import parse_length
from .traffic import cudnn_split_chunk, dense_chunk, timed_dense

DEFAULT = PbsParams(128, 256, 0.9)
SIZES = (512, 1024, 2048, 4096, 8192)


def state_at(q, k, v, params, prefix, chunk, launch=None, keep_keys=False):
    """A prefix state built the way serving builds it: the prefix in `chunk`-query pieces."""
    state = PrefixState(keep_keys=keep_keys)
    with torch.no_grad():
        for start in range(0, prefix, chunk):
            end = min(prefix, start + chunk)
            pbs_attention_chunk(q[:, :, start:end], k[:, :, :end], v[:, :, :end], params, state=state, launch=launch)
    return state


def rewinder(state):
    """A call that puts `state` back where it is now: a timed chunk then repeats the same chunk (it
    rewrites only the slots after `done`)."""
    length, done = state.length, state.done

    def rewind():
        state.length, state.done = length, done
    return rewind


def chunk_call(q, k, v, params, state, launch=None):
    """One chunk against `state`, rewound before every call."""
    rewind = rewinder(state)

    def call():
        rewind()
        with torch.no_grad():
            return pbs_attention_chunk(q, k, v, params, state=state, launch=launch)[0]
    return call


def dense_times(row, q, k, v):
    """The dense chunk's times on cuDNN (the split; plain causal without a prefix) and flash; the best."""
    square = q.shape[2] == k.shape[2]
    timed_dense(row, "dense_cudnn_split", dense_chunk(q, k, v, "cudnn") if square else cudnn_split_chunk(q, k, v))
    timed_dense(row, "dense_flash", dense_chunk(q, k, v, "flash"))
    best = min(row.get(f"dense_{b}_ms", float("inf")) for b in ("cudnn_split", "flash"))
    return best


def chunk_row(q, k, v, prefix, size, state, whole=None):
    """The chunk [prefix, prefix + size): state, no state and dense, times and errors."""
    qc, kc, vc = q[:, :, prefix:prefix + size], k[:, :, :prefix + size], v[:, :, :prefix + size]
    row = dict(prefix=prefix, chunk=size)
    call = chunk_call(qc, kc, vc, DEFAULT, state)
    jit = kernel_launch.jit_calls
    out = call()
    with torch.no_grad():
        row["state_ms"] = median_ms(call)
        row["no_state_ms"] = median_ms(lambda: pbs_attention(qc, kc, vc, DEFAULT))
        stateless = pbs_attention(qc, kc, vc, DEFAULT)
    row["jit_calls"] = kernel_launch.jit_calls - jit
    dense_times(row, qc, kc, vc)
    ref = dense_chunk(qc, kc, vc, "flash")()
    row.update(rel_l2_state=rel_l2(out, ref), rel_l2_no_state=rel_l2(stateless, ref))
    if whole is not None:
        row["rel_l2_whole_prompt"] = rel_l2(whole[:, :, prefix:prefix + size], ref)
        row["error_vs_whole_prompt"] = row["rel_l2_state"] / max(row["rel_l2_whole_prompt"], 1e-9)
        group = q.shape[1] // k.shape[1]  # per KV head (the mixed workload gives each KV head one family)
        heads = [slice(g * group, (g + 1) * group) for g in range(k.shape[1])]
        row["rel_l2_state_per_kv_head"] = [round(rel_l2(out[:, h], ref[:, h]), 4) for h in heads]
        row["rel_l2_whole_per_kv_head"] = [round(rel_l2(whole[:, h, prefix:prefix + size], ref[:, h]), 4)
                                           for h in heads]
    for name in ("cudnn_split", "flash"):
        if f"dense_{name}_ms" in row:
            row[f"speedup_vs_{name}"] = row[f"dense_{name}_ms"] / row["state_ms"]
            row[f"no_state_speedup_vs_{name}"] = row[f"dense_{name}_ms"] / row["no_state_ms"]
    row["state_mib"] = state.nbytes() / 2 ** 20
    return rounded(row)


def stage_times(q, k, v, state):
    """Where a chunk's time goes: extending the state (score, permute and pool the new keys; gather
    the prefix), selection over the whole prefix, attention; and the stateless op's first two stages."""
    rewind, scale = rewinder(state), q.shape[-1] ** -0.5

    def grow():
        rewind()
        return extend(state, q, k, v, DEFAULT, scale)

    def choose():
        return select(state, q, k, k_perm, pos, DEFAULT, scale, key_mass)
    with torch.no_grad():
        k_perm, v_perm, pos, key_mass = grow()
        blocks = choose()
        row = dict(extend_ms=median_ms(grow), select_ms=median_ms(choose),
                   attend_ms=median_ms(lambda: attend_blocks(q, KeyPermutation(k_perm, v_perm, pos), blocks)),
                   no_state_plan_ms=median_ms(lambda: permute_and_select(q, k, v, DEFAULT)), density=blocks.density())
    return rounded(row)


def part_families(res, prefix, sizes, heads, kv_heads, families, breakdown=False):
    for fam in families:
        n = prefix + max(sizes)
        q, k, v = make_qkv(fam, seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=1000 + len(fam))
        with torch.no_grad():
            whole = pbs_attention(q, k, v, DEFAULT)  # whole-prompt PBS (rows of the largest prompt)
        for size in sizes:
            with torch.no_grad():
                whole_n = whole if prefix + size == n else pbs_attention(
                    q[:, :, :prefix + size], k[:, :, :prefix + size], v[:, :, :prefix + size], DEFAULT)
            row = dict(family=fam, **chunk_row(q, k, v, prefix, size, state_at(q, k, v, DEFAULT, prefix, size),
                                               whole_n))
            if breakdown:  # the held keys' variant, and the stages
                qc, kc, vc = q[:, :, prefix:prefix + size], k[:, :, :prefix + size], v[:, :, :prefix + size]
                held = state_at(q, k, v, DEFAULT, prefix, size, keep_keys=True)
                row["keep_keys_ms"] = round(median_ms(chunk_call(qc, kc, vc, DEFAULT, held)), 4)
                row["keep_keys_speedup_vs_cudnn_split"] = round(row["dense_cudnn_split_ms"] / row["keep_keys_ms"], 4)
                row.update(stage_times(qc, kc, vc, state_at(q, k, v, DEFAULT, prefix, size)))
                del held
            res.setdefault("families", []).append(row)
            print(json.dumps(row), flush=True)
        del q, k, v, whole
        torch.cuda.empty_cache()


def part_prompt(res, n, sizes, heads, kv_heads):
    q, k, v = make_qkv("mixed", seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=2024)
    with torch.no_grad():
        whole = pbs_attention(q, k, v, DEFAULT)
    for size in sizes:
        state, rows = PrefixState(), []
        for start in range(0, n, size):  # each chunk_row leaves the state extended by its chunk
            rows.append(chunk_row(q, k, v, start, min(size, n - start), state, whole))
        total = dict(n=n, chunk=size, chunks=len(rows))
        total["worst_error_vs_whole_prompt"] = max(r["error_vs_whole_prompt"] for r in rows)
        for key in ("state_ms", "no_state_ms", "dense_cudnn_split_ms", "dense_flash_ms"):
            if all(key in r for r in rows):
                total[key] = sum(r[key] for r in rows)
        for name in ("cudnn_split", "flash"):
            if f"dense_{name}_ms" in total:
                total[f"speedup_vs_{name}"] = total[f"dense_{name}_ms"] / total["state_ms"]
                total[f"no_state_speedup_vs_{name}"] = total[f"dense_{name}_ms"] / total["no_state_ms"]
        res.setdefault("prompt", []).append(dict(summary=rounded(total), chunks=rows))
        print(json.dumps(rounded(total)), flush=True)


def part_crossover(res, prof, update):
    updated = []
    for e in prof.for_gpu(prof.gpu):
        if e.layers:
            continue
        found = {}
        for prefix in sorted({e.seqlen // 2, e.seqlen}):
            q, k, v = make_qkv("mixed", seqlen=prefix + max(SIZES), heads=e.heads, kv_heads=e.kv_heads,
                               head_dim=e.head_dim, dtype=torch_dtype(e.dtype), device="cuda", seed=77)
            wins = []
            for size in SIZES:
                qc, kc, vc = q[:, :, prefix:prefix + size], k[:, :, :prefix + size], v[:, :, :prefix + size]
                row = dict(seqlen=e.seqlen, shape=f"{e.heads}/{e.kv_heads}/{e.head_dim}", prefix=prefix, chunk=size)
                if GraphCache().usable(qc, kc):  # the loader replays a graph of the stateless op here
                    graphs = GraphCache(max_work=1 << 62)
                    row["graph_ms"] = row["loader_ms"] = median_ms(
                        lambda: graphs.run(qc, kc, vc, e.params, e.launch, None))
                else:
                    state = state_at(q, k, v, e.params, prefix, size, e.launch)
                    row["loader_ms"] = median_ms(chunk_call(qc, kc, vc, e.params, state, e.launch))
                row["dense_ms"] = dense_times(row, qc, kc, vc)
                row["pbs_faster"] = row["loader_ms"] < row["dense_ms"]
                wins.append(row["pbs_faster"])
                res.setdefault("crossover", []).append(rounded(row))
                print(json.dumps(rounded(row)), flush=True)
            # the fewest queries from which PBS won at every larger size measured (None: it never did)
            found[prefix] = next((s for i, s in enumerate(SIZES) if all(wins[i:])), None)
            del q, k, v
            torch.cuda.empty_cache()
        updated.append(dataclasses.replace(e, min_chunk=found))
        print(json.dumps(dict(entry=e.describe(), min_chunk=found)), flush=True)
    if update and updated:
        profiles.merge_entries(prof.path, updated)
        print(f"updated min_chunk of {len(updated)} entries in {prof.path}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="families,prompt,crossover")
    ap.add_argument("--prefix", default="127k", help="prefix of the families' chunk")
    ap.add_argument("--sizes", default="2k,4k,8k", help="chunk sizes of the families and the prompt")
    ap.add_argument("--prompt", default="128k")
    ap.add_argument("--families", default=",".join(list(FAMILIES) + ["mixed"]))
    ap.add_argument("--breakdown", action="store_true", help="families: also held keys and the stages' times")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--profile", default=None, help="profile for the crossover (default: this GPU's)")
    ap.add_argument("--update", action="store_true", help="write min_chunk into the profile")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sizes = [parse_length(s) for s in args.sizes.split(",")]
    res = dict(env=env_info(), args=vars(args), params=DEFAULT.as_dict())
    if "families" in args.parts:
        part_families(res, parse_length(args.prefix), sizes, args.heads, args.kv_heads, args.families.split(","),
                      args.breakdown)
        write_json(args.out, res)
    if "prompt" in args.parts:
        part_prompt(res, parse_length(args.prompt), sizes, args.heads, args.kv_heads)
        write_json(args.out, res)
    if "crossover" in args.parts:
        prof = load_profile(path=args.profile)
        res["profile"] = prof.path
        part_crossover(res, prof, args.update)
        write_json(args.out, res)


if __name__ == "__main__":
    main()
