"""Plot the soak's resident memory from benchmarks.lsp_fuzz results (pip install -e ".[bench]"),
one curve per result, labelled with its commit.

    python -m benchmarks.plot_soak_rss benchmarks/results/lsp_soak_10k.json docs/reliability_soak_rss.png
    python -m benchmarks.plot_soak_rss A.json B.json docs/reliability_soak_rss.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(sources: list[str], target: str) -> None:
    figure, axes = plt.subplots(figsize=(7, 3.4))
    for source in sources:
        result = json.loads(open(source).read())  # noqa: SIM115
        soak = result["soak"]
        points = [(i, mb) for i, mb in soak["rss_mb"] if isinstance(i, int) and mb]
        label = (f"{result.get('commit', '?')[:7]}: {soak['completions']:,} completions, "
                 f"first to last {soak['rss_growth_first_to_last']:+.1%}")
        line, = axes.plot([i for i, _ in points], [mb for _, mb in points], label=label)
        axes.axhline(result["rss_mb_ready"], color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xlabel("inline completions (20 % cancelled); dotted: RSS when ready")
    axes.set_ylabel("resident memory (MB)")
    axes.set_ylim(bottom=0)
    axes.set_title("dgemma-ls soak: resident memory")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(target, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1:-1], sys.argv[-1])
