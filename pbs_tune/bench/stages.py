"""GPU benchmark: where the op's time goes at short and medium lengths, stage by stage.

For each shape and length (mixed workload, paper default: block 128, segment 256, threshold 0.9,
this GPU's default launch): the key scores (two kernels and the torch combine between them),
the segment sort and K/V gather that finish the permutation, the pooled block logits, the
selection kernel, the attend kernel, the whole op as one call (what a model pays, launches
included) and SDPA cuDNN / flash; and the whole op replayed from a CUDA graph (launch overhead
gone) to show what launches cost.
"""
import argparse
import json
import math

import torch

from ..profile.target import Target
from ..profile.launch import default_launch
from ..op.pbs_attention import attend_blocks, pbs_attention
from ..op.permutation import last_block_key_scores, permute_keys
from ..op.selection import block_means, select_blocks
from ..seqlen import parse_length
from ..measure.workloads import make_qkv
from ..measure.timing import dense_baselines, env_info, median_ms, rounded, write_json

BLOCK, SEGMENT, THRESHOLD = 128, 256, 0.9


def graph_of(fn):
    """fn captured in a CUDA graph (after a warm-up on a side stream), or None if it cannot be."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph
    except RuntimeError as exc:
        print("no CUDA graph:", str(exc).splitlines()[0], flush=True)
        return None


def stage_row(n, heads, kv_heads):
    q, k, v = make_qkv("mixed", seqlen=n, heads=heads, kv_heads=kv_heads, device="cuda", seed=0)
    scale = 1 / math.sqrt(q.shape[-1])
    launch = default_launch(BLOCK, q.shape[-1], Target.present().capability)
    args = dict(block_size=BLOCK, segment_size=SEGMENT)
    row = dict(n=n, heads=heads, kv_heads=kv_heads, launch=launch.label(), **args, threshold=THRESHOLD)
    with torch.no_grad():
        row["key_scores_ms"] = median_ms(lambda: last_block_key_scores(q, k, block_size=BLOCK, scale=scale))
        row["permute_ms"] = median_ms(lambda: permute_keys(q, k, v, scale=scale, **args))
        row["sort_gather_ms"] = row["permute_ms"] - row["key_scores_ms"]
        perm = permute_keys(q, k, v, scale=scale, **args)
        nb = -(-n // BLOCK)
        row["block_logits_ms"] = median_ms(lambda: torch.matmul(
            block_means(q, BLOCK).view(1, kv_heads, (heads // kv_heads) * nb, -1),
            block_means(perm.k, BLOCK).transpose(-1, -2)))
        row["select_ms"] = median_ms(lambda: select_blocks(q, perm.k, perm.positions, threshold=THRESHOLD,
                                                           scale=scale, **args))
        blocks = select_blocks(q, perm.k, perm.positions, threshold=THRESHOLD, scale=scale, **args)
        row["select_kernel_ms"] = row["select_ms"] - row["block_logits_ms"]
        row["attend_ms"] = median_ms(lambda: attend_blocks(q, perm, blocks, launch=launch, scale=scale))
        row["density"] = blocks.density()
        row["stages_sum_ms"] = row["permute_ms"] + row["select_ms"] + row["attend_ms"]

        def op():
            return pbs_attention(q, k, v, threshold=THRESHOLD, launch=launch, **args)
        row["op_ms"] = median_ms(op)
        graph = graph_of(op)
        if graph is not None:
            row["op_graph_ms"] = median_ms(graph.replay)
        row.update(dense_baselines(q, k, v, on_gpu=True))
        row["fixed_share"] = 1 - row["attend_ms"] / row["op_ms"]
        row["speedup_vs_cudnn"] = row["cudnn_ms"] / row["op_ms"]
        if "op_graph_ms" in row:
            row["graph_speedup_vs_cudnn"] = row["cudnn_ms"] / row["op_graph_ms"]
    return rounded(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="4k,8k,16k,32k")
    ap.add_argument("--shapes", default="32/8,8/2", help="heads/kv_heads, head_dim 128")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = dict(env=env_info(), args=vars(args), rows=[])
    for shape in args.shapes.split(","):
        heads, kv_heads = (int(x) for x in shape.split("/"))
        for n in (parse_length(x) for x in args.lengths.split(",")):
            res["rows"].append(stage_row(n, heads, kv_heads))
            print(json.dumps(res["rows"][-1]), flush=True)
            write_json(args.out, res)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
