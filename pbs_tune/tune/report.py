"""Everything a sweep, `show`, `plan` and `report` print: fronts, chosen entries, held-out checks,
profile tables and study reports. Functions return lines (or files); the callers print them.
Optuna and torch load only where a study is read: `show` reads a profile without them.
"""
import os

from .. import progress
from ..profile import profiles
from ..profile.params import describe_config, describe_threshold
from ..profile.provenance import HeldOutCheck
from ..profile.target import CPU, resolve_gpu, variant_in
from ..seqlen import format_length


def front_lines(front, spec) -> list:
    from .objective import within_bound
    from .space import TrialConfig
    lines = ["Pareto front (latency vs error; tail: the last query block's error):",
             f"  {'trial':>5} {'ms':>9} {'rel_l2':>8} {'tail':>8} {'recall':>7} {'density':>7}"
             "  block seg   thr  launch"]
    for t in front:
        cfg, u = TrialConfig.of_trial(t), t.user_attrs
        p, launch = cfg.params, cfg.launch
        flag = "" if within_bound(u, spec) else "  (over bound)"
        lines.append(f"  {t.number:>5} {t.values[0]:9.3f} {u['rel_l2']:8.4f} {_measured(u, 'tail_rel_l2', 8, 4)} "
                     f"{u['recall']:7.4f} {u['density']:7.3f}"
                     f"  {p.block_size:>5} {p.segment_size:>4} {p.threshold:.3f}  {launch.label()}{flag}")
    return lines


def entry_line(e) -> str:
    m = e.measured
    sp = " ".join(f"{k}={v}x" for k, v in e.provenance.speedup.items())
    tail = f", tail err {m['tail_rel_l2']}" if "tail_rel_l2" in m else ""
    ref = f"; {default_on_calibration(e)}" if "rel_l2" in e.provenance.reference else ""
    return (f"{e.describe()}: {m['latency_ms']} ms, err {m['rel_l2']}{tail}, recall {m['recall']}, "
            f"density {m['density']} {sp}".rstrip() + ref)


def default_on_calibration(e) -> str:
    """The published default's error on the entry's calibration data (its `reference` in the YAML),
    named so that it is not read as the default's error on held-out data."""
    return f"the default on the calibration data: rel_l2 {_err(e.provenance.reference['rel_l2'])}"


def _err(x) -> str:
    """An error as every line prints it (the console and `show` agree), '-' where not measured."""
    return "-" if x is None else f"{x:.4f}"


def say_default_bounds(spec, reference: dict, say) -> None:
    """The error bounds --max-error default set from the default's errors (objective.bound_by_default)."""
    from .objective import tail_bounds, whole_source_bounds  # here: `pbs-tune show` imports no torch
    tail, tail_by_source = tail_bounds(spec)
    say(f"error bound: the default's on this data, rel_l2 {spec.max_error:.5f}"
        + (f"; tail rel_l2 {tail:.5f} (the larger of the default's whole and tail errors)"
           if reference.get("tail_rel_l2") is not None else ""))
    if whole_source_bounds(spec):
        say("  and on each workload: " + ", ".join(f"{k} {v:.5f}" for k, v in whole_source_bounds(spec).items()))
    if tail_by_source:
        say("  tail on each workload: " + ", ".join(f"{k} {v:.5f}" for k, v in tail_by_source.items()))


def held_out_line(held: HeldOutCheck, spec) -> str:
    """A held-out check, with its tail figures where they were measured."""
    return (f"held out ({held.source}): rel_l2 {held.rel_l2:.4f} (calibration "
            f"{held.calibration_rel_l2:.4f}; the default there {_err(held.reference_rel_l2)}), "
            + (f"tail rel_l2 {held.tail_rel_l2:.4f} (calibration {_err(held.calibration_tail_rel_l2)}; "
               f"the default there {_err(held.reference_tail_rel_l2)}; bound {held.tail_bound:g}), "
               if held.tail_rel_l2 is not None else "")
            + f"{'within' if held.within_bound else 'OVER'} the bound "
            f"({'the default there' if spec.bound_default else spec.max_error}"
            + (f" on each workload: {held.by_source()}" if held.rel_l2_by_source else "") + "); "
            + (f"{held.speedup_vs_reference}x the default's speed" if held.speedup_vs_reference
               else "speed not compared (the interpreter's times mean nothing)"))


def launch_choice_line(choice, sources: int) -> str:
    s = choice.summary[choice.chosen]
    return (f"launch over {sources} sources: {choice.chosen} (searched {choice.searched}; worst {s['worst']}x, "
            f"geomean {s['geomean']}x the stock {choice.stock})")


