"""Per-head thresholds (tune/allocate.py) against the paper default: `python -m pbs_tune.bench.per_head`.

Calibrate on one sample, report on another. Parts:
  model    (--model smollm2 or the fixture folder, at --seqlen) per layer, permutation on/off
           and per-head thresholds (tune/allocate.py) on 2 calibration-split sequences: the
           layer's output error at most --margin x that of threshold 0.9 there, and no head
           keeping fewer sampled queries' heaviest keys; then a retrieval probe (40 needle
           prompts on calibration-split text): while the plans answer fewer than the default,
           the margin shrinks (0.8, 0.6, ... 0). Then on the evaluation split: LM loss
           (dense, default, per-head), retrieval, per-layer kept density and error of both,
           and the op time summed over layers and whole-model prefill time, default vs per-head.
  mixed    the synthetic mixed workload (32/8 heads, D 128): calibrated on --calib-samples
           samples of seed 0 (the bound validated leaving each out), reported on seed 1 and on
           seed 1 of every other family (--families: data of a kind never calibrated on) at
           --lengths: error, kept blocks and op latency of the default and per-head.
"""
import argparse
import json
import statistics

import torch

from ..profile.target import Target
from ..profile.launch import default_launch
from ..op.pbs_attention import pbs_attention
from ..profile.params import ESTIMATORS
from ..profile import profiles
from ..seqlen import parse_length
from ..tune.allocate import (GRID, REFERENCE_VARIANT, VARIANTS, Variant, layer_curves, plan_layer, uniform_error,
                             variants_of)
from ..models.fixtures import head_dim_of, load_model, python_sources, token_sequences
from ..measure.metrics import dense_reference, mean_ci95, rel_l2
from ..measure.prefill import dense, prefill_ms
from ..measure.workloads import make_qkv
from ..tune.model_plan import model_entry, plan_model, record_layers, use_entry
from ..models.retrieval import retrieval_hits, retrieval_prompts
from ..measure.timing import env_info, median_ms, write_json
from ..runtime.state import stats

BLOCK, SEGMENT, DEFAULT = 128, 256, 0.9
PROBE_TEXTS, PROBE_PROMPTS = 4, 40


def _default(model, lc):
    return model_entry(model, seqlen=1024, block_size=BLOCK, segment_size=SEGMENT, threshold=DEFAULT, launch=lc)


def part_model(res, model_name, seqlen, margin, n_seqs, n_prompts, n_probe=PROBE_PROMPTS, estimators=ESTIMATORS):
    model, tok = load_model(model_name, dtype="bfloat16", device="cuda")
    calib = token_sequences(tok, python_sources("calibration"), seqlen, 2 + PROBE_TEXTS)
    lc = default_launch(BLOCK, head_dim_of(model.config), Target.present().capability)  # what the untuned op runs
    planned, report = plan_model(model, tok, calib[:2], calib[2:], margin=margin, reference=DEFAULT, probes=n_probe,
                                 block_size=BLOCK, segment_size=SEGMENT, launch=lc, min_len=1024,
                                 estimators=estimators)
    alloc, probe, layers = report["allocation"], report["probe"], planned.layers
    variants = {"dense": None, "default": _default(model, lc), "per_head": planned}
    evals = token_sequences(tok, python_sources("evaluation"), seqlen, n_seqs + 8)
    losses = {}
    for name, entry in variants.items():
        use_entry(model, entry)
        with torch.no_grad():
            losses[name] = [float(model(s[None].cuda(), labels=s[None].cuda()).loss) for s in evals[:n_seqs]]
        print(name, statistics.fmean(losses[name]), flush=True)
    loss = dict(mean={k: statistics.fmean(v) for k, v in losses.items()})
    for name in ("default", "per_head"):
        loss[f"{name}_relative"] = mean_ci95([(a - b) / b for a, b in zip(losses[name], losses["dense"])])
    loss["per_head_minus_default"] = mean_ci95([a - b for a, b in zip(losses["per_head"], losses["default"])])
    haystack = [int(t) for s in evals[n_seqs:] for t in s]
    prompts = retrieval_prompts(tok, haystack, n_prompts, seqlen)  # at the entries' length: PBS runs
    retrieval = {}
    for name in ("dense", "default", "per_head"):
        use_entry(model, variants[name])
        retrieval[name] = retrieval_hits(model, tok, prompts)
        print(name, "retrieval", retrieval[name], "/", len(prompts), flush=True)
    per_layer = []  # the same measures on unseen text
    for a, (idx, (q, k, v)) in zip(alloc, sorted(record_layers(model, evals[:2]).items())):
        chosen = Variant(a["permute"], a["estimator"])
        curves = layer_curves(q, k, v, block_size=BLOCK, segment_size=SEGMENT, launch=lc, variants=(chosen,))
        ref, mine = curves[REFERENCE_VARIANT], curves[chosen]
        d = GRID.index(DEFAULT)
        index = torch.tensor([GRID.index(t) for t in a["thresholds"]])
        rows = torch.arange(len(index))
        per_layer.append(dict(layer=idx, eval_default_rel_l2=uniform_error(ref, DEFAULT),
                              eval_per_head_rel_l2=mine.rel_l2(index),
                              eval_kept_ratio=float(mine.kept[rows, index].sum() / ref.kept[:, d].sum()),
                              eval_default_top_key_hits=float(ref.top_hits[:, d].sum()),
                              eval_per_head_top_key_hits=float(mine.top_hits[rows, index].sum())))
        del q, k, v
    timing = _timing(model, evals[0], layers, variants)
    model.set_attn_implementation("sdpa")
    kept = [p["eval_kept_ratio"] for p in per_layer]
    res["model"] = dict(name=model_name, seqlen=seqlen, timing=timing, margin=margin, retrieval_probe=probe,
                        calibration_sequences=len(calib), evaluation_sequences=n_seqs, loss=loss,
                        retrieval=dict(prompts=len(prompts), **retrieval), allocation=alloc, held_out=per_layer,
                        mean_kept_ratio=statistics.fmean(kept),
                        layers_within_default_error=sum(p["eval_per_head_rel_l2"] <= p["eval_default_rel_l2"]
                                                        for p in per_layer),
                        stats=stats())
    print(json.dumps({k: v for k, v in res["model"].items() if k not in ("allocation", "held_out")}), flush=True)


