"""Kept for developers: after a sweep changes configs/, it redraws the profiles' report.

Render the tuned profiles into a markdown table and a PNG plot, and put the table in benchmarks/README.md.

Usage: python scripts/render_profiles.py [configs/h100-sxm.yaml configs/h200-sxm.yaml ...]
Writes benchmarks/results/report.md and benchmarks/results/report.png, and replaces the
text between the report markers in benchmarks/README.md.
"""
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pbs_tune.profile import profiles  # noqa: E402
from pbs_tune.profile.params import describe_config  # noqa: E402
from pbs_tune.seqlen import format_length  # noqa: E402

START, END = "<!-- report:start -->", "<!-- report:end -->"
RESULTS_README = "benchmarks/README.md"


def table(entries):
    e0 = entries[0]
    p0 = e0.provenance
    v = p0.versions
    lines = [f"**{e0.gpu.upper()}** — {e0.heads}/{e0.kv_heads} heads, D {e0.head_dim}, {e0.dtype}, "
             f"workload `{p0.calibration}`, error bound {p0.max_error}; torch {v['torch']}, "
             f"triton {v['triton']}, {p0.date}", "",
             "| length | SDPA cuDNN ms | SDPA flash ms | reference ms (err, density) | tuned ms (err, density) "
             "| tuned config | × cuDNN | × flash | × reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        b, r, m, s = e.provenance.baselines.to_dict(), e.provenance.reference, e.measured, e.provenance.speedup
        note = " (dense faster: loader uses SDPA)" if e.dense_faster else ""
        lines.append(
            f"| {format_length(e.seqlen)} | {b.get('cudnn_ms', float('nan')):.2f} "
            f"| {b.get('flash_ms', float('nan')):.2f} "
            f"| {r['latency_ms']:.2f} ({r['rel_l2']:.3f}, {r['density']:.2f}) "
            f"| {m['latency_ms']:.2f} ({m['rel_l2']:.3f}, {m['density']:.2f}) "
            f"| {describe_config(e.params, e.launch)}{note} "
            f"| {s.get('vs_cudnn', float('nan')):.2f} | {s.get('vs_flash', float('nan')):.2f} "
            f"| {s.get('vs_reference', float('nan')):.2f} |")
    return "\n".join(lines)


def plot(groups, path):
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (gpu, entries) in zip(axes[0], groups):
        n = [e.seqlen for e in entries]
        series = {"SDPA cuDNN": [e.provenance.baselines.cudnn_ms for e in entries],
                  "SDPA flash": [e.provenance.baselines.flash_ms for e in entries],
                  "PBS reference (b128 s256 τ0.9)": [e.provenance.reference["latency_ms"] for e in entries],
                  "PBS tuned": [e.measured["latency_ms"] for e in entries]}
        for label, ys in series.items():
            ax.plot(n, ys, "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(n, [format_length(x) for x in n])
        ax.set_xlabel("sequence length")
        ax.set_ylabel("attention prefill, ms (one layer, 32 heads)")
        ax.set_title(f"{gpu.upper()} bf16, mixed workload")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(paths):
    groups = []
    for path in paths:
        prof = profiles.load(path)
        by_gpu = {}
        for e in prof.entries:
            by_gpu.setdefault(e.gpu, []).append(e)
        groups += [(gpu, sorted(es, key=lambda e: e.seqlen)) for gpu, es in sorted(by_gpu.items())]
    os.makedirs("benchmarks/results", exist_ok=True)
    md = "\n\n".join(table(es) for _, es in groups)
    with open("benchmarks/results/report.md", "w") as f:
        f.write(md + "\n\n![latency per length](report.png)\n")
    md += "\n\n![latency per length](results/report.png)\n"
    plot(groups, "benchmarks/results/report.png")
    if os.path.exists(RESULTS_README):
        text = open(RESULTS_README).read()
        if START in text and END in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{md}\n{END}", text,
                          flags=re.S)
            with open(RESULTS_README, "w") as f:
                f.write(text)
    print("wrote benchmarks/results/report.md, benchmarks/results/report.png")


if __name__ == "__main__":
    main(sys.argv[1:] or ["configs/h100-sxm.yaml", "configs/h200-sxm.yaml"])
