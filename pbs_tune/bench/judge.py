"""A real pretrained model as the judge: `python -m pbs_tune.bench.judge` (GPU).

The model (default: the packaged Qwen2.5-Coder-0.5B-Instruct, 32k context) runs through `apply`
with each variant, at each --lengths, on text no variant was tuned on (Python sources of the
*evaluation* split; `plan` calibrates and probes on the *calibration* split):
  dense    transformers' SDPA
  paper    PBS as the paper runs it: block 128, segment 256, threshold 0.9, mean estimator, the
           retrieval knobs (PbsParams' tail_blocks, column_blocks) off
  default  the same block, segment and threshold with the knobs at their defaults: what `apply`
           runs for an entry that does not set them
  shipped  the profile pbs-tune ships (or --shipped) for this GPU; the entry it picks is recorded
  plan     a `pbs-tune plan` profile for this model (--plan), one plan per layer
Parts:
  loss       LM loss (nats/token) on --sequences held-out sequences; the paired relative
             difference to dense with a 95% confidence interval.
  retrieval  single needle, multi-key needle (the asked key among 4) and variable tracking (a
             chain of 4 assignments) hidden in code (models/retrieval.py), --prompts per task over
             5 depths, scored as a user's `generate` answers: the prompt prefilled alone through the
             variant, the answer greedily decoded from the KV cache (decode steps run SDPA), a hit
             when it is exactly the answer's tokens (`generated_matches`). Per PBS variant the
             paired difference to dense on the same prompts, in points with a 95% interval (at 400
             prompts about +-10 x sqrt(share of prompts the two disagree on): +-2 points at 4%).
             --teacher-forced adds, at the first of --lengths only (a second forward per prompt and
             variant), the teacher-forced score of earlier judges (`teacher_forced_matches`: prompt
             and answer in one forward, the answer's own query rows through PBS too). Each variant
             costs 3 x --prompts prefills per length: split a long run with --variants (dense runs
             in each, so each pairs against it) or --lengths.
  prefill    whole-model prefill time: SDPA cuDNN and flash, and each PBS variant.
  layers     on one held-out sequence, per layer and variant: kept density and output rel-L2
             against exact attention; which layers a variant keeps dense.
"""
import argparse
import dataclasses
import statistics

import torch

from ..measure.metrics import config_point, dense_reference, mean_ci95
from ..measure.prefill import dense_prefill_ms, prefill_ms
from ..measure.timing import env_info, write_json
from ..models.fixtures import attention_shape, head_dim_of, load_model, python_sources, token_sequences
from ..models.retrieval import TASKS, default_batch, generated_matches, task_prompts, teacher_forced_matches
from ..profile import profiles
from ..profile.launch import default_launch
from ..profile.target import Target
from ..runtime.loader import load_profile
from ..runtime.state import reset_stats, stats
from ..seqlen import format_length, parse_length
from ..tune.model_plan import model_entry, record_layers, use_entry

VARIANTS = ("dense", "paper", "default", "shipped", "plan")
PARTS = ("loss", "retrieval", "prefill", "layers")
PAPER_KNOBS = dict(tail_blocks=0, column_blocks=0)  # the retrieval knobs the paper does not have


def paper_entry(entry):
    """`entry` with the retrieval knobs off: PBS as the paper describes it."""
    return dataclasses.replace(entry, params=dataclasses.replace(entry.params, **PAPER_KNOBS))


def variant_profiles(model, wanted=VARIANTS, *, shipped, plan, min_len) -> dict:
    """{variant: Profile, or None for dense} of the `wanted` variants: the paper's and the default
    configuration as one-entry profiles from `min_len` tokens, the shipped profile (a path, or None
    to look it up), the plan file."""
    cfg = model.config
    cap = Target.present().capability if next(model.parameters()).is_cuda else None
    default = model_entry(model, seqlen=min_len, block_size=128, segment_size=256, threshold=0.9,
                          launch=default_launch(128, head_dim_of(cfg), cap))
    paper = paper_entry(default)
    out = dict(dense=None, paper=profiles.Profile(path="<paper>", entries=[paper], gpu=paper.gpu),
               default=profiles.Profile(path="<default>", entries=[default], gpu=default.gpu))
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


