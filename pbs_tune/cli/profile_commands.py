"""The commands that read, build, check and re-time profiles: show, compile, verify, relaunch, report."""
import json
import os

import click

from ..profile import profiles
from ..profile import store as profile_store
from ..profile.target import CPU, present_gpu, resolve_gpu, variant_in
from ..seqlen import parse_length
from .options import one_line_errors


@click.command()
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
    from ..tune import report
    gpu_named = click.get_current_context().get_parameter_source("gpu") != click.core.ParameterSource.DEFAULT
    if profile_path is not None:  # the named file first; no GPU needed to read it
        prof = profiles.load(profile_path)
        gpu = report.gpu_of_file(prof, gpu if gpu_named else None, shape is not None)
    else:
        try:
            gpu = resolve_gpu(gpu, must_be_present=False)
        except RuntimeError:
            raise ValueError("no GPU here: name one, e.g. pbs-tune show --gpu h100-sxm, "
                             "or a file: pbs-tune show --profile FILE") from None
        found = profile_store.find_profile(gpu)
        if found is None:
            held = profile_store.profiles_held()
            raise ValueError(f"no profile for {gpu} (searched {profile_store.searched_folders()}); "
                             + (f"profiles here: {', '.join(held)} (pbs-tune show --gpu NAME), or make one on "
                                f"that GPU: pbs-tune sweep --gpu {gpu}" if held else f"make one on that GPU: "
                                f"pbs-tune sweep --gpu {gpu}"))
        prof = profiles.load(found.path)
        if found.other_variant:
            made = "made" if any(e.not_tuned for e in prof.entries) else "tuned"
            click.echo(f"note: no profile of {gpu} ({found.where}); showing {found.path}, {made} for another variant "
                       f"of the family (other clocks and bandwidth: tune with pbs-tune sweep --gpu {gpu})", err=True)
    if not prof.entries:
        raise ValueError(f"{prof.path} holds no entries; make them with "
                         + profile_store.sweep_hint(gpu or "auto", prof.path))
    if as_json:
        click.echo(json.dumps(dict(profile=prof.path, entries=[e.to_dict() for e in prof.entries]), default=str))
        return
    if shape is not None:
        for line in report.shape_lines(prof, gpu, shape, *report.parse_shape(shape), seqlen=seqlen):
            click.echo(line)
        return
    if profile_path and gpu and variant_in((e.gpu for e in prof.entries), gpu) not in (gpu, None):
        click.echo(f"note: {prof.path} has no entries of {gpu}; those of "
                   f"{variant_in((e.gpu for e in prof.entries), gpu)} serve it (same family, other clocks)", err=True)
    for line in report.profile_table(prof):
        click.echo(line)


@click.command(name="compile")
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
    from ..runtime.library_build import compile_profile, parse_archs
    compile_profile(profile_path, parse_archs(archs) if archs else None, library, say=click.echo)


@click.command()
@click.option("--profile", "profile_paths", multiple=True,
              help="Profile YAML whose calls are run (repeat for profiles sharing one library; default: "
                   "<user store>/configs/<this GPU>.yaml).")
@click.option("--kernels", "library", default=None, help="Library folder (default: the first profile's).")
@one_line_errors
def verify(profile_paths, library):
    """Run a kernel library's kernels on this GPU against Triton's JIT and stamp those that match.

    The loader binds only stamped kernels; `compile` runs this itself after a build for this GPU.
    A library of another arch is checked through its PTX (same build), which this GPU can run.

    \b
    Examples:
      pbs-tune verify --profile configs/h100-sxm.yaml --profile configs/h200-sxm.yaml
      pbs-tune verify --profile configs/a100-sxm.yaml      # on an H100: the sm_80 build's PTX
    """
    from ..runtime.library_verify import verify as run_verify
    if not profile_paths:
        gpu = present_gpu()
        if gpu in (None, CPU):
            raise click.ClickException("verifying a kernel library needs a CUDA GPU")
        profile_paths = (profile_store.default_profile_path(gpu),)
    res = run_verify(list(profile_paths), library, say=click.echo)
    if res["failed"]:
        raise click.ClickException(f"{len(res['failed'])} kernels did not match the JIT: they stay unverified")


@click.command()
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

    from ..tune.relaunch import relaunch_profile
    out_path = out_path or profile_store.default_profile_path(present_gpu() or CPU)
    relaunch_profile(profile_path, out_path, sources=sources, say=click.echo)
    if present_gpu() not in (None, CPU) and not no_compile:
        from ..runtime.library_build import build_in_fresh_process
        build_in_fresh_process(out_path, library)


@click.command()
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
    from ..tune.report import write_study_report
    from ..tune.storage import check_storage, sqlite_path
    storage = storage or profile_store.default_storage_url()
    db = sqlite_path(storage)
    if db is not None and not os.path.isfile(db):  # opening it would create an empty database
        raise ValueError(f"no study database at {db}: run pbs-tune sweep first, or name one with --storage")
    check_storage(storage)
    out_dir = out_dir or (os.path.dirname(os.path.abspath(db)) if db else os.getcwd())
    png, md = write_study_report(storage, study_name, out_dir)
    click.echo(f"wrote {png} and {md}")
