"""A PNG of predicted latency against bandwidth for each kept split of a plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tandem.contracts.plan import Plan

__all__ = ["plot_plan"]


def plot_plan(plan: Plan, path: str | Path, *, points: int = 200) -> Path:
    """Draw every kept split's predicted latency (best verified codec) over the swept bandwidths.

    The x axis is logarithmic. Edge-only and cloud-only are dashed; the
    lower envelope (what the plan would pick at each bandwidth) is a thick
    grey line; the configured bandwidths are marked with the chosen split.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = plan.search.sweep_mbps
    bandwidths = np.logspace(np.log10(low), np.log10(high), points)
    rtt = plan.link.rtt_ms
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    envelope = np.full(points, np.inf)
    for split in plan.splits:
        verified = [c.codec for c in split.codecs if c.verified]
        if not verified:
            continue
        curve = np.array([min(split.predict_ms(c, bw, rtt) for c in verified) for bw in bandwidths])
        envelope = np.minimum(envelope, curve)
        style = "--" if split.kind != "split" else "-"
        width = 2.0 if split.kind != "split" else 1.2
        axes.plot(bandwidths, curve, style, linewidth=width, label=f"{split.id} ({split.edge_nodes} edge nodes)")
    axes.plot(bandwidths, envelope, color="grey", linewidth=6, alpha=0.35, label="best kept split")
    for choice in plan.choices:
        axes.scatter([choice.bandwidth_mbps], [choice.latency_ms], color="black", zorder=5)
        axes.annotate(
            f"{choice.split}\n{choice.codec}",
            (choice.bandwidth_mbps, choice.latency_ms),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=7,
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("bandwidth (Mbit/s)")
    axes.set_ylabel("predicted latency (ms)")
    axes.set_title(
        f"{plan.model.name}: edge {plan.edge.name} [{plan.edge.source}], cloud {plan.cloud.name} "
        f"[{plan.cloud.source}], RTT {rtt:g} ms",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