def paired_points(hits, dense_hits) -> dict:
    """Per prompt hit minus dense's hit on the same prompt, as percentage points: mean and 95%
    interval. Pairing cancels the prompts both answer or both miss, which an unpaired difference
    of two percentages counts as noise."""
    return mean_ci95([100 * (int(a) - int(b)) for a, b in zip(hits, dense_hits)])


def score(prompts, hits, dense=None) -> dict:
    """Hits in all, by depth and per prompt; with `dense` (dense's score of the same prompts), the
    paired difference to it."""
    depth = {}
    for p, hit in zip(prompts, hits):
        depth.setdefault(str(p.depth), []).append(hit)
    out = dict(correct=sum(hits), prompts=len(hits), percent=100 * sum(hits) / len(hits),
               by_depth={d: sum(h) / len(h) for d, h in depth.items()}, hits=[int(h) for h in hits])
    if dense is not None:
        out["points_vs_dense"] = paired_points(out["hits"], dense["hits"])
    return out


def said(task, name, row) -> str:
    """'multikey_needle paper: 180/400, -3.2 points vs dense (95% -5.1 to -1.3) {depths}'."""
    text = f"  {task} {name}: {row['correct']}/{row['prompts']}"
    if "points_vs_dense" in row:
        mean, (lo, hi) = row["points_vs_dense"]["mean"], row["points_vs_dense"]["ci95"]
        text += f", {mean:+.1f} points vs dense (95% {lo:+.1f} to {hi:+.1f})"
    return text + f" {row['by_depth']}"


def part_retrieval(model, use, tokenizer, haystack, n, length, batch=None, teacher_forced=False) -> dict:
    """Per task and variant (dense first): the generate-way score and, for PBS variants, the paired
    difference to dense; with `teacher_forced`, the teacher-forced score beside it."""
    out = {}
    for task in TASKS:
        prompts = task_prompts(task, tokenizer, haystack, n, length)
        row = {}
        for name in use.names:
            use(name)
            reset_stats()
            dense = row.get("dense")
            row[name] = score(prompts, generated_matches(model, prompts, batch), dense)
            row[name]["stats"] = stats()
            print(said(task, name, row[name]), row[name]["stats"], flush=True)
            if teacher_forced:
                forced = score(prompts, teacher_forced_matches(model, prompts), dense and dense["teacher_forced"])
                row[name]["teacher_forced"] = forced
                print(said(task, f"{name} teacher-forced", forced), flush=True)
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
    """`use(name)` switches the model to that variant: dense SDPA, or `apply` with its profile."""

    def __init__(self, model, profs):
        self.model, self.profs, self.names = model, profs, list(profs)

    def __call__(self, name):
        from ..runtime.transformers_attention import apply
        prof = self.profs[name]
        if prof is None:
            use_entry(self.model, None)
        else:
            apply(self.model, prof)


