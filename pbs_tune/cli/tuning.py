"""The commands that measure and write profile entries: sweep, plan, capture."""
import functools
import json
from dataclasses import replace

import click

from .. import progress
from ..measure.workloads import CALIBRATION_SETS, WORKLOADS
from ..profile import store as profile_store
from ..profile.target import CPU
from ..seqlen import parse_length
from ..tune.spec import MARGIN_RANGE, PlanSpec, SweepSpec, default, worker_count  # imports no torch: --help stays fast
from .options import ESTIMATORS_HELP, one_line_errors, parse_estimators, parse_lengths, parse_max_error


@click.command()
@click.option("--gpu", required=True, help="Short GPU name (h100, a100, ...) or 'auto'; must match the GPU present.")
@click.option("--seqlen", "seqlens", multiple=True, required=True, callback=parse_lengths,
              help="Sequence length to tune, e.g. 32k, 131072, 1M. Repeat for several.")
@click.option("--heads", default=default("heads"), show_default=True, help="Query heads.")
@click.option("--kv-heads", default=default("kv_heads"), show_default=True, help="Key/value heads (GQA).")
@click.option("--head-dim", default=str(default("head_dim")), show_default=True, type=click.Choice(["64", "128"]),
              help="Head dimension.")
@click.option("--dtype", default=default("dtype"), show_default=True,
              type=click.Choice(["bfloat16", "float16", "float32"]), help="float32 only in the CPU interpreter.")
@click.option("--max-error", default=str(default("max_error")), show_default=True, callback=parse_max_error,
              help="Largest relative L2 error of the output vs dense attention a config may have, or 'default': "
                   "no more than the published default config's error on the calibration data (and the held-out "
                   "check then compares with the default's there). A bound under 1e-5, the precision errors are "
                   "recorded with, counts as 1e-5.")
@click.option("--trials", default=default("trials"), show_default=True, type=click.IntRange(min=1),
              help="Finished trials per length (counted across all workers of the study).")
@click.option("--timeout", default=None, type=float, help="Stop this worker after so many seconds per length.")
@click.option("--workload", default=default("workload"), show_default=True,
              type=click.Choice(WORKLOADS + tuple(CALIBRATION_SETS)),
              help="Synthetic calibration workload; 'families' is one sample of every workload, and with "
                   "--max-error default the default's error bounds each of them, not their average.")
