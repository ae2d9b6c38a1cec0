"""`pbs-tune`: tune PBS-Attn for this GPU, inspect profiles, build their kernel libraries."""
import dataclasses
import functools
import json
import os

import click

from . import progress
from .runtime import profile_store, profiles
from .runtime.gpu import (CPU, INTERPRETER_MAX_SEQLEN, device_for, interpreter_size_error, present_gpu, resolve_gpu,
                          variant_in)
from .seqlen import format_length, parse_length
from .tune.workloads import CALIBRATION_SETS, WORKLOADS

DEFAULT_MAX_ERROR = 0.10


def one_line_errors(fn):
    """Expected failures print one line ('Error: ...') and exit 1, without a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, RuntimeError, OSError, profiles.ProfileError) as exc:
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return wrapper


def _max_error(ctx, param, value):
    """A number in (0, 1], or None for 'default' (resolved on the calibration data)."""
    if value.strip().lower() == "default":
        return None
    try:
        bound = float(value)
    except ValueError:
        bound = -1.0
    if not 0.0 < bound <= 1.0:
        raise click.BadParameter(f"expected a number in (0, 1] or 'default', got {value!r}")
    return bound


def _estimators(ctx, param, value):
    """A comma-separated subset of the block estimators, as a tuple."""
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in profiles.ESTIMATORS]
    if unknown or not names:
        raise click.BadParameter(f"expected some of {','.join(profiles.ESTIMATORS)} (comma-separated), got {value!r}")
    return names


ESTIMATORS_HELP = ("Block estimators a layer's plan may use, each with and without the permutation: 'mean' "
                   "(the paper's), 'lse' (each block's mean query against every key); comma-separated.")


def _lengths(ctx, param, values):
    try:
        return sorted({parse_length(v) for v in values})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings=dict(help_option_names=["-h", "--help"]))
@click.version_option(package_name="pbs-tune")
def main():
    """Ahead-of-time tuning of Permuted Block-Sparse Attention for your GPU."""


@main.command()
@click.option("--gpu", required=True, help="Short GPU name (h100, a100, ...) or 'auto'; must match the GPU present.")
@click.option("--seqlen", "seqlens", multiple=True, required=True, callback=_lengths,
              help="Sequence length to tune, e.g. 32k, 131072, 1M. Repeat for several.")
@click.option("--heads", default=32, show_default=True, help="Query heads.")
@click.option("--kv-heads", default=8, show_default=True, help="Key/value heads (GQA).")
@click.option("--head-dim", default=128, show_default=True, type=click.Choice(["64", "128"]), help="Head dimension.")
@click.option("--dtype", default="bfloat16", show_default=True,
              type=click.Choice(["bfloat16", "float16", "float32"]), help="float32 only in the CPU interpreter.")
@click.option("--max-error", default=str(DEFAULT_MAX_ERROR), show_default=True, callback=_max_error,
              help="Largest relative L2 error of the output vs dense attention a config may have, or 'default': "
                   "no more than the published default config's error on the calibration data (and the held-out "
                   "check then compares with the default's there).")
@click.option("--trials", default=40, show_default=True, type=click.IntRange(min=1),
              help="Finished trials per length (counted across all workers of the study).")
@click.option("--timeout", default=None, type=float, help="Stop this worker after so many seconds per length.")
@click.option("--workload", default="mixed", show_default=True,
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
@click.option("--seed", default=0, show_default=True, help="Seed of the workload data and the sampler.")
@click.option("--no-compile", is_flag=True, help="Skip building the kernel library afterwards.")
@click.option("--rewrite", is_flag=True,
              help="Measure and write again the entry of a length whose study already holds --trials trials "
                   "(without it, such a length is said and left as it is).")
@click.option("--per-head", is_flag=True,
              help="Per layer and head: thresholds and permutation on/off allocated around each trial's block, "
                   "segment and launch (error within --margin x the trial threshold's, heaviest keys kept); "
                   "with --calib every captured layer gets its own plan.")
@click.option("--margin", default=0.95, show_default=True, type=click.FloatRange(0.1, 1.0),
              help="--per-head: each layer's calibration error bound as a share of the reference's.")
@click.option("--estimators", default="mean,lse", show_default=True, callback=_estimators,
              help="--per-head: " + ESTIMATORS_HELP)
@click.option("--workers", default="1", show_default=True,
              help="Worker processes on the study: a number, or 'auto' (one per visible GPU; on a CPU, "
                   "one interpreter worker per core, up to 4). Each GPU worker sees one GPU.")
@click.option("--heartbeat", "heartbeat_s", default=10, show_default=True, type=click.IntRange(min=1),
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
    from .tune.sweep import SweepSpec, run_sweep
    if calib and samples:
        raise ValueError("--samples draws workload samples; a --calib capture has its own (capture --sequences N)")
    progress.set_quiet(quiet)
    if calib:
        heads, kv_heads, head_dim, dtype = _shape_of_capture(calib, heads, kv_heads, head_dim, dtype)
    gpu = _gpu_to_work_on(gpu)
    spec = SweepSpec(
        gpu=gpu, seqlens=tuple(seqlens), storage=storage or profile_store.default_storage_url(),
        profile=profile_path or profile_store.default_profile_path(gpu), heads=heads, kv_heads=kv_heads,
        head_dim=int(head_dim), dtype=dtype, workload=workload, calib=calib, holdout_calib=holdout_calib,
        max_error=max_error, trials=trials, timeout=timeout, seed=seed, heartbeat_s=heartbeat_s, per_head=per_head,
        margin=margin, estimators=estimators, samples=1 if calib else samples or (4 if per_head else 1), study=study_prefix,
        library=library, workers=_worker_count(workers, gpu != CPU), compile=not no_compile, quiet=quiet,
        rewrite=rewrite)
    entries = run_sweep(spec, say=functools.partial(click.echo, err=as_json))  # with --json, stdout is the JSON
    if as_json:
        click.echo(json.dumps(dict(profile=spec.profile, entries=[e.to_dict() for e in entries]), default=str))


def _gpu_to_work_on(requested):
    """The GPU a tuning command runs on. Without one, a single line with a command that runs on this
    CPU (the interpreter at the try-out's sizes), not one flag at a time."""
    present = present_gpu()
    if present is None or (present == CPU and requested.lower() not in ("auto", CPU)):
        what = "no CUDA GPU here" if present is None else "this machine has no GPU, only Triton's interpreter"
        raise ValueError(f"--gpu {requested}: {what}; try pbs-tune on this CPU with: "
                         + profile_store.sweep_hint(CPU))
    return resolve_gpu(requested)


def _worker_count(workers, on_gpu) -> int:
    if workers == "auto":
        import torch
        return torch.cuda.device_count() if on_gpu else max(1, min(4, os.cpu_count() or 1))
    try:
        n = int(workers)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--workers must be a positive number or 'auto', got {workers!r}")
    return n


def _shape_of_capture(calib, heads, kv_heads, head_dim, dtype):
    """heads, kv_heads, head_dim and dtype from the capture's header; a flag given on the command line
    must agree with it (dtype may differ: the capture is converted)."""
    from .tune.evaluate import captured_shape
    got = captured_shape(calib)
    ctx = click.get_current_context()
    given = dict(heads=heads, kv_heads=kv_heads, head_dim=int(head_dim), dtype=dtype)
    for name in ("heads", "kv_heads", "head_dim"):
        explicit = ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
        if explicit and given[name] != got[name]:
            raise ValueError(f"--{name.replace('_', '-')} {given[name]} but {calib} holds {got[name]}: "
                             f"leave it out (the capture's shape is used)")
    if ctx.get_parameter_source("dtype") == click.core.ParameterSource.DEFAULT:
        dtype = got["dtype"]
    return got["heads"], got["kv_heads"], str(got["head_dim"]), dtype


@main.command()
@click.option("--gpu", default="auto", show_default=True,
              help="Whose profile: 'auto' (the GPU present) or a name such as h100-sxm (no GPU needed).")
@click.option("--profile", "profile_path", default=None, help="Profile YAML (default: looked up, see below).")
@click.option("--shape", default=None, metavar="HEADS/KV_HEADS/HEAD_DIM[/DTYPE]",
              help="Say which entries a model of this shape would run, e.g. 28/4/128 (dtype: bfloat16).")
@click.option("--seqlen", default=None, callback=lambda c, p, v: v and parse_length(v),
              help="With --shape: the prompt length (prefix + chunk) to pick the entry for, e.g. 32k.")
@click.option("--json", "as_json", is_flag=True, help="The profile's entries as JSON.")
@one_line_errors
def show(gpu, profile_path, shape, seqlen, as_json):
    """Print a tuned profile as a table.

    Without --profile the profile is looked up, from any directory: $PBS_TUNE_HOME/configs,
    the user store (~/.local/share/pbs-tune/configs), then the profiles shipped with pbs-tune.

    \b
    Examples:
      pbs-tune show --gpu h100-sxm
      pbs-tune show --gpu h100-sxm --shape 28/4/128 --seqlen 32k
    """
    if seqlen is not None and shape is None:
        raise ValueError("--seqlen picks the entry a model shape runs at that length: give --shape too, "
                         "e.g. pbs-tune show --shape 32/8/128 --seqlen 32k")
    gpu_named = click.get_current_context().get_parameter_source("gpu") != click.core.ParameterSource.DEFAULT
    if profile_path is not None:  # the named file first; no GPU needed to read it
        prof = profiles.load(profile_path)
        gpu = _gpu_of_file(prof, gpu if gpu_named else None, shape is not None)
    else:
        try:
            gpu = resolve_gpu(gpu, must_be_present=False)
        except RuntimeError:
            raise ValueError("no GPU here: name one, e.g. pbs-tune show --gpu h100-sxm, "
                             "or a file: pbs-tune show --profile FILE") from None
        found = profile_store.find_profile(gpu)
        if found is None:
            raise ValueError(f"no profile for {gpu} (searched {profile_store.searched_folders()})")
        prof = profiles.load(found.path)
        if found.other_variant:
            click.echo(f"note: no profile of {gpu} ({found.where}); showing {found.path}, tuned on another variant "
                       f"of the family (other clocks and bandwidth: re-tune with pbs-tune sweep --gpu {gpu})", err=True)
    if not prof.entries:
        raise ValueError(f"{prof.path} holds no entries; make them with "
                         + profile_store.sweep_hint(gpu or "auto", prof.path))
    if as_json:
        click.echo(json.dumps(dict(profile=prof.path, entries=[e.to_dict() for e in prof.entries]), default=str))
        return
    if shape is not None:
        return _show_shape(prof, gpu, shape, seqlen)
    click.echo(f"{prof.path}: {len(prof.entries)} entries")
    for why in dict.fromkeys(e.not_tuned for e in prof.entries if e.not_tuned):
        click.echo(f"NOT TUNED: {why}; the loader runs PBS from "
                   f"{format_length(profiles.UNTUNED_MIN_SEQLEN)} tokens only")
    if profile_path and gpu and variant_in((e.gpu for e in prof.entries), gpu) not in (gpu, None):
        click.echo(f"note: {prof.path} has no entries of {gpu}; those of "
                   f"{variant_in((e.gpu for e in prof.entries), gpu)} serve it (same family, other clocks)", err=True)
    click.echo(f"{'len':>6} {'shape':>10} {'dtype':>8} {'block':>5} {'seg':>5} {'thr':>5} {'launch':>20} "
               f"{'ms':>9} {'rel_l2':>7} {'recall':>7} {'dens':>5} {'x cudnn':>7} {'x ref':>6}")
    for e in prof.entries:
        # Interpreter times order trials on a CPU; beside anything else they mean nothing.
        p, m, lc, s = e.params, e.measured, e.launch, e.info.get("speedup", {}) if e.gpu != CPU else {}
        launch = lc.label()
        shape = f"{e.heads}/{e.kv_heads}/{e.head_dim}"
        click.echo(f"{format_length(e.seqlen):>6} {shape:>10} {e.dtype:>8} "
                   f"{p.block_size:>5} {p.segment_size:>5} {profiles.describe_threshold(p.threshold)[1:]:>5} {launch:>20} "
                   f"{_measured(m, 'latency_ms', 9, 3)} {_measured(m, 'rel_l2', 7, 4)} "
                   f"{_measured(m, 'recall', 7, 4)} {_measured(m, 'density', 5, 3)} "
                   f"{s.get('vs_cudnn', '-'):>7} {s.get('vs_reference', '-'):>6}")
        if e.failed_check:
            click.echo(f"{'':>6} NEVER RUN (failed its held-out check): {e.failed_check}")
        held = e.info.get("held_out") or []
        for check in held if isinstance(held, list) else [held]:  # earlier profiles hold one dict
            speed = (f"{check['latency_ms']} ms, {check['speedup_vs_reference']}x the default"
                     if check.get("speedup_vs_reference") else "not timed (interpreter)")
            click.echo(f"{'':>6} held out ({check['source']}): rel_l2 {check['rel_l2']:.4f}, "
                       f"default {check['reference_rel_l2']:.4f}, {speed}")
            if profiles.describe_by_source(check):
                click.echo(f"{'':>8} by workload: {profiles.describe_by_source(check)}")
        chosen = e.info.get("launch_choice")
        if chosen:
            s = chosen["summary"][chosen["chosen"]]
            click.echo(f"{'':>6} launch judged on {len(chosen['sources'])} sources: {chosen['chosen']} "
                       f"(worst {s['worst']}x, geomean {s['geomean']}x the stock {chosen['stock']})")
        for idx, c in sorted(e.layers.items()):
            what = "dense" if c == profiles.DENSE else (
                f"{'permuted' if c[0].permute else 'unpermuted'} {c[0].estimator} "
                f"{profiles.describe_threshold(c[0].threshold)[1:]}")
            click.echo(f"{'':>6} layer {idx}: {what}")


def _gpu_of_file(prof, gpu, needed):
    """Whose entries of a named profile file `show` means: the --gpu given (the file must hold it or
    its family), else the file's only GPU; None when the file holds several and none is needed."""
    held = sorted({e.gpu for e in prof.entries})
    if gpu is not None:
        if gpu == "auto":
            gpu = resolve_gpu(gpu, must_be_present=False)
        if held and variant_in(held, gpu.lower()) is None:
            raise ValueError(f"{prof.path} has no entries for {gpu} (it holds {', '.join(held)}); "
                             f"leave --gpu out to show them all")
        return gpu.lower()
    if len(held) > 1 and needed:
        raise ValueError(f"{prof.path} holds entries of {', '.join(held)}: name one with --gpu")
    return held[0] if len(held) == 1 else None


def _show_shape(prof, gpu, shape, seqlen):
    """Which tuned shape and entries serve a model of `shape` on `gpu` (what the loader would pick)."""
    from .dtypes import NAMES
    parts = shape.split("/")
    try:
        heads, kv_heads, head_dim = (int(x) for x in parts[:3])
        dtype = parts[3] if len(parts) > 3 else "bfloat16"
    except ValueError:
        heads = None
    if heads is None or len(parts) not in (3, 4) or min(heads, kv_heads, head_dim) < 1 or heads % kv_heads \
            or dtype not in NAMES:
        raise ValueError(f"--shape {shape!r}: give HEADS/KV_HEADS/HEAD_DIM[/DTYPE] with HEADS a multiple of "
                         f"KV_HEADS, e.g. 28/4/128 or 9/3/64/float16")
    gpu = variant_in((e.gpu for e in prof.entries), gpu) or gpu
    serving = prof.nearest_shape(gpu=gpu, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)
    if serving is None:
        click.echo(f"{shape} on {gpu}: no entry of head_dim {head_dim} and {dtype} in {prof.path}: "
                   f"this model runs SDPA (tune it: pbs-tune sweep --heads {heads} --kv-heads {kv_heads} "
                   f"--head-dim {head_dim} --dtype {dtype})")
        return
    tuned = prof.for_shape(**serving)
    own = (serving["heads"], serving["kv_heads"]) == (heads, kv_heads)
    click.echo(f"{shape} on {gpu}: " + ("its own entries" if own else
               f"the entries of {serving['heads']}/{serving['kv_heads']}/{head_dim} (nearest GQA ratio)"))
    for e in tuned:
        if seqlen is None or e is prof.pick(seqlen, **serving):
            click.echo(f"  from {format_length(e.seqlen)} tokens: {profiles.describe_config(e.params, e.launch)}"
                       + (" (dense faster: SDPA)" if e.dense_faster else ""))
    if seqlen is not None and prof.pick(seqlen, **serving) is None:
        click.echo(f"  {format_length(seqlen)} is below the smallest tuned length ({format_length(tuned[0].seqlen)}): SDPA")


def _measured(m, key, width, digits):
    """A measured figure, or '-' for an entry that was planned rather than timed."""
    return f"{m[key]:{width}.{digits}f}" if key in m else f"{'-':>{width}}"


@main.command(name="compile")
@click.option("--profile", "profile_path", default=None,
              help="Profile YAML (default: <user store>/configs/<this GPU>.yaml).")
@click.option("--arch", "archs", default=None, metavar="80,89,90,100",
              help="Compute capabilities to build for, comma-separated; an arch other than this GPU's is built "
                   "without a GPU. [default: that of the profile's GPU, else this GPU's]")
@click.option("--kernels", "library", default=None,
              help="Library folder to add the kernels to (default: the profile's own, else cache/sm_<arch>/ "
                   "of its store, shared by the profiles of every GPU of this arch).")
@one_line_errors
def compile_cmd(profile_path, archs, library):
    """Build the compiled-kernel library of a profile, for this GPU's arch or a named one.

    \b
    Examples:
      pbs-tune compile --profile configs/h100-sxm.yaml
      pbs-tune compile --profile configs/a100-sxm.yaml --arch 80     # on any machine
    """
    from .runtime import cross_build, kernel_library
    from .runtime.gpu import arch_of

    gpu = present_gpu()
    here = None
    if gpu not in (None, CPU):
        import torch
        major, minor = torch.cuda.get_device_capability()
        here = major * 10 + minor
    if profile_path is None:
        if here is None:
            raise ValueError("no GPU here: name the profile, e.g. pbs-tune compile --profile configs/a100-sxm.yaml")
        profile_path = profile_store.default_profile_path(gpu)
    prof = profiles.load(profile_path)
    if not prof.entries:
        raise ValueError(f"{prof.path} has no entries")
    held = sorted({e.gpu for e in prof.entries})
    variant = (variant_in(held, gpu) if here else None) or held[0]
    wanted = _arch_list(archs) if archs else [arch_of(variant) or here]
    if None in wanted:
        raise ValueError(f"the arch of {variant} is not known here: name it, e.g. pbs-tune compile --profile "
                         f"{profile_path} --arch 80")
    if library and len(wanted) > 1:
        raise ValueError("--kernels names one library folder and a library holds one arch: give one --arch")
    prof = dataclasses.replace(prof, gpu=variant)
    if not prof.for_gpu(variant):
        click.echo(f"{profile_path}: no entry of {variant} can run (each failed its held-out check): nothing to compile")
        return
    for arch in wanted:
        folder = library or (prof.library if prof.library and arch == arch_of(variant) else
                             profile_store.default_library_dir(profile_path, arch))
        if arch == here:
            if variant != gpu:
                click.echo(f"note: building {variant}'s kernels on {gpu}; they load only where the arch is the same")
            manifest = kernel_library.build(prof, folder)
        else:
            manifest = cross_build.build_for_arch(profile_path, variant, folder, arch)
        if arch == arch_of(variant) or (arch == here and arch_of(variant) is None):
            profiles.merge_entries(profile_path, [], library=folder)  # the profile names its own arch's library
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        click.echo(f"compiled {variant}'s kernels for sm_{arch} into {folder}, now {len(manifest['kernels'])} kernels "
                   f"({size / 1024:.0f} KiB)" + ("" if arch == here else " (built without that GPU; never run here)"))


def _arch_list(text):
    try:
        archs = [int(a) for a in text.split(",") if a.strip()]
    except ValueError:
        archs = []
    if not archs or min(archs) < 70:
        raise ValueError(f"--arch {text!r}: give compute capabilities such as 80,89,90,100")
    return archs


@main.command()
@click.option("--profile", "profile_path", required=True, help="Profile YAML whose entries for this GPU are re-timed.")
@click.option("--out", "out_path", default=None,
              help="Profile YAML to write (default: <user store>/configs/<gpu>.yaml; may equal --profile).")
@click.option("--kernels", "library", default=None, help="Folder of the written profile's kernel library.")
@click.option("--no-compile", is_flag=True, help="Skip building the kernel library afterwards.")
@click.option("--sources", default="all", show_default=True, type=click.Choice(["all", "own"]),
              help="Judge each launch on every workload family and the next seed (all: never slower than the "
                   "stock launch anywhere beyond noise, then the best geometric mean), or on the entry's own "
                   "calibration data only (own: the fastest there).")
@one_line_errors
def relaunch(profile_path, out_path, library, no_compile, sources):
    """Re-choose each entry's launch (portable and Hopper attend kernels, persistent grids) on this
    GPU; block, segment, threshold and their error stay as tuned.

    \b
    Example (after an upgrade that adds a kernel):
      pbs-tune relaunch --profile configs/h100-sxm.yaml --out configs/h100-sxm.yaml
    """

    from .tune.relaunch import calibration_for, relaunch_entry, sources_for
    gpu = present_gpu()
    if gpu is None:
        raise ValueError("relaunch times kernels: it needs a CUDA GPU (or TRITON_INTERPRET=1 for a dry run)")
    on_gpu = gpu != CPU
    prof = profiles.load(profile_path)
    entries = prof.for_gpu(variant_in((e.gpu for e in prof.entries), gpu))
    if not entries:
        raise ValueError(f"{profile_path} has no entries for {gpu}")
    arch = None
    if on_gpu:
        import torch
        major, minor = torch.cuda.get_device_capability()
        arch = major * 10 + minor
    too_big = not on_gpu and next(filter(None, (interpreter_size_error(e.seqlen, e.heads) for e in entries)), None)
    if too_big:
        raise ValueError(f"{too_big}; relaunch {profile_path} on the GPU it was tuned on")
    new = []
    for e in entries:
        cal = calibration_for(e, device_for(gpu))
        updated = relaunch_entry(e, cal, arch=arch, on_gpu=on_gpu,
                                 sources=sources_for(e) if sources == "all" else None)
        summary = updated.info["relaunch"].get("summary")
        if summary:
            what = ", ".join(f"{k} worst {v['worst']}x geomean {v['geomean']}x" for k, v in summary.items())
        else:
            what = ", ".join(f"{k} {v:.3f} ms" for k, v in updated.info["relaunch"]["latency_ms"].items())
        click.echo(f"{format_length(e.seqlen):>6}: {what} -> {updated.launch.label()} "
                   f"({updated.info['speedup'].get('vs_cudnn', '-')}x cuDNN)")
        new.append(updated)
        del cal
    out_path = out_path or profile_store.default_profile_path(gpu)
    profiles.merge_entries(out_path, new, library=library)
    click.echo(f"wrote {len(new)} entries to {out_path}")
    if on_gpu and not no_compile:
        from .runtime.kernel_library import build_in_fresh_process
        build_in_fresh_process(out_path, library)


@main.command()
@click.option("--storage", default=None, help="Optuna RDB storage URL (default: the sweep's default).")
@click.option("--study", "study_name", required=True, help="Study to report (see `optuna studies`).")
@click.option("--out", "out_dir", default=None,
              help="Folder for PNG and markdown (default: the folder of a SQLite study, else the current one).")
@one_line_errors
def report(storage, study_name, out_dir):
    """Pareto plot (PNG) and a markdown table of a study's trials.

    \b
    Example:
      pbs-tune report --storage sqlite:///benchmarks/studies/h100.db --study h100-131072-32x8x128-bfloat16-mixed
    """
    from .tune.study_report import write_study_report
    from .tune.sweep import check_storage, sqlite_path
    storage = storage or profile_store.default_storage_url()
    db = sqlite_path(storage)
    if db is not None and not os.path.isfile(db):  # opening it would create an empty database
        raise ValueError(f"no study database at {db}: run pbs-tune sweep first, or name one with --storage")
    check_storage(storage)
    out_dir = out_dir or (os.path.dirname(os.path.abspath(db)) if db else os.getcwd())
    png, md = write_study_report(storage, study_name, out_dir)
    click.echo(f"wrote {png} and {md}")


@main.command()
@click.option("--model", required=True,
              help="Local transformers model folder (the trained fixture too), or 'smollm2'.")
@click.option("--gguf-file", default=None, help="A GGUF file inside --model to load (transformers' gguf_file=).")
@click.option("--gpu", default="auto", show_default=True, help="Must match the GPU present ('auto' reads it).")
@click.option("--seqlen", required=True, callback=lambda c, p, v: parse_length(v),
              help="Calibration length in tokens (e.g. 8k); the entry applies from this length up.")
@click.option("--text", "text_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Calibration text (6 x --seqlen tokens); default: installed Python sources of the calibration split.")
@click.option("--margin", default=0.95, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Each layer's error bound as a share of the reference threshold's.")
@click.option("--reference", default=0.9, show_default=True, type=click.Choice([str(t) for t in (0.8, 0.85, 0.9, 0.95)]),
              help="The uniform threshold the plans must match (error, heaviest keys, retrieval probes).")
@click.option("--probes", default=40, show_default=True, type=click.IntRange(min=0),
              help="Retrieval probe prompts (0: no probe).")
@click.option("--estimators", default="mean,lse", show_default=True, callback=_estimators, help=ESTIMATORS_HELP)
@click.option("--block-size", default=128, show_default=True, type=click.IntRange(min=16))
@click.option("--segment-size", default=256, show_default=True, type=click.IntRange(min=32))
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
    from .models.fixtures import load_model, python_sources, token_sequences
    progress.set_quiet(quiet)
    from .tune.model_plan import plan_model
    if segment_size % block_size:
        raise ValueError(f"--segment-size {segment_size} must be a multiple of --block-size {block_size}")
    gpu = _gpu_to_work_on(gpu)
    on_gpu = gpu != CPU
    profile_path = profile_path or profile_store.default_profile_path(gpu)
    if os.path.exists(profile_path):
        profiles.load(profile_path)  # fail now, not after the calibration
    net, tokenizer = load_model(model, gguf_file=gguf_file, dtype=dtype, device=device_for(gpu))
    too_big = not on_gpu and interpreter_size_error(seqlen, net.config.num_attention_heads)
    if too_big:
        raise ValueError(f"{too_big}; on this CPU plan at --seqlen {format_length(INTERPRETER_MAX_SEQLEN // 4)} "
                         f"or less with a small model, or run plan on a GPU")
    if tokenizer is None:
        raise ValueError(f"--model {model} has no tokenizer; plan needs one to build its retrieval probes")
    files = [text_file] if text_file else python_sources("calibration")
    seqs = token_sequences(tokenizer, files, seqlen, 6)
    entry, report = plan_model(net, tokenizer, seqs[:2], seqs[2:], margin=margin, reference=float(reference),
                               probes=probes, block_size=block_size, segment_size=segment_size,
                               estimators=estimators)
    click.echo("layer  permute  estimator  kept vs reference  error vs reference  thresholds per head")
    for row in report["allocation"]:
        click.echo(f"{row['layer']:>5}  {str(row['permute']):>7}  {row['estimator']:>9}  {row['calib_kept_ratio']:>17.3f}  "
                   f"{row['calib_per_head_rel_l2']:.4f} / {row['calib_default_rel_l2']:.4f}    "
                   f"{' '.join(f'{t:g}' for t in row['thresholds'])}")
    click.echo("retrieval probe: " + ", ".join(f"{r.get('margin', 'reference')}: {r['hits']}" for r in report["probe"]))
    profiles.merge_entries(profile_path, [entry])
    click.echo(f"wrote a plan for {len(entry.layers)} layers to {profile_path} (margin used {report['margin_used']})")
    if on_gpu and not no_compile:
        from .runtime.kernel_library import build_in_fresh_process
        build_in_fresh_process(profile_path, None)


@main.command()
@click.option("--model", required=True,
              help="Local transformers model folder (config + weights), or 'smollm2' (the packaged SmolLM2-135M).")
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
    from .tune.capture import capture_qkv
    progress.set_quiet(quiet)
    layer_ids = [int(x) for x in layers.split(",")] if layers else None
    n = capture_qkv(model, text_file, seqlen, out_file, layers=layer_ids, dtype=dtype, gguf_file=gguf_file,
                    sequences=sequences)
    click.echo(f"wrote {n} layers of Q/K/V ({sequences} sequence{'s' if sequences > 1 else ''}) to {out_file}")


if __name__ == "__main__":
    main(prog_name="pbs-tune")
