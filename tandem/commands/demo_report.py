"""The demo's verdict: per phase what the agents chose against what the plan predicted, labels, agreement, a plot."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.commands.demo import DemoConfig
    from tandem.commands.demo_world import Link

__all__ = ["judge_phases", "report"]

OUTAGE = "hub outage"


def _kind(split_id: str, kinds: Mapping[str, str] | None = None) -> str:
    """The story's kind of a split (``kinds`` from :func:`story_kinds`), else what its name says."""
    if kinds and split_id in kinds:
        return kinds[split_id]
    return split_id if split_id in ("cloud-only", "edge-only") else "cut"


def phase_of(config: DemoConfig, t: float) -> int | None:
    """Index of the phase in force at ``t``; None inside the outage (from the kill until ``settle_s`` after restart)."""
    outage = config.outage
    if outage and outage.at_s <= t < outage.at_s + outage.duration_s + config.settle_s:
        return None
    return max((i for i, phase in enumerate(config.phases) if phase.at_s <= t), default=0)


def judge_phases(
    config: DemoConfig, links: list[Link], records: list[dict[str, Any]], kinds: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per phase: the split the plan predicts, the one the agents used most once settled, and whether they agree.

    Answers in a phase's first ``settle_s`` seconds (the agents are still
    measuring the new link) and during the outage and its recovery are left
    out. A cut stands for any cut. A phase whose predicted lead is below the
    hysteresis plus the safety margin is reported but not judged.
    """
    from tandem.commands.demo import DEMO_MIN_GAIN
    from tandem.commands.demo_world import SAFETY

    verdicts = []
    for i, (phase, link) in enumerate(zip(config.phases, links, strict=True)):
        settled = [
            r
            for r in records
            if phase_of(config, r["t"]) == i and r["t"] >= phase.at_s + config.settle_s and not r["degraded"]
        ]
        used = Counter(r["split"] for r in settled)
        most = used.most_common(1)[0][0] if used else ""
        judged = link.gain >= DEMO_MIN_GAIN + SAFETY
        verdicts.append(
            {
                "phase": phase.label,
                "at_s": phase.at_s,
                "bandwidth_mbps": phase.bandwidth_mbps,
                "rtt_ms": phase.rtt_ms,
                "predicted": link.split_id,
                "predicted_ms": round(link.predicted_ms, 2),
                "lead": round(link.gain, 3),
                "used": dict(used),
                "shown": bool(most) and _kind(most, kinds) == _kind(link.split_id, kinds),
                "judged": judged,
            }
        )
    return verdicts


def _outage_check(config: DemoConfig, records: list[dict[str, Any]], hub_back_at: float | None) -> dict[str, Any]:
    outage = config.outage
    if outage is None:
        return {"fallback": True, "resumed": True, "local_answers": 0}
    down = [r for r in records if outage.at_s <= r["t"] < outage.at_s + outage.duration_s]
    back = hub_back_at if hub_back_at is not None else outage.at_s + outage.duration_s
    after = [r for r in records if r["t"] >= back and r["source"] == "hub"]
    local = sum(r["source"] == "fallback" for r in down)
    return {
        "fallback": local > 0,
        "resumed": bool(after),
        "local_answers": local,
        "hub_back_at_s": round(back, 2),
        "hub_answers_after": len(after),
        "resumed_after_s": round(min(r["t"] for r in after) - back, 2) if after else None,
    }


def report(
    config: DemoConfig,
    links: list[Link],
    photos: list[dict[str, Any]],
    records: list[dict[str, Any]],
    work: Path,
    elapsed_s: float,
    hub_back_at: float | None = None,
    kinds: Mapping[str, str] | None = None,
) -> int:
    """Print the verdict, write demo-summary.json and demo.png; 0 when the demo showed what it promises."""
    verdicts = judge_phases(config, links, records, kinds)
    _print_table(config, verdicts, records)
    _print_labels(photos, records, kinds)
    per_agent = Counter(r["agent"] for r in records)
    exactly_once = bool(records) and all(
        sorted(r["seq"] for r in records if r["agent"] == a) == list(range(n)) for a, n in per_agent.items()
    )
    agreeing = sum(r["label"] == r["reference_label"] for r in records)
    agreement = agreeing / len(records) if records else 0.0
    worst = max((r["rel_error"] for r in records), default=0.0)
    overruns = sum("emulation_overrun_ms" in r["timing"] for r in records)
    outage = _outage_check(config, records, hub_back_at)
    print(f"\nanswers: {len(records)}, each request answered exactly once: {exactly_once}")
    print(
        f"top-1 agreement with the unsplit fp32 model: {agreeing}/{len(records)} = {agreement:.1%} "
        f"(hub, edge and local answers; codec {config.codec}); max |answer - unsplit| / max |unsplit| = {worst:.2e}"
    )
    print(f"edge runs that took longer than the emulated device (emulation_overrun): {overruns}")
    if config.outage:
        print(
            f"hub outage: {outage['local_answers']} degraded local answers while it was down; split inference "
            + (f"resumed {outage['resumed_after_s']:.1f} s after the restarted hub listened" if outage["resumed"]
               else "did NOT resume after the restart")
        )  # fmt: skip
    failures = [
        f"phase {v['phase']!r}: the plan predicts {v['predicted']}, the agents used {v['used'] or 'nothing'}"
        for v in verdicts
        if v["judged"] and not v["shown"]
    ]
    failures += [] if exactly_once else ["some request was not answered exactly once"]
    failures += [] if outage["fallback"] else ["no degraded local answer while the hub was down"]
    failures += [] if outage["resumed"] else ["no hub answer after the hub's restart"]
    if agreement < config.min_agreement:
        failures.append(f"top-1 agreement {agreement:.1%} is under min_agreement {config.min_agreement:.0%}")
    summary = {
        "model": config.model,
        "codec": config.codec,
        "elapsed_s": round(elapsed_s, 1),
        "phases": verdicts,
        "kinds": kinds or {},
        "outage": outage,
        "exactly_once": exactly_once,
        "top1_agreement": agreement,
        "max_rel_error": worst,
        "emulation_overrun": overruns,
        "failures": failures,
        "records": records,
    }
    (work / "demo-summary.json").write_text(json.dumps(summary, indent=1))
    _plot(config, records, work / "demo.png")
    print(f"wrote {work / 'demo-summary.json'} and {work / 'demo.png'} ({elapsed_s:.0f} s in all)")
    if failures:
        print("\nthe demo did not show what it promises:\n  " + "\n  ".join(failures))
        return 1
    print("every phase showed the split the plan predicts, and the fallback held")
    return 0


def _print_table(config: DemoConfig, verdicts: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    header = ("phase", "link", "predicted", "requests", "hub", "edge", "local*", "p50 ms", "p99 ms")
    print("\n{:15s} {:>16s} {:>10s} {:>8s} {:>5s} {:>5s} {:>6s} {:>7s} {:>7s}  splits used".format(*header))
    rows_of: dict[int | None, list[dict[str, Any]]] = {}
    for record in records:
        rows_of.setdefault(phase_of(config, record["t"]), []).append(record)
    for index, label in [*((i, v["phase"]) for i, v in enumerate(verdicts)), (None, OUTAGE)]:
        rows = rows_of.get(index, [])
        if not rows:
            continue
        sources = Counter(r["source"] for r in rows)
        latencies = sorted(r["latency_ms"] for r in rows)
        p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        splits = ", ".join(f"{s} x{n}" for s, n in Counter(r["split"] for r in rows).most_common())
        if index is None:
            link, predicted = "(killed)", "-"
        else:
            verdict = verdicts[index]
            link = f"{verdict['bandwidth_mbps']:g} Mb/s {verdict['rtt_ms']:g} ms"
            predicted = verdict["predicted"]
        print(
            f"{label:15s} {link:>16s} {predicted:>10s} {len(rows):8d} {sources['hub']:5d} {sources['edge']:5d} "
            f"{sources['fallback']:6d} {p50:7.1f} {p99:7.1f}  {splits}"
        )
    print(
        "(* local = degraded answers from the full model on the edge while the hub was unreachable; "
        f"'{OUTAGE}' runs from the kill to {config.settle_s:g} s after the restart)"
    )


def _print_labels(
    photos: list[dict[str, Any]], records: list[dict[str, Any]], kinds: Mapping[str, str] | None = None
) -> None:
    """For each photo, one answer through the hub (a cut where there was one) next to the unsplit model's label."""
    print("\nphoto        split pipeline (split, source)                 unsplit model")
    for photo in photos:
        mine = [r for r in records if r["photo"] == photo["name"]]
        shown = next((r for r in mine if r["source"] == "hub" and _kind(r["split"], kinds) == "cut"), None)
        shown = shown or next((r for r in mine if r["source"] == "hub"), None) or (mine[0] if mine else None)
        if shown is None:
            continue
        mark = "" if shown["label"] == photo["label"] else "   <- differs"
        answer = f"{shown['label']} ({shown['split']}, {shown['source']})"
        print(f"{photo['name']:12s} {answer:46s} {photo['label']}{mark}")


