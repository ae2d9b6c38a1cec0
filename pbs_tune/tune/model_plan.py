"""Per-layer plans for one model, judged by the model itself: `pbs-tune plan`.

Every layer's Q/K/V is recorded on calibration text; each layer gets the plan of
tune/allocate.py (permute or not, a threshold per head: error within margin x the reference's,
heaviest keys kept). Then the model answers retrieval probes (models/retrieval.py, on the
calibration text: the multi-key needle, or the byte fixture's own needles) with the plans and
with the reference; while the plans answer fewer, the margin shrinks, down to 0 where every
layer is the reference. The result is one profile entry with a plan per layer.
"""
import dataclasses
import statistics

import torch

from .. import progress
from ..profile import profiles
from ..profile.launch import default_launch
from ..profile.params import DEFAULT_COLUMN_BLOCKS, DEFAULT_TAIL_BLOCKS, ESTIMATORS, PbsParams
from ..profile.provenance import Provenance
from ..profile.target import Target, detect_gpu
from .entry import make_entry
from .allocate import choose_plan, layer_curves, variants_of
from .capture import recording_attention
from ..models.fixtures import attention_shape, head_dim_of
from ..models.retrieval import probe_hits, probe_prompts

PROBE_MARGINS = (0.8, 0.6, 0.4, 0.2, 0.0)  # tried in turn while the plans lose probes


def record_layers(model, seqs) -> dict:
    """{layer: (q, k, v)} of every layer on `seqs`, the sequences stacked as the batch."""
    device = next(model.parameters()).device
    layers = range(model.config.num_hidden_layers)
    parts = {idx: [] for idx in layers}
    for s in seqs:
        with recording_attention(model, set(layers)) as seen, torch.no_grad():
            model(s[None].to(device), logits_to_keep=1)
        for idx in layers:
            parts[idx].append(tuple(t.contiguous() for t in seen[idx]))
        del seen
    return {idx: tuple(torch.cat([p[j] for p in parts[idx]]) for j in range(3)) for idx in layers}


def model_entry(model, *, seqlen, block_size, segment_size, threshold, launch, layers=None,
                permute=True, provenance=None) -> profiles.ProfileEntry:
    """A profile entry for this model's attention shape on this GPU, from `seqlen` tokens up."""
    shape = dict(seqlen=seqlen, **attention_shape(model))
    return make_entry(gpu=detect_gpu(), shape=shape, params=PbsParams(block_size, segment_size, threshold, permute),
                      launch=launch, layers=layers, provenance=provenance or Provenance())


def use_entry(model, entry):
    """Run `model` with `entry` (None: dense SDPA)."""
    from ..runtime.transformers_attention import apply
    if entry is None:
        model.set_attn_implementation("sdpa")
    else:
        apply(model, profiles.Profile(path="<plan>", entries=[entry], gpu=entry.gpu))


def probed_plans(model, tokenizer, curves, prompts, *, margin, reference, block_size, segment_size, launch,
                 min_len):
    """Plans at `margin`, shrunk while they answer fewer `prompts` than the reference.
    Returns (entry, {layer: LayerPlan}, margin used, probe log). While probing, the entries start
    at the prompts' length (shorter than the entry's `min_len`), so the probes run PBS, not SDPA."""
    probe_len = min([min_len] + [len(p[0]) for p in prompts])

    def entry(layers=None, seqlen=probe_len):
        return model_entry(model, seqlen=seqlen, block_size=block_size, segment_size=segment_size,
                           threshold=reference, launch=launch, layers=layers)

    use_entry(model, entry())
    need = probe_hits(model, tokenizer, prompts)
    log = [dict(variant="reference", hits=need, prompts=len(prompts))]
    for m in [margin] + [x for x in PROBE_MARGINS if x < margin]:
        progress.say(f"retrieval probe at margin {m}: {len(prompts)} prompts")
        plans = {idx: choose_plan(c, margin=m, reference=reference) for idx, c in curves.items()}
        layers = {idx: (PbsParams(block_size, segment_size, p.thresholds, p.permute, p.estimator), launch)
                  for idx, p in plans.items()}
        use_entry(model, entry(layers))
        hits = probe_hits(model, tokenizer, prompts) if prompts else need
        log.append(dict(margin=m, hits=hits, mean_kept_ratio=statistics.fmean(p.kept_ratio for p in plans.values())))
        if hits >= need:
            break
    planned = entry(layers, seqlen=min_len)
    use_entry(model, planned)
    return planned, plans, m, log


