"""Study reports: a Pareto plot (latency vs error) and a markdown table of trials."""
import os

import optuna
from optuna.trial import TrialState

from ..runtime.profiles import describe_by_source
from .sweep import open_storage, pareto_front


def write_study_report(storage_url: str, study_name: str, out_dir: str):
    import matplotlib
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
             "| trial | ms | rel_l2 | recall | density | block | segment | threshold | launch | pareto |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    on_front = {t.number for t in front}
    for t in sorted(done, key=lambda t: t.values[0]):
        c, u, lc = t.user_attrs["config"], t.user_attrs, t.user_attrs["config"]["launch"]
        lines.append(f"| {t.number} | {t.values[0]:.3f} | {u['rel_l2']:.4f} | {u['recall']:.4f} | {u['density']:.3f} "
                     f"| {c['block_size']} | {c['segment_size']} | {c['threshold']:.3f} "
                     f"| {lc['block_m']}x{lc['block_n']} w{lc['num_warps']} s{lc['num_stages']} "
                     f"| {'yes' if t.number in on_front else ''} |")
    for t in failed:
        lines.append(f"| {t.number} | {t.state.name.lower()}: {t.user_attrs.get('fail_reason', '')} |"
                     " | | | | | | | |")
    held = sorted((v for k, v in study.user_attrs.items() if k.startswith("held_out:")), key=lambda v: v["trial"])
    if held:
        lines += ["", "Chosen trials checked on held-out data (not seen by the search):", "",
                  "| trial | held-out data | calibration rel_l2 | held-out rel_l2 | default's held-out rel_l2 "
                  "| held-out ms | default's ms | x default | within bound |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {h['trial']} | {h['source']} | {h['calibration_rel_l2']:.4f} | {h['rel_l2']:.4f} "
                  f"| {h['reference_rel_l2']} | {h['latency_ms'] or '-'} | {h['reference_latency_ms'] or '-'} "
                  f"| {h.get('speedup_vs_reference') or '-'} | {'yes' if h['within_bound'] else 'no'} |" for h in held]
        lines += [f"\nTrial {h['trial']} by workload: {describe_by_source(h)}." for h in held if describe_by_source(h)]
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return png, md