class TrialProgress:
    """An Optuna callback: one line per finished trial, trials done and the best feasible latency."""

    def __init__(self, spec):
        self.spec = spec
        self.best = None

    def __call__(self, study, trial):
        from .objective import within_bound
        from .study import finished_count
        rel = trial.user_attrs.get("rel_l2")
        if trial.values and rel is not None and within_bound(trial.user_attrs, self.spec):
            if self.best is None or trial.values[0] < self.best[0]:
                self.best = (trial.values[0], rel)
        done = finished_count(study)
        best = f"{self.best[0]:.3f} ms (err {self.best[1]:.4f})" if self.best else "none yet"
        bar = "#" * int(20 * min(done, self.spec.trials) / self.spec.trials)
        progress.say(f"[{bar:<20}] {done}/{self.spec.trials} trials, best feasible: {best}")


def _measured(m, key, width, digits):
    """A measured figure, or '-' for an entry that was planned rather than timed (or, for the tail
    error, measured before it was)."""
    return f"{m[key]:{width}.{digits}f}" if m.get(key) is not None else f"{'-':>{width}}"


def gpu_of_file(prof, gpu, needed):
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


def parse_shape(shape):
    """(heads, kv_heads, head_dim, dtype) of HEADS/KV_HEADS/HEAD_DIM[/DTYPE]."""
    from ..dtypes import NAMES
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
    return heads, kv_heads, head_dim, dtype


def profile_table(prof) -> list:
    """`pbs-tune show`: a line per entry, with its checks, launch choice and layer plans below it."""
    lines = [f"{prof.path}: {len(prof.entries)} entries"]
    for why in dict.fromkeys(e.not_tuned for e in prof.entries if e.not_tuned):
        lines.append(f"NOT TUNED: {why}; the loader runs PBS from "
                     f"{format_length(profiles.UNTUNED_MIN_SEQLEN)} tokens only")
    lines.append(f"{'len':>6} {'shape':>10} {'dtype':>8} {'block':>5} {'seg':>5} {'thr':>5} {'launch':>20} "
                 f"{'ms':>9} {'rel_l2':>7} {'tail':>7} {'recall':>7} {'dens':>5} {'x cudnn':>7} {'x ref':>6}")
    for e in prof.entries:
        # Interpreter times order trials on a CPU; beside anything else they mean nothing.
        p, m, s = e.params, e.measured, e.provenance.speedup if e.gpu != CPU else {}
        shape = f"{e.heads}/{e.kv_heads}/{e.head_dim}"
        lines.append(f"{format_length(e.seqlen):>6} {shape:>10} {e.dtype:>8} "
                     f"{p.block_size:>5} {p.segment_size:>5} {describe_threshold(p.threshold)[1:]:>5} "
                     f"{e.launch.label():>20} {_measured(m, 'latency_ms', 9, 3)} {_measured(m, 'rel_l2', 7, 4)} "
                     f"{_measured(m, 'tail_rel_l2', 7, 4)} {_measured(m, 'recall', 7, 4)} "
                     f"{_measured(m, 'density', 5, 3)} "
                     f"{s.get('vs_cudnn', '-'):>7} {s.get('vs_reference', '-'):>6}")
        if "rel_l2" in e.provenance.reference:
            lines.append(f"{'':>6} {default_on_calibration(e)}")
        if e.failed_check:
            lines.append(f"{'':>6} NEVER RUN (failed its held-out check): {e.failed_check}")
        for check in e.provenance.held_out:
            speed = (f"{check.latency_ms} ms, {check.speedup_vs_reference}x the default"
                     if check.speedup_vs_reference else "not timed (interpreter)")
            tail = (f"tail rel_l2 {check.tail_rel_l2:.4f} (the default there {_err(check.reference_tail_rel_l2)}), "
                    if check.tail_rel_l2 is not None else "")
            lines.append(f"{'':>6} held out ({check.source}): rel_l2 {check.rel_l2:.4f}, "
                         f"the default there {_err(check.reference_rel_l2)}, {tail}{speed}")
            if check.by_source():
                lines.append(f"{'':>8} by workload: {check.by_source()}")
        if e.provenance.launch_choice:
            lines.append(f"{'':>6} launch judged on " + e.provenance.launch_choice.describe())
        for idx, c in sorted(e.layers.items()):
            what = "dense" if c == profiles.DENSE else (
                f"{'permuted' if c[0].permute else 'unpermuted'} {c[0].estimator} "
                f"{describe_threshold(c[0].threshold)[1:]}")
            lines.append(f"{'':>6} layer {idx}: {what}")
    return lines


def shape_lines(prof, gpu, shape: str, heads, kv_heads, head_dim, dtype, seqlen=None) -> list:
    """`pbs-tune show --shape`: which tuned shape and entries serve a model of this shape on `gpu`
    (what the loader would pick)."""
    gpu = variant_in((e.gpu for e in prof.entries), gpu) or gpu
    serving = prof.nearest_shape(gpu=gpu, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)
    if serving is None:
        return [f"{shape} on {gpu}: no entry of head_dim {head_dim} and {dtype} in {prof.path}: "
                f"this model runs SDPA (tune it: pbs-tune sweep --heads {heads} --kv-heads {kv_heads} "
                f"--head-dim {head_dim} --dtype {dtype})"]
    tuned = prof.for_shape(**serving)
    own = (serving["heads"], serving["kv_heads"]) == (heads, kv_heads)
    lines = [f"{shape} on {gpu}: " + ("its own entries" if own else
             f"the entries of {serving['heads']}/{serving['kv_heads']}/{head_dim} (nearest GQA ratio)")]
    for e in tuned:
        if seqlen is None or e is prof.pick(seqlen, **serving):
            lines.append(f"  from {format_length(e.seqlen)} tokens: {describe_config(e.params, e.launch)}"
                         + (" (dense faster: SDPA)" if e.dense_faster else ""))
    if seqlen is not None and prof.pick(seqlen, **serving) is None:
        lines.append(f"  {format_length(seqlen)} is below the smallest tuned length "
                     f"({format_length(tuned[0].seqlen)}): SDPA")
    return lines


