#!/usr/bin/env python3
"""Draw suite.png from suite.json: latency percentiles and throughput per target (needs only matplotlib).

    python benchmarks/suite_plot.py benchmarks/results/suite.json benchmarks/results/suite.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(json_path: str, png_path: str) -> None:
    with open(json_path) as fh:
        results = json.load(fh)
    targets = [t for t in results["targets"] if t.get("available")]
    names = [t["name"].replace("tollhouse-", "th-") for t in targets]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))

    def bars(ax, series, title, ylabel, log=False):  # series: {label: [value per target]}
        width = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
            ax.bar(xs, [v or 0 for v in values], width, label=label)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    def get(t, scenario, *keys):
        value = t["scenarios"].get(scenario)
        for key in keys:
            value = (value or {}).get(key)
        return value

    bars(axes[0], {p: [get(t, "c1", "target", f"{p}_ms") for t in targets] for p in ("p50", "p90", "p99")},
         "latency, concurrency 1", "ms (log)", log=True)
    bars(axes[1], {p: [get(t, "c32", f"{p}_ms") for t in targets] for p in ("p50", "p90", "p99")},
         "latency, concurrency 32 (wrk)", "ms (log)", log=True)
    bars(axes[2], {"c=32 chat": [get(t, "c32", "requests_per_s") for t in targets],
                   "mixed": [get(t, "mixed", "requests_per_s") for t in targets]},
         "throughput", "requests/s (log)", log=True)
    m = results["machine"]
    fig.suptitle(f"Tollhouse benchmark suite, {m['date']}, {m['nproc']} CPUs ({m['cpu_model']}), "
                 f"{'quick' if results['quick'] else 'full'} run")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