@click.option("--calib", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Captured Q/K/V (pbs-tune capture) to tune on instead of a workload.")
@click.option("--samples", default=None, type=click.IntRange(1, 16),
              help="Workload samples (a batch of --seed) to calibrate on; latencies are of the whole batch. "
                   "Per-head plans are checked on each one left out. [default: 4 with --per-head, else 1]")
@click.option("--holdout-calib", default=None, type=click.Path(exists=True, dir_okay=False),
              help="With --calib: a capture of other text (same layers) on which the chosen config and the "
                   "default are checked afterwards. A workload is checked on its next seed.")
@click.option("--storage", default=None,
              help="Optuna RDB storage URL (default: sqlite studies.db in the user store, see --help of show).")
@click.option("--study", "study_prefix", default=None,
              help="Study name (a prefix when several lengths are given; default derived from the setup).")
@click.option("--profile", "profile_path", default=None,
              help="Profile YAML to write (default: <user store>/configs/<gpu>.yaml).")
@click.option("--kernels", "library", default=None,
              help="Folder of its compiled-kernel library (default: cache/sm_<arch>/ of the profile's store).")
@click.option("--seed", default=default("seed"), show_default=True, help="Seed of the workload data and the sampler.")
@click.option("--no-compile", is_flag=True, help="Skip building the kernel library afterwards.")
@click.option("--rewrite", is_flag=True,
              help="Measure and write again the entry of a length whose study already holds --trials trials "
                   "(without it, such a length is said and left as it is).")
@click.option("--per-head", is_flag=True,
              help="Per layer and head: thresholds and permutation on/off allocated around each trial's block, "
                   "segment and launch (error within --margin x the trial threshold's, heaviest keys kept); "
                   "with --calib every captured layer gets its own plan.")
@click.option("--margin", default=default("margin"), show_default=True, type=click.FloatRange(*MARGIN_RANGE),
              help="--per-head: each layer's calibration error bound as a share of the reference's.")
@click.option("--estimators", default=",".join(default("estimators")), show_default=True, callback=parse_estimators,
              help="--per-head: " + ESTIMATORS_HELP)
@click.option("--workers", default="1", show_default=True,
              help="Worker processes on the study: a number, or 'auto' (one per visible GPU; on a CPU, "
                   "one interpreter worker per core, up to 4). Each GPU worker sees one GPU.")
@click.option("--heartbeat", "heartbeat_s", default=default("heartbeat_s"), show_default=True,
              type=click.IntRange(min=1),
              help="Seconds between worker heartbeats; a worker silent for 3x this long is presumed dead "
                   "and its trial is run again.")
@click.option("--quiet", is_flag=True, help="No progress on stderr (stages, trials, time left).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary (the written entries) as JSON on stdout; the rest goes to stderr.")
@one_line_errors
def sweep(gpu, seqlens, heads, kv_heads, head_dim, dtype, max_error, trials, timeout, workload, calib, samples,
          holdout_calib, storage, study_prefix, profile_path, library, seed, no_compile, rewrite, per_head, margin,
          estimators, workers, heartbeat_s, quiet, as_json):
    """Search block size, segment size, threshold and launch config per length.

    \b
    Example:
      pbs-tune sweep --gpu h100 --seqlen 32k --seqlen 128k --trials 60 --workers auto
    """
    from ..tune.sweep import run_sweep
    progress.set_quiet(quiet)
    gpu = profile_store.gpu_to_tune(gpu)
    spec = SweepSpec(
        gpu=gpu, seqlens=tuple(seqlens), storage=storage or profile_store.default_storage_url(),
        profile=profile_path or profile_store.default_profile_path(gpu), heads=heads, kv_heads=kv_heads,
        head_dim=int(head_dim), dtype=dtype, workload=workload, calib=calib, holdout_calib=holdout_calib,
        max_error=max_error, trials=trials, timeout=timeout, seed=seed, heartbeat_s=heartbeat_s, per_head=per_head,
        margin=margin, estimators=estimators, samples=samples, study=study_prefix, library=library,
        workers=worker_count(workers, gpu != CPU), compile=not no_compile, quiet=quiet, rewrite=rewrite)
    if calib:
        spec = replace(spec, **_shape_of_capture(calib, heads, kv_heads, int(head_dim), dtype))
    entries = run_sweep(spec, say=functools.partial(click.echo, err=as_json))  # with --json, stdout is the JSON
    if as_json:
        click.echo(json.dumps(dict(profile=spec.profile, entries=[e.to_dict() for e in entries]), default=str))


def _shape_of_capture(calib, heads, kv_heads, head_dim, dtype):
    """heads, kv_heads, head_dim and dtype from the capture's header; a flag given on the command line
    must agree with it (dtype may differ: the capture is converted)."""
    from ..tune.evaluate import captured_shape
    got = captured_shape(calib)
    ctx = click.get_current_context()
    given = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)
    for name in ("heads", "kv_heads", "head_dim"):
        explicit = ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
        if explicit and given[name] != got[name]:
            raise ValueError(f"--{name.replace('_', '-')} {given[name]} but {calib} holds {got[name]}: "
                             f"leave it out (the capture's shape is used)")
    if ctx.get_parameter_source("dtype") == click.core.ParameterSource.DEFAULT:
        dtype = got["dtype"]
    return dict(heads=got["heads"], kv_heads=got["kv_heads"], head_dim=got["head_dim"], dtype=dtype)


@click.command()
@click.option("--model", required=True,
              help="Local transformers model folder (the trained fixture too), or a packaged model: 'smollm2', "
                   "'qwen2.5-coder-0.5b' (pip install 'pbs-tune[qwen]').")
@click.option("--gguf-file", default=None, help="A GGUF file inside --model to load (transformers' gguf_file=).")
@click.option("--gpu", default="auto", show_default=True, help="Must match the GPU present ('auto' reads it).")
@click.option("--seqlen", required=True, callback=lambda c, p, v: parse_length(v),
              help="Calibration length in tokens (e.g. 8k); the entry applies from this length up.")
@click.option("--text", "text_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Calibration text (6 x --seqlen tokens); default: installed Python sources of the "
                   "calibration split.")
@click.option("--margin", default=default("margin", PlanSpec), show_default=True, type=click.FloatRange(*MARGIN_RANGE),
              help="Each layer's error bound as a share of the reference threshold's (the probe may shrink it "
                   "down to 0: every layer the reference).")
