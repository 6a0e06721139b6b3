"""The report's one chart of its own: robustness (mAP50-95 relative to clean, per corruption and
severity), drawn from `robustness/robustness.json` when the run carries no picture of it.

matplotlib with the Agg backend (no display); the figure is closed after rendering, so a
long-running API process does not accumulate figures.
"""

from __future__ import annotations

import io


def robustness_chart(robustness: dict, champion_mean: float | None = None) -> bytes:
    """PNG: one line per corruption, its ratio to clean mAP50-95 against severity; the clean
    level at 1 and, when known, the champion's mean ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_corruption: dict[str, list[tuple[int, float]]] = {}
    for row in robustness.get("results", []):
        try:
            point = (int(row["severity"]), float(row["ratio"]))
        except (KeyError, TypeError, ValueError):
            continue
        by_corruption.setdefault(str(row.get("corruption", "?")), []).append(point)
    fig, ax = plt.subplots(figsize=(7.2, 3.0), dpi=150)
    try:
        cmap = plt.get_cmap("tab10")
        top = 1.05
        for i, (name, points) in enumerate(sorted(by_corruption.items())):
            points.sort()
            xs, ys = zip(*points)
            top = max(top, max(ys) + 0.05)
            ax.plot(xs, ys, marker="o", lw=1.8, ms=4, color=cmap(i % 10), label=name)
        ax.axhline(1.0, color="#555", lw=1, ls="--", label="clean")
        mean = robustness.get("mean_ratio")
        if isinstance(mean, (int, float)):
            ax.axhline(mean, color="#1f6feb", lw=1, ls=":", label=f"mean {mean:.2f}")
        if champion_mean is not None:
            ax.axhline(champion_mean, color="#b35900", lw=1, ls="-.",
                       label=f"champion mean {champion_mean:.2f}")
        severities = sorted({x for pts in by_corruption.values() for x, _ in pts})
        if severities:
            ax.set_xticks(severities)
        ax.set_xlabel("severity")
        ax.set_ylabel("mAP50-95 / clean")
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
