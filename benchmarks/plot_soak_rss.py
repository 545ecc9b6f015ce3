"""Plot the soak's resident memory from a benchmarks.lsp_fuzz result (pip install -e ".[bench]").

    python -m benchmarks.plot_soak_rss benchmarks/results/lsp_fuzz_4000.json docs/reliability_soak_rss.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    result = json.loads(open(source).read())  # noqa: SIM115
    points = [(i, mb) for i, mb in result["soak"]["rss_mb"] if isinstance(i, int) and mb]
    figure, axes = plt.subplots(figsize=(7, 3.2))
    axes.plot([i for i, _ in points], [mb for _, mb in points], marker=".", label="soak RSS")
    axes.axhline(result["rss_mb_ready"], color="grey", linestyle="--", label="ready")
    axes.set_xlabel("inline completions (20 % cancelled)")
    axes.set_ylabel("resident memory (MB)")
    axes.set_ylim(bottom=0)
    axes.set_title(f"dgemma-ls soak, {result['soak']['completions']} completions "
                   f"(growth first to last {result['soak']['rss_growth_first_to_last']:+.1%})")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(target, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
