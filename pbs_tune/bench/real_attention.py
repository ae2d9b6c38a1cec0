"""PBS on real, trained attention: `python -m pbs_tune.bench.real_attention` (GPU).

The model is the packaged SmolLM2-135M (`--model smollm2`, models/fixtures.py) or the byte-level
long-context fixture trained here (`--model fixtures/byte-llama`, models/byte_llama.py); the texts
are Python sources of installed packages in the *evaluation* split, which no calibration uses. Variants: dense SDPA,
PBS at the paper default (threshold 0.9, segment 256, block 128 and 64), and unpermuted
selection at block 128. Parts:
  loss       LM loss (nats/token) per sequence; the paired difference to dense with a 95%
             confidence interval (normal approximation) over --sequences sequences.
  retrieval  SmolLM2: a passkey ('The secret key is 12345.') hidden at five depths in code,
             asked for at the end; the fixture: four key-value needles ('# name = 12345'), the
             asked one at five depths, three distractors; greedy answer checked, --prompts
             prompts per variant.
  layers     Q/K/V of every layer recorded on a few sequences; per layer and head: kept density,
             output rel-L2 against fp32 dense attention and recall (softmax mass kept), permuted
             and unpermuted.
  prefill    whole-model prefill time at each --prefill-lengths: SDPA cuDNN, SDPA flash, PBS.
"""
import argparse
import json
import statistics

import torch

from ..profile.launch import default_launch
from ..op.pbs_attention import attend_blocks, permute_and_select
from ..seqlen import parse_length
from ..tune.capture import recording_attention
from ..models.fixtures import head_dim_of, load_model, python_sources, token_sequences
from ..measure.metrics import dense_lse, dense_reference, mean_ci95, rel_l2
from ..tune.model_plan import model_entry, use_entry
from ..models.retrieval import retrieval_answers, retrieval_prompts
from ..measure.prefill import dense_prefill_ms, prefill_ms
from ..measure.timing import env_info, write_json
from ..runtime.state import reset_stats, stats

VARIANTS = {  # name -> (block, segment, threshold, permute); None is dense SDPA
    "dense": None,
    "pbs_b128": (128, 256, 0.9, True),
    "unpermuted_b128": (128, 256, 0.9, False),
    "pbs_b64": (64, 256, 0.9, True),
}


def _use(model, variant, min_len=1024):
    """Run `model` with `variant` on every prompt of at least `min_len` tokens."""
    if VARIANTS[variant] is None:
        return use_entry(model, None)
    bs, seg, thr, permute = VARIANTS[variant]
    use_entry(model, model_entry(model, seqlen=min_len, block_size=bs, segment_size=seg, threshold=thr,
                                 launch=default_launch(bs, head_dim_of(model.config)), permute=permute))


def part_loss(res, model, seqs, variants):
    losses = {}
    for variant in variants:
        _use(model, variant)
        reset_stats()
        with torch.no_grad():
            losses[variant] = [float(model(s[None].cuda(), labels=s[None].cuda()).loss) for s in seqs]
        print(variant, statistics.fmean(losses[variant]), stats(), flush=True)
    out = dict(sequences=len(seqs), tokens=len(seqs[0]), mean={v: statistics.fmean(x) for v, x in losses.items()})
    for variant in variants:
        if variant != "dense":
            rel = [(a - b) / b for a, b in zip(losses[variant], losses["dense"])]
            out[f"{variant}_minus_dense"] = mean_ci95([a - b for a, b in zip(losses[variant], losses["dense"])])
            out[f"{variant}_relative"] = mean_ci95(rel)
    out["per_sequence"] = losses
    res["loss"] = out


def part_retrieval(res, model, tokenizer, haystack_ids, n, length):
    prompts = retrieval_prompts(tokenizer, haystack_ids, n, length)
    out = {}
    for variant in ("dense", "pbs_b128", "unpermuted_b128"):
        _use(model, variant)
        reset_stats()
        hits = {}
        for (_, _, depth), hit in zip(prompts, retrieval_answers(model, tokenizer, prompts)):
            hits.setdefault(depth, []).append(hit)
        out[variant] = dict(correct=sum(sum(h) for h in hits.values()), prompts=len(prompts),
                            by_depth={str(d): sum(h) / len(h) for d, h in sorted(hits.items())},
                            stats=stats())
        print(variant, out[variant]["correct"], "/", len(prompts), out[variant]["by_depth"], flush=True)
    res["retrieval"] = dict(prompt_tokens=length, **out)


def _per_head(x):
    return x.flatten(2).double()  # (B, H, N*D)