def judge_length(model, tokenizer, profs, length, *, sequences, prompts, parts, batch=None,
                 teacher_forced=False, save=None) -> dict:
    """One length's parts; `save(res)` after each part, so that a run stopped at its time limit keeps them."""
    device = next(model.parameters()).device
    evals = token_sequences(tokenizer, python_sources("evaluation"), length, sequences + 1 + 4)
    res = dict(tokens=length, entries={name: picked(p, model, length) for name, p in profs.items()})
    print(f"== {format_length(length)}: {res['entries']}", flush=True)
    use = Variants(model, profs)
    if "loss" in parts:
        res["loss"] = part_loss(model, use, [s.to(device) for s in evals[:sequences]])
        if save:
            save(res)
    if "retrieval" in parts:
        haystack = [int(t) for s in evals[sequences + 1:] for t in s]
        res["retrieval_batch"] = batch or default_batch(model, length)
        print(f"  retrieval: {prompts} prompts per task, {res['retrieval_batch']} per prefill", flush=True)
        res["retrieval"] = part_retrieval(model, use, tokenizer, haystack, prompts, length,
                                          batch=res["retrieval_batch"], teacher_forced=teacher_forced)
        if save:
            save(res)
    if "prefill" in parts:
        res["prefill"] = part_prefill(model, use, evals[sequences].to(device))
        if save:
            save(res)
    if "layers" in parts:
        res["layers"] = part_layers(model, profs, evals[sequences], length)
    use_entry(model, None)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="a packaged model's name or a local folder")
    ap.add_argument("--gguf-file", default=None,
                    help="with a GGUF repository or folder as --model: which .gguf file in it")
    ap.add_argument("--lengths", default="16k,32k",
                    help="comma-separated token counts to judge at, e.g. 16k,32k (k = 1024), each in turn")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated, some of: loss (LM loss against dense), retrieval (the 3 needle tasks, "
                         "scored as generate answers), prefill (whole-model prefill time), layers (per layer: "
                         "kept density and output error); the module's docstring tells more")
    ap.add_argument("--sequences", type=int, default=8, help="held-out sequences for the LM loss")
    ap.add_argument("--prompts", type=int, default=400, help="prompts per retrieval task (over 5 depths)")
    ap.add_argument("--batch", type=int, default=None,
                    help="retrieval prompts per prefill (default: as many as the KV cache and activations fit "
                         "in 16 GiB, or half the GPU's free memory if less: 8 at 32k for Qwen2.5-Coder-0.5B in bf16)")
    ap.add_argument("--teacher-forced", action="store_true",
                    help="also score retrieval teacher-forced, at the first of --lengths (a second forward per "
                         "prompt and variant)")
    ap.add_argument("--shipped", default=None, help="profile to judge as 'shipped' (default: looked up)")
    ap.add_argument("--plan", default=None, help="a `pbs-tune plan` profile for this model")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"some of {', '.join(VARIANTS)} (dense always)")
    ap.add_argument("--dtype", default="bfloat16", help="the model's weights and activations: bfloat16 or float16")
    ap.add_argument("--out", required=True,
                    help="the JSON result, rewritten after each part (a run stopped early keeps the parts done)")
    args = ap.parse_args(argv)
    wanted = {"dense", *args.variants.split(",")}
    if not wanted <= set(VARIANTS):
        ap.error(f"--variants names {', '.join(sorted(wanted - set(VARIANTS)))}; choose among {', '.join(VARIANTS)}")
    if "plan" in wanted and not args.plan:
        ap.error("the plan variant needs --plan PROFILE (made by pbs-tune plan), or leave it out of --variants")
    parts = [p for p in args.parts.split(",") if p]
    if not parts or not set(parts) <= set(PARTS):
        ap.error(f"--parts {args.parts!r}: give some of {', '.join(PARTS)}, comma-separated")
    for name in ("prompts", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be 1 or more, got {getattr(args, name)}")
    try:
        lengths = [parse_length(x) for x in args.lengths.split(",") if x]
    except ValueError as err:
        ap.error(f"--lengths: {err}")
    if not lengths:
        ap.error("--lengths names no length: give e.g. 16k,32k")
    model, tokenizer = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype)
    profs = variant_profiles(model, [v for v in VARIANTS if v in wanted], shipped=args.shipped, plan=args.plan,
                             min_len=min(lengths))
    res = dict(benchmark="judge", env=env_info(), args=vars(args), model=dict(
        name=args.model, layers=model.config.num_hidden_layers, **attention_shape(model)), lengths=[])
    for n in lengths:  # written after each part: a run stopped at its time limit keeps the parts done
        res["lengths"].append(judge_length(
            model, tokenizer, profs, n, sequences=args.sequences, prompts=args.prompts, parts=parts,
            batch=args.batch, teacher_forced=args.teacher_forced and n == lengths[0],
            save=lambda partial: write_json(args.out, {**res, "lengths": res["lengths"] + [partial]})))
        write_json(args.out, res)


if __name__ == "__main__":
    main()