@click.option("--reference", default=str(default("reference", PlanSpec)), show_default=True,
              type=click.Choice([str(t) for t in (0.8, 0.85, 0.9, 0.95)]),
              help="The uniform threshold the plans must match (error, heaviest keys, retrieval probes).")
@click.option("--probes", default=default("probes", PlanSpec), show_default=True, type=click.IntRange(min=0),
              help="Retrieval probe prompts (0: no probe).")
@click.option("--estimators", default=",".join(default("estimators")), show_default=True, callback=parse_estimators,
              help=ESTIMATORS_HELP)
@click.option("--block-size", default=default("block_size", PlanSpec), show_default=True, type=click.IntRange(min=16))
@click.option("--segment-size", default=default("segment_size", PlanSpec), show_default=True,
              type=click.IntRange(min=32))
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--profile", "profile_path", default=None, help="Profile YAML to add the entry to (default: user store).")
@click.option("--no-compile", is_flag=True, help="Skip building the kernel library afterwards.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@one_line_errors
def plan(model, gguf_file, gpu, seqlen, text_file, margin, reference, probes, estimators, block_size, segment_size,
         dtype, profile_path, no_compile, quiet):
    """Per-layer plans for one model, judged by the model: permutation on/off and a threshold per
    head in every layer, within --margin x the reference's layer error, keeping each head's
    heaviest keys and the model's answers to retrieval probes (tune/model_plan.py).

    \b
    Example:
      pbs-tune plan --model smollm2 --seqlen 8k
    """
    from ..tune import report as reports
    from ..tune.model_plan import plan_to_profile
    progress.set_quiet(quiet)
    gpu = profile_store.gpu_to_tune(gpu)
    spec = PlanSpec(model=model, seqlen=seqlen, profile=profile_path or profile_store.default_profile_path(gpu),
                    gguf_file=gguf_file, text_file=text_file, margin=margin, reference=float(reference), probes=probes,
                    block_size=block_size, segment_size=segment_size, dtype=dtype, estimators=estimators)
    entry, report = plan_to_profile(spec, gpu)
    for line in reports.plan_lines(report):
        click.echo(line)
    click.echo(f"wrote a plan for {len(entry.layers)} layers to {spec.profile} (margin used {report['margin_used']})")
    if gpu != CPU and not no_compile:
        from ..runtime.library_build import build_in_fresh_process
        build_in_fresh_process(spec.profile, None)


@click.command()
@click.option("--model", required=True,
              help="Local transformers model folder (config + weights), or a packaged model: 'smollm2' (SmolLM2-135M), "
                   "'qwen2.5-coder-0.5b' (Qwen2.5-Coder-0.5B-Instruct, 32k context).")
@click.option("--gguf-file", default=None, help="A GGUF file inside --model to load (transformers' gguf_file=).")
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Text file to run through the model.")
@click.option("--seqlen", required=True, callback=lambda c, p, v: parse_length(v), help="Tokens to capture, e.g. 32k.")
@click.option("--sequences", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Consecutive --seqlen windows of the text to record per layer; with 2 or more, "
                   "sweep --per-head checks each layer's bound on a window left out of the fit.")
@click.option("--layers", default=None, help="Comma-separated layer indices (default: all).")
@click.option("--out", "out_file", required=True, help="Output .safetensors file.")
@click.option("--dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float16", "float32"]))
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@one_line_errors
def capture(model, gguf_file, text_file, seqlen, sequences, layers, out_file, dtype, quiet):
    """Record per-layer calibration Q/K/V (after RoPE) from a transformers model.

    \b
    Example:
      pbs-tune capture --model ./Llama-3.1-8B --text book.txt --seqlen 32k --out calib.safetensors
      pbs-tune sweep --gpu h100 --seqlen 32k --calib calib.safetensors
      pbs-tune capture --model smollm2 --text code.py --seqlen 8k --sequences 3 --out smol.safetensors
    """
    from ..tune.capture import capture_qkv
    progress.set_quiet(quiet)
    layer_ids = [int(x) for x in layers.split(",")] if layers else None
    n = capture_qkv(model, text_file, seqlen, out_file, layers=layer_ids, dtype=dtype, gguf_file=gguf_file,
                    sequences=sequences)
    click.echo(f"wrote {n} layers of Q/K/V ({sequences} sequence{'s' if sequences > 1 else ''}) to {out_file}")