def _head_stats(q, k, v, params, permute, dense_out, dense_lse):
    bs, seg, thr = params
    perm, blocks = permute_and_select(q, k, v, block_size=bs, segment_size=seg, threshold=thr, permute=permute)
    out, lse = attend_blocks(q, perm, blocks, launch=default_launch(bs, q.shape[-1]), return_lse=True)
    err = ((_per_head(out) - _per_head(dense_out)).norm(dim=-1) / _per_head(dense_out).norm(dim=-1)).mean(0)
    recall = torch.exp((lse - dense_lse).clamp(max=0)).mean(dim=(0, 2))
    kept = blocks.count.double().sum(dim=(0, 2))
    return dict(rel_l2=err.tolist(), recall=recall.tolist(), kept_blocks=kept.tolist(),
                density=blocks.density(),
                layer_rel_l2=rel_l2(out, dense_out))


def part_layers(res, model, seqs):
    layers = range(model.config.num_hidden_layers)
    rows = []
    for s in seqs:
        with recording_attention(model, set(layers)) as seen, torch.no_grad():
            model(s[None].cuda(), logits_to_keep=1)
        for idx in layers:
            q, k, v = (t.contiguous() for t in seen[idx])
            dense_out = dense_reference(q, k, v)
            lse = dense_lse(q, k, v)
            row = dict(layer=idx)
            for name, permute in (("permuted", True), ("unpermuted", False)):
                row[name] = _head_stats(q, k, v, (128, 256, 0.9), permute, dense_out, lse)
            rows.append(row)
        del seen
        torch.cuda.empty_cache()
    summary = []
    for idx in layers:
        mine = [r for r in rows if r["layer"] == idx]
        summary.append(dict(layer=idx, **{f"{name}_{key}": statistics.fmean(r[name][key] for r in mine)
                                          for name in ("permuted", "unpermuted")
                                          for key in ("density", "layer_rel_l2")}))
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary[-1].items()}), flush=True)
    res["layers"] = dict(sequences=len(seqs), params="block 128, segment 256, threshold 0.9", summary=summary,
                         per_sequence=rows)


def part_prefill(res, model, tokens, lengths, variants):
    res["prefill"] = [_prefill(model, torch.tensor(tokens[:n]), variants) for n in lengths]


def _prefill(model, seq, variants):
    ids = seq[None].cuda()
    out = {f"sdpa_{k}": v for k, v in dense_prefill_ms(model, ids).items()}
    for variant in variants:
        if variant == "dense":
            continue
        _use(model, variant)
        reset_stats()
        out[f"{variant}_ms"] = prefill_ms(model, ids)
        out[f"{variant}_stats"] = stats()
    row = dict(tokens=len(seq), **out)
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="loss,retrieval,layers,prefill")
    ap.add_argument("--model", default="smollm2", help="'smollm2' or a local model folder (the fixture)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    ap.add_argument("--prefill-lengths", default="", help="lengths to time whole-model prefill (default: --seqlen)")
    ap.add_argument("--seqlen", type=parse_length, default=8192)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--layer-sequences", type=int, default=2)
    ap.add_argument("--out", default="real_attention.json")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "dense" not in variants:
        ap.error(f"--variants must include dense and name only {', '.join(VARIANTS)}; got {args.variants}")
    prefill_lengths = [parse_length(x) for x in args.prefill_lengths.split(",") if x] or [args.seqlen]
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, dtype="bfloat16", device="cuda")
    files = python_sources("evaluation")
    seqs = token_sequences(tokenizer, files, args.seqlen, args.sequences + 8)
    res = dict(env=env_info(), args=vars(args), model=dict(name=args.model, layers=model.config.num_hidden_layers,
               heads=model.config.num_attention_heads, kv_heads=model.config.num_key_value_heads,
               head_dim=head_dim_of(model.config)), texts=dict(split="evaluation", files=len(files),
                                                            first=files[:3], last=files[-3:]))
    try:
        if "loss" in args.parts:
            part_loss(res, model, seqs[:args.sequences], variants)
        if "retrieval" in args.parts:
            haystack = [int(t) for s in seqs[args.sequences:] for t in s]
            part_retrieval(res, model, tokenizer, haystack, args.prompts, args.seqlen - 512)
        if "layers" in args.parts:
            part_layers(res, model, seqs[:args.layer_sequences])
        if "prefill" in args.parts:
            tokens = [int(t) for s in seqs for t in s]
            if max(prefill_lengths) > len(tokens):
                raise SystemExit(f"--prefill-lengths up to {max(prefill_lengths)} needs more text than "
                                 f"{len(tokens)} tokens; raise --sequences")
            part_prefill(res, model, tokens, prefill_lengths, variants)
    finally:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