def _timing(model, seq, layers, variants):
    """Op time summed over the layers (their Q/K/V recorded on `seq`) and whole-model prefill."""
    seen = record_layers(model, [seq])
    out = {}
    for name in ("default", "per_head"):
        total = 0.0
        for idx, (q, k, v) in sorted(seen.items()):
            params, lc = layers[idx] if name == "per_head" else (profiles.PbsParams(BLOCK, SEGMENT, DEFAULT),
                                                                 default_launch(BLOCK, q.shape[-1],
                                                                                Target.present().capability))
            total += median_ms(lambda: pbs_attention(q, k, v, params, launch=lc))
        out[f"{name}_op_ms_all_layers"] = total
        use_entry(model, variants[name])
        out[f"{name}_prefill_ms"] = prefill_ms(model, seq[None].cuda())
    with dense(model):
        out["dense_sdpa_prefill_ms"] = prefill_ms(model, seq[None].cuda())
    out["op_speedup_vs_default"] = out["default_op_ms_all_layers"] / out["per_head_op_ms_all_layers"]
    out["prefill_speedup_vs_default"] = out["default_prefill_ms"] / out["per_head_prefill_ms"]
    print(json.dumps(out), flush=True)
    return out


def _compare(q, k, v, plan, lc) -> dict:
    """Error, kept blocks and op time of the default and of `plan` on one input."""
    dense = dense_reference(q, k, v)
    row = {}
    for name, t, x in (("default", DEFAULT, REFERENCE_VARIANT), ("per_head", plan.thresholds, plan.variant)):
        args = dict(block_size=BLOCK, segment_size=SEGMENT, threshold=t, launch=lc, permute=x.permute,
                    estimator=x.estimator)
        with torch.no_grad():
            out, blocks = pbs_attention(q, k, v, return_blocks=True, **args)
            row[f"{name}_rel_l2"] = rel_l2(out, dense)
            row[f"{name}_kept_blocks"] = blocks.kept_blocks()
            row[f"{name}_ms"] = median_ms(lambda: pbs_attention(q, k, v, **args))
    row["speedup_vs_default"] = row["default_ms"] / row["per_head_ms"]
    row["error_not_larger"] = row["per_head_rel_l2"] <= row["default_rel_l2"]
    return row


def part_mixed(res, lengths, margin, samples=2, families=(), variants=VARIANTS):
    rows = []
    lc = default_launch(BLOCK, 128, Target.present().capability)
    for n in lengths:
        q, k, v = make_qkv("mixed", seqlen=n, batch=samples, heads=32, kv_heads=8, device="cuda", seed=0)
        plan = plan_layer(q, k, v, block_size=BLOCK, segment_size=SEGMENT, launch=lc, margin=margin, reference=DEFAULT,
                          variants=variants)
        del q, k, v
        torch.cuda.empty_cache()
        row = dict(n=n, calib_samples=samples, thresholds=list(plan.thresholds), permute=plan.permute,
                   estimator=plan.estimator, calib_kept_ratio=plan.kept_ratio, calib_margin_used=plan.margin,
                   calib_rel_l2=plan.rel_l2, calib_default_rel_l2=plan.reference_rel_l2, held_out={})
        for family in ("mixed",) + tuple(families):
            q, k, v = make_qkv(family, seqlen=n, heads=32, kv_heads=8, device="cuda", seed=1)
            row["held_out"][family] = _compare(q, k, v, plan, lc)
            print(n, family, json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                         for k, v in row["held_out"][family].items()}), flush=True)
            del q, k, v
            torch.cuda.empty_cache()
        rows.append(row)
    res["mixed"] = dict(margin=margin, calib_samples=samples, rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="mixed,model")
    ap.add_argument("--model", default="smollm2", help="'smollm2' or the fixture's folder")
    ap.add_argument("--seqlen", default="8k", help="sequence length for the model part")
    ap.add_argument("--margin", type=float, default=0.95, help="bound = margin x the default's error on calibration")
    ap.add_argument("--lengths", default="32k,128k")
    ap.add_argument("--calib-samples", type=int, default=2, help="mixed: calibration samples (batch of seed 0)")
    ap.add_argument("--families", default="stripes,retrieval,sink_local,diffuse",
                    help="mixed: other workload families the plan is also reported on (none: '')")
    ap.add_argument("--estimators", default="mean,lse", help="block estimators a layer's plan may use")
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--probe-prompts", type=int, default=PROBE_PROMPTS,
                    help="model: retrieval probes on calibration text that the plans must answer as the default does")
    ap.add_argument("--out", default="per_head.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    res = dict(env=env_info(), args=vars(args))
    try:
        if "mixed" in args.parts:
            part_mixed(res, [parse_length(x) for x in args.lengths.split(",")], args.margin, args.calib_samples,
                       tuple(f for f in args.families.split(",") if f), variants_of(args.estimators.split(",")))
        if "model" in args.parts:
            part_model(res, args.model, parse_length(args.seqlen), args.margin, args.sequences, args.prompts,
                       n_probe=args.probe_prompts, estimators=tuple(args.estimators.split(",")))
    finally:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
