"""A real pretrained model as the judge: `python -m pbs_tune.bench.judge` (GPU).

The model (default: the packaged Qwen2.5-Coder-0.5B-Instruct, 32k context) runs through `apply`
with each variant, at each --lengths, on text no variant was tuned on (Python sources of the
*evaluation* split; `plan` calibrates and probes on the *calibration* split):
  dense    transformers' SDPA
  default  PBS at the paper default (block 128, segment 256, threshold 0.9, mean estimator)
  shipped  the profile pbs-tune ships (or --shipped) for this GPU; the entry it picks is recorded
  plan     a `pbs-tune plan` profile for this model (--plan), one plan per layer
Parts:
  loss       LM loss (nats/token) on --sequences held-out sequences; the paired relative
             difference to dense with a 95% confidence interval.
  retrieval  single needle, multi-key needle (the asked key among 4) and variable tracking (a
             chain of 4 assignments) hidden in code (models/retrieval.py), --prompts per task over
             5 depths; a hit is a greedy answer that starts with the exact answer tokens
             (`greedy_matches`: decided in one forward of the prompt and the answer, which PBS
             prefills too, so the answer's own queries go through PBS).
  prefill    whole-model prefill time: SDPA cuDNN and flash, and each PBS variant.
  layers     on one held-out sequence, per layer and variant: kept density and output rel-L2
             against exact attention; which layers a variant keeps dense.
--exact-tail N runs every PBS variant with the last N query rows of each call exact (apply's
`exact_tail`): the rows whose logits a prefill returns.
"""
import argparse
import statistics

import torch

from ..measure.metrics import config_point, dense_reference, mean_ci95
from ..measure.prefill import dense_prefill_ms, prefill_ms
from ..measure.timing import env_info, write_json
from ..models.fixtures import attention_shape, head_dim_of, load_model, python_sources, token_sequences
from ..models.retrieval import TASKS, greedy_matches, task_prompts
from ..profile import profiles
from ..profile.launch import default_launch
from ..profile.target import Target
from ..runtime.loader import load_profile
from ..runtime.state import reset_stats, stats
from ..seqlen import format_length, parse_length
from ..tune.model_plan import model_entry, record_layers, use_entry

VARIANTS = ("dense", "default", "shipped", "plan")


def variant_profiles(model, wanted=VARIANTS, *, shipped, plan, min_len) -> dict:
    """{variant: Profile, or None for dense} of the `wanted` variants: the paper default as a
    one-entry profile from `min_len` tokens, the shipped profile (a path, or None to look it up),
    the plan file."""
    cfg = model.config
    cap = Target.present().capability if next(model.parameters()).is_cuda else None
    default = model_entry(model, seqlen=min_len, block_size=128, segment_size=256, threshold=0.9,
                          launch=default_launch(128, head_dim_of(cfg), cap))
    out = dict(dense=None, default=profiles.Profile(path="<paper default>", entries=[default], gpu=default.gpu))
    if "shipped" in wanted:
        out["shipped"] = load_profile(path=shipped) if shipped else load_profile()
    if "plan" in wanted:
        out["plan"] = profiles.load(plan)
    return {name: prof for name, prof in out.items() if name in wanted}


def entry_for(prof, model, length):
    """The entry of `prof` that serves this model at `length` tokens (nearest shape, as the loader)."""
    return prof.pick(length, nearest=True, gpu=prof.gpu or prof.entries[0].gpu, **attention_shape(model))


def picked(prof, model, length) -> str:
    """Which entry of `prof` serves this model at `length` tokens, said in one line."""
    if prof is None:
        return "dense SDPA"
    entry = entry_for(prof, model, length)
    if entry is None:
        return "none: SDPA"
    dense = [i for i in sorted(entry.layers) if entry.config_for_layer(i) is None]
    return entry.describe() + (f", {len(entry.layers)} layer plans" if entry.layers else "") + \
        (f", dense layers {dense}" if dense else "")


def sequence_loss(model, ids) -> float:
    """Mean next-token loss of one sequence; the vocabulary projection in pieces (a 32k x 152k
    logit matrix would take 20 GB in float32)."""
    with torch.no_grad():
        hidden = model.base_model(ids[None]).last_hidden_state[0]
        head = model.get_output_embeddings()
        total = 0.0
        for s in range(0, len(ids) - 1, 4096):
            e = min(s + 4096, len(ids) - 1)
            logits = head(hidden[s:e]).float()
            total += float(torch.nn.functional.cross_entropy(logits, ids[s + 1:e + 1], reduction="sum"))
    return total / (len(ids) - 1)


def part_loss(model, use, seqs) -> dict:
    losses = {}
    for name in use.names:
        use(name)
        reset_stats()
        losses[name] = [sequence_loss(model, s) for s in seqs]
        print(f"  loss {name}: {statistics.fmean(losses[name]):.4f} {stats()}", flush=True)
    out = dict(sequences=len(seqs), mean={k: statistics.fmean(v) for k, v in losses.items()})
    for name in use.names:
        if name != "dense":
            out[f"{name}_relative"] = mean_ci95([(a - b) / b for a, b in zip(losses[name], losses["dense"])])
    out["per_sequence"] = losses
    return out