def plan_model(model, tokenizer, calib_seqs, probe_seqs, *, margin=0.95, reference=0.9, probes=40,
               block_size=128, segment_size=256, launch=None, min_len=None, estimators=ESTIMATORS):
    """Plans for every layer of `model` from 2+ calibration sequences and a retrieval probe on
    `probe_seqs` (their text as haystack). Returns (profile entry, report dict)."""
    seqlen = len(calib_seqs[0])
    device = next(model.parameters()).device
    launch = launch or default_launch(block_size, head_dim_of(model.config),
                                      Target.present().capability if device.type == "cuda" else None)
    progress.say(f"recording Q/K/V of every layer on {len(calib_seqs)} calibration sequences")
    recorded = sorted(record_layers(model, calib_seqs).items())
    steps = progress.Steps("per-head curves: layer", len(recorded))
    curves = {}
    for idx, (q, k, v) in recorded:
        curves[idx] = layer_curves(q, k, v, block_size=block_size, segment_size=segment_size, launch=launch,
                                   variants=variants_of(estimators), tail_blocks=DEFAULT_TAIL_BLOCKS,
                                   column_blocks=DEFAULT_COLUMN_BLOCKS)
        steps.step()
    haystack = [int(t) for s in probe_seqs for t in s]
    prompts = probe_prompts(tokenizer, haystack, probes, seqlen - min(512, seqlen // 4)) if probes else []
    entry, plans, used, log = probed_plans(model, tokenizer, curves, prompts, margin=margin, reference=reference,
                                           block_size=block_size, segment_size=segment_size, launch=launch,
                                           min_len=min_len or seqlen)
    entry.provenance = dataclasses.replace(entry.provenance, plan=dict(
        margin=margin, margin_used=used, reference_threshold=reference, calibration_sequences=len(calib_seqs),
        tokens=seqlen, probe=log, bound="per layer: output rel-L2 <= margin x the reference threshold's (also on "
                                        "each calibration sequence left out of the fit), per head no fewer sampled "
                                        "queries' heaviest keys kept, and no fewer retrieval probes answered than "
                                        "with the reference"))
    report = [dict(layer=idx, permute=p.permute, estimator=p.estimator, thresholds=list(p.thresholds), margin=used,
                   allocation_margin=p.margin,
                   calib_default_rel_l2=p.reference_rel_l2, calib_per_head_rel_l2=p.rel_l2,
                   calib_kept_ratio=p.kept_ratio) for idx, p in sorted(plans.items())]
    return entry, dict(allocation=report, probe=log, margin_used=used)


def plan_to_profile(spec, gpu: str):
    """`pbs-tune plan`: load the model, plan it (`PlanSpec`) on 2 calibration sequences of its text
    with retrieval probes on 4 others, and add the entry to the spec's profile. Returns (entry, report)."""
    import os

    from ..models.fixtures import load_model, python_sources, token_sequences
    from ..profile.target import CPU, INTERPRETER_MAX_SEQLEN, device_for, interpreter_size_error
    from ..seqlen import format_length
    if os.path.exists(spec.profile):
        profiles.load(spec.profile)  # fail now, not after the calibration
    net, tokenizer = load_model(spec.model, gguf_file=spec.gguf_file, dtype=spec.dtype, device=device_for(gpu))
    too_big = gpu == CPU and interpreter_size_error(spec.seqlen, net.config.num_attention_heads)
    if too_big:
        raise ValueError(f"{too_big}; on this CPU plan at --seqlen {format_length(INTERPRETER_MAX_SEQLEN // 4)} "
                         f"or less with a small model, or run plan on a GPU")
    if tokenizer is None:
        raise ValueError(f"--model {spec.model} has no tokenizer; plan needs one to build its retrieval probes")
    texts = [spec.text_file] if spec.text_file else python_sources("calibration")
    seqs = token_sequences(tokenizer, texts, spec.seqlen, 6)
    entry, report = plan_model(net, tokenizer, seqs[:2], seqs[2:], margin=spec.margin, reference=spec.reference,
                               probes=spec.probes, block_size=spec.block_size, segment_size=spec.segment_size,
                               estimators=spec.estimators)
    profiles.merge_entries(spec.profile, [entry])
    return entry, report