def plan_lines(report: dict) -> list:
    """`pbs-tune plan`: each layer's allocation and the retrieval probe."""
    lines = ["layer  permute  estimator  kept vs reference  error vs reference  thresholds per head"]
    for row in report["allocation"]:
        lines.append(f"{row['layer']:>5}  {str(row['permute']):>7}  {row['estimator']:>9}  "
                     f"{row['calib_kept_ratio']:>17.3f}  {row['calib_per_head_rel_l2']:.4f} / "
                     f"{row['calib_default_rel_l2']:.4f}    {' '.join(f'{t:g}' for t in row['thresholds'])}")
    lines.append("retrieval probe: " + ", ".join(f"{r.get('margin', 'reference')}: {r['hits']}"
                                                 for r in report["probe"]))
    return lines


def write_study_report(storage_url: str, study_name: str, out_dir: str):
    import matplotlib
    import optuna
    from optuna.trial import TrialState

    from .storage import open_storage
    from .study import pareto_front
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:
        raise ValueError(f"no study named {study_name!r} in {storage_url}") from None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise ValueError(f"study {study_name!r} has no completed trials")
    max_error = study.user_attrs.get("max_error")
    front = pareto_front(study)
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{study_name}-pareto.png")
    md = os.path.join(out_dir, f"{study_name}.md")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=12, c="0.6", label="trials")
    ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", c="C3", label="Pareto front")
    if max_error is not None:
        ax.axvline(max_error, ls="--", c="C0", label=f"error bound {max_error}")
    ax.set_xlabel("relative L2 error vs dense")
    ax.set_ylabel("latency (ms)")
    ax.set_title(study_name, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED))
    lines = [f"# Study `{study_name}`", "",
             f"{len(done)} completed, {len(failed)} failed or pruned trials; error bound {max_error}.", "",
             "tail rel_l2: the error of the last query block, the rows a prefill returns logits for.", "",
             "| trial | ms | rel_l2 | tail rel_l2 | recall | density | block | segment | threshold | launch | pareto |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    on_front = {t.number for t in front}
    for t in sorted(done, key=lambda t: t.values[0]):
        c, u, lc = t.user_attrs["config"], t.user_attrs, t.user_attrs["config"]["launch"]
        lines.append(f"| {t.number} | {t.values[0]:.3f} | {u['rel_l2']:.4f} | {_measured(u, 'tail_rel_l2', 0, 4)} "
                     f"| {u['recall']:.4f} | {u['density']:.3f} "
                     f"| {c['block_size']} | {c['segment_size']} | {c['threshold']:.3f} "
                     f"| {lc['block_m']}x{lc['block_n']} w{lc['num_warps']} s{lc['num_stages']} "
                     f"| {'yes' if t.number in on_front else ''} |")
    for t in failed:
        lines.append(f"| {t.number} | {t.state.name.lower()}: {t.user_attrs.get('fail_reason', '')} |"
                     " | | | | | | | | |")
    held = sorted((HeldOutCheck.from_dict(v) for k, v in study.user_attrs.items() if k.startswith("held_out:")),
                  key=lambda h: h.trial)
    if held:
        lines += ["", "Chosen trials checked on held-out data (not seen by the search):", "",
                  "| trial | held-out data | calibration rel_l2 | held-out rel_l2 | default's held-out rel_l2 "
                  "| held-out tail rel_l2 | default's held-out tail rel_l2 "
                  "| held-out ms | default's ms | x default | within bound |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {h.trial} | {h.source} | {h.calibration_rel_l2:.4f} | {h.rel_l2:.4f} "
                  f"| {h.reference_rel_l2} | {_measured(vars(h), 'tail_rel_l2', 0, 4)} "
                  f"| {'-' if h.reference_tail_rel_l2 is None else h.reference_tail_rel_l2} "
                  f"| {h.latency_ms or '-'} | {h.reference_latency_ms or '-'} "
                  f"| {h.speedup_vs_reference or '-'} | {'yes' if h.within_bound else 'no'} |"
                  for h in held]
        lines += [f"\nTrial {h.trial} by workload: {h.by_source()}." for h in held if h.by_source()]
        lines += [f"\nTrial {h.trial} tail by workload: {h.tail_by_source()}." for h in held if h.tail_by_source()]
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return png, md