def part_retrieval(model, use, tokenizer, haystack, n, length) -> dict:
    out = {}
    for task in TASKS:
        prompts = task_prompts(task, tokenizer, haystack, n, length)
        row = {}
        for name in use.names:
            use(name)
            reset_stats()
            hits = greedy_matches(model, prompts)
            depth = {}
            for p, hit in zip(prompts, hits):
                depth.setdefault(str(p.depth), []).append(hit)
            row[name] = dict(correct=sum(hits), prompts=len(hits), percent=100 * sum(hits) / len(hits),
                             by_depth={d: sum(h) / len(h) for d, h in depth.items()}, stats=stats())
            print(f"  {task} {name}: {sum(hits)}/{len(hits)} {row[name]['by_depth']} {stats()}", flush=True)
        for name in use.names:
            row[name]["points_vs_dense"] = row[name]["percent"] - row["dense"]["percent"]
        out[task] = row
    return out


def part_prefill(model, use, ids) -> dict:
    out = dense_prefill_ms(model, ids[None]) if ids.is_cuda else {}
    for name in use.names:
        if name == "dense":
            continue
        use(name)
        reset_stats()
        out[f"{name}_ms"] = prefill_ms(model, ids[None])
        out[f"{name}_stats"] = stats()
        if "cudnn_ms" in out:
            out[f"{name}_vs_cudnn"] = out["cudnn_ms"] / out[f"{name}_ms"]
    use_entry(model, None)
    print("  prefill", {k: v for k, v in out.items() if not k.endswith("_stats")}, flush=True)
    return out


def part_layers(model, profs, seq, length) -> list:
    """Per layer and PBS variant: the config the loader would run there, its density and error."""
    entries = {name: entry_for(prof, model, length) for name, prof in profs.items() if prof is not None}
    rows = []
    for idx, (q, k, v) in sorted(record_layers(model, [seq]).items()):
        exact = dense_reference(q, k, v)
        row = dict(layer=idx)
        for name, entry in entries.items():
            cfg = entry.config_for_layer(idx) if entry is not None else None
            row[name] = config_point(q, k, v, exact, cfg)
            if cfg is not None:
                row[name]["params"] = cfg[0].as_dict()
        rows.append(row)
        print("  layer", idx, {n: (round(r["density"], 3), round(r["rel_l2"], 4)) for n, r in row.items()
                               if n != "layer"}, flush=True)
        del q, k, v, exact
    return rows


class Variants:
    """`use(name)` switches the model to that variant: dense SDPA, or `apply` with its profile
    (and the rows that attend exactly, `exact_tail`)."""

    def __init__(self, model, profs, exact_tail=0):
        self.model, self.profs, self.exact_tail, self.names = model, profs, exact_tail, list(profs)

    def __call__(self, name):
        from ..runtime.transformers_attention import apply
        prof = self.profs[name]
        if prof is None:
            use_entry(self.model, None)
        else:
            apply(self.model, prof, exact_tail=self.exact_tail)


def judge_length(model, tokenizer, profs, length, *, sequences, prompts, parts, exact_tail=0) -> dict:
    device = next(model.parameters()).device
    evals = token_sequences(tokenizer, python_sources("evaluation"), length, sequences + 1 + 4)
    res = dict(tokens=length, exact_tail=exact_tail,
               entries={name: picked(p, model, length) for name, p in profs.items()})
    print(f"== {format_length(length)}: {res['entries']}", flush=True)
    use = Variants(model, profs, exact_tail)
    if "loss" in parts:
        res["loss"] = part_loss(model, use, [s.to(device) for s in evals[:sequences]])
    if "retrieval" in parts:
        haystack = [int(t) for s in evals[sequences + 1:] for t in s]
        res["retrieval"] = part_retrieval(model, use, tokenizer, haystack, prompts, length)
    if "prefill" in parts:
        res["prefill"] = part_prefill(model, use, evals[sequences].to(device))
    if "layers" in parts:
        res["layers"] = part_layers(model, profs, evals[sequences], length)
    use_entry(model, None)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a packaged model's name or a local folder")
    ap.add_argument("--gguf-file", default=None)
    ap.add_argument("--lengths", default="16k,32k")
    ap.add_argument("--parts", default="loss,retrieval,prefill,layers")
    ap.add_argument("--sequences", type=int, default=8, help="held-out sequences for the LM loss")
    ap.add_argument("--prompts", type=int, default=100, help="prompts per retrieval task (over 5 depths)")
    ap.add_argument("--shipped", default=None, help="profile to judge as 'shipped' (default: looked up)")
    ap.add_argument("--plan", default=None, help="a `pbs-tune plan` profile for this model")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)} (dense always)")
    ap.add_argument("--exact-tail", type=int, default=0, help="the last so many query rows of each PBS call "
                                                                 "attend exactly (apply's exact_tail)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    wanted = {"dense", *args.variants.split(",")}
    if not wanted <= set(VARIANTS):
        ap.error(f"--variants names {', '.join(sorted(wanted - set(VARIANTS)))}; choose among {', '.join(VARIANTS)}")
    if "plan" in wanted and not args.plan:
        ap.error("the plan variant needs --plan PROFILE (made by pbs-tune plan), or leave it out of --variants")
    lengths = [parse_length(x) for x in args.lengths.split(",") if x]
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype)
    profs = variant_profiles(model, [v for v in VARIANTS if v in wanted], shipped=args.shipped, plan=args.plan,
                             min_len=min(lengths))
    res = dict(benchmark="judge", env=env_info(), args=vars(args), model=dict(
        name=args.model, layers=model.config.num_hidden_layers, **attention_shape(model)), lengths=[])
    for n in lengths:  # written after each length: a run stopped at its time limit keeps the ones done
        res["lengths"].append(judge_length(model, tokenizer, profs, n, sequences=args.sequences,
                                           prompts=args.prompts, parts=args.parts.split(","),
                                           exact_tail=args.exact_tail))
        write_json(args.out, res)


if __name__ == "__main__":
    main()