def _plot(config: DemoConfig, records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    splits = sorted({r["split"] for r in records})
    colours = {split: plt.get_cmap("tab10")(i % 10) for i, split in enumerate(splits)}
    for split in splits:
        rows = [r for r in records if r["split"] == split and not r["degraded"]]
        ax.scatter([r["t"] for r in rows], [r["latency_ms"] for r in rows], s=12, color=colours[split], label=split)
    degraded = [r for r in records if r["degraded"]]
    if degraded:
        ax.scatter([r["t"] for r in degraded], [r["latency_ms"] for r in degraded], s=18, marker="x", color="black",
                   label="degraded (local full model)")  # fmt: skip
    if config.outage:
        ax.axvspan(config.outage.at_s, config.outage.at_s + config.outage.duration_s, color="red", alpha=0.12,
                   label="hub down")  # fmt: skip
    top = max((r["latency_ms"] for r in records), default=1.0) * 1.15
    ax.set_ylim(0, top)
    for phase in config.phases:
        if phase.at_s > 0:
            ax.axvline(phase.at_s, color="grey", linestyle="--")
        ax.text(phase.at_s, top * 0.97, f" {phase.name}\n {phase.bandwidth_mbps:g} Mbit/s, {phase.rtt_ms:g} ms",
                color="grey", va="top", fontsize=8)  # fmt: skip
    ax.set_xlabel("time (s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(f"Tandem demo: {config.model}, {config.agents} agents, codec {config.codec}")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
