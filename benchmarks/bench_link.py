"""The agent on a kernel-shaped link: estimate vs shaped rate, chosen vs best split, predicted vs observed.

Needs root, ``ip`` and ``tc`` (tests/fixtures/netns.py); without them the result
says why it was skipped. A hub (hub namespace) and an edge agent (edge
namespace) serve the bed's three-split plan (tests/fixtures/netns_agent.py:
cloud-only sends 100 kB, s1 runs a 20 ms emulated head and sends 10 kB,
edge-only runs 120 ms emulated) over real TCP through ``tbf``.

1. Rate steps 50 -> 10 -> 5 -> 2 -> 20 Mbit/s: at each, the agent runs free at
   10 requests/s for a few seconds, then every split is measured alone on the
   same link. Reports the uplink estimate against the tbf rate (also right after
   each split ran alone), the chosen split against the best measured, its
   predicted latency against its observed p50, and the time to settle.
2. The same steps with MobileNetV2 partitioned by ``tandem partition`` (its
   kept splits, int8+zstd, a real photo, the plan's emulated edge times), the
   issue's setting; skipped without the partition extra.
3. Recovery: a silent cut of 10 s (longer than ZeroMQ's heartbeat timeout),
   then the time from the link's return to the hub's first message (TCP's
   retransmission or reconnection, on the kernel's backoff) and to the first
   answer served by the hub again.
4. A fade: 10 s at 50 kbit/s (the queue stalls heartbeats for seconds), then
   10 Mbit/s: the RTT estimate after it, and when split answers come back.
5. Behind a 40 ms delay relay (DelayRelay): steps 10, 50, 5 Mbit/s.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATES = (50.0, 10.0, 5.0, 2.0, 20.0)


def _mobilenet(folder: Path, seconds: float, measure: int) -> dict[str, Any]:
    """The rate steps with a partitioned MobileNetV2 (int8+zstd) on a fresh namespace pair."""
    from tests.fixtures.netns import NetnsLink
    from tests.fixtures.netns_agent import Bed

    plan_dir = folder / "mobilenet_v2"
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "partition", "mobilenet_v2", "--out", str(plan_dir), "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        return {"skipped": f"tandem partition mobilenet_v2 failed: {done.stderr.strip()[-500:]}"}
    with NetnsLink() as link:
        bed = Bed.for_plan(link, plan_dir, "int8+zstd", deadline_ms=2000)
        try:
            splits = {s.split_id: {"wire_bytes": s.wire_bytes, "edge_ms": s.edge_ms, "cloud_ms": s.cloud_ms}
                      for s in bed.plan.splits}  # fmt: skip
            return {"plan_splits": splits, "steps": _steps(bed, seconds, measure)}
        finally:
            bed.close()


def _steps(bed: Any, seconds: float, measure: int) -> list[dict[str, Any]]:
    bed.link.shape(RATES[0])
    bed.wait_for_estimate()
    return [_row(bed.step(rate, seconds, measure=measure)) for rate in RATES]


def _row(figures: Any) -> dict[str, Any]:
    """One step's figures with the ratios the issue asks for, printed as a line."""
    row: dict[str, Any] = figures.as_dict()
    rate = figures.rate_mbit
    row["estimate_error"] = None if figures.estimate_mbit is None else figures.estimate_mbit / rate - 1
    row["chosen_over_best"] = figures.measured_p50_ms[figures.chosen] / figures.measured_p50_ms[figures.best] - 1
    row["predicted_over_observed"] = figures.predicted_ms / figures.chosen_p50_ms - 1
    print(
        f"   {rate:5.1f} Mbit/s: estimate {figures.estimate_mbit or 0:6.2f} ({row['estimate_error'] or 0:+.1%}), "
        f"chosen {figures.chosen} (best {figures.best}, {row['chosen_over_best']:+.1%}), "
        f"predicted {figures.predicted_ms:.1f} ms vs p50 {figures.chosen_p50_ms:.1f} ms, "
        f"settled {figures.switch_s if figures.switch_s is None else round(figures.switch_s, 2)} s",
        flush=True,
    )
    return row


def _recovery(bed: Any, cut_s: float) -> dict[str, float | None]:
    """Seconds from the link's return to the hub's first message, and to the first split answer."""
    bed.link.shape(10.0)
    bed.requests(1.0, rate_hz=10)
    bed.link.cut()
    bed.requests(cut_s, rate_hz=10)
    bed.link.restore()
    restored = time.monotonic()
    after = bed.requests(3.0, rate_hz=10)
    back = next((t for t, r in after if r.source == "hub"), None)
    heard = bed.agent.recovered_at
    return {
        "hub_heard_s": None if heard is None or heard < restored else heard - restored,
        "split_back_s": None if back is None else back - restored,
    }


def _fade(bed: Any, fade_s: float) -> dict[str, Any]:
    """10 Mbit/s, a fade to 50 kbit/s (its 64 kB queue stalls beats for seconds), then 10 Mbit/s again."""
    bed.link.shape(10.0)
    bed.requests(1.0, rate_hz=10)
    rtt_before = bed.agent.estimator.snapshot().rtt_ms
    bed.link.shape(0.05)
    during = bed.requests(fade_s, rate_hz=5)
    bed.link.shape(10.0)
    back = time.monotonic()
    after = bed.requests(3.0, rate_hz=10)
    link = bed.agent.estimator.snapshot()
    first = next((t - back for t, r in after if r.source == "hub"), None)
    settled = next((t - back for i, (t, _) in enumerate(after) if all(r.source == "hub" for _, r in after[i:])), None)
    return {
        "fade_s": fade_s,
        "rtt_before_ms": rtt_before,
        "rtt_after_ms": link.rtt_ms,
        "estimate_after_mbit": link.bandwidth_mbps,
        "first_hub_answer_s": first,
        "hub_answers_from_s": settled,
        "answers_during": len(during),
        "sources_during": {src: sum(r.source == src for _, r in during) for src in ("hub", "edge", "fallback")},
    }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Run the rate steps and the recovery on a fresh namespace pair; skipped where the bed cannot run."""
    from tests.fixtures.netns import NetnsLink, missing_reason
    from tests.fixtures.netns_agent import Bed

    reason = missing_reason()
    if reason:
        print(f"   skipped: {reason}")
        return {"skipped": reason}
    seconds, measure = (3.0, 5) if quick else (5.0, 10)
    with tempfile.TemporaryDirectory() as folder, NetnsLink() as link:
        bed = Bed(link, Path(folder), deadline_ms=1000)
        try:
            steps = _steps(bed, seconds, measure)
            recoveries = [_recovery(bed, 10.0) for _ in range(2 if quick else 5)]
            fade = _fade(bed, 10.0)
        finally:
            bed.close()
    print("   toy plan behind a 40 ms delay relay:", flush=True)
    with tempfile.TemporaryDirectory() as folder, NetnsLink() as link:
        bed = Bed(link, Path(folder), rtt_ms=40, deadline_ms=1000)
        try:
            bed.link.shape(10.0)
            bed.wait_for_estimate()
            with_rtt = [_row(bed.step(rate, seconds, measure=measure)) for rate in (10.0, 50.0, 5.0)]
            with_rtt_ms = bed.agent.estimator.snapshot().rtt_ms
        finally:
            bed.close()
    try:
        import torchvision  # noqa: F401  (the partition extra)
    except ImportError:
        mobilenet: dict[str, Any] = {"skipped": "needs the partition extra (torch, torchvision)"}
    else:
        print("   MobileNetV2, int8+zstd:", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            mobilenet = _mobilenet(Path(folder), seconds, measure)
    backs = [r["split_back_s"] for r in recoveries]
    print(f"   recovery after a 10 s cut: {recoveries}", flush=True)
    print(f"   fade: {fade}", flush=True)
    return {
        "rates_mbit": list(RATES),
        "steps": steps,
        "recovery_after_10s_cut_s": recoveries,
        "fade_to_50_kbit": fade,
        "rtt_40ms": {"rtt_estimate_ms": with_rtt_ms, "steps": with_rtt},
        "mobilenet_v2_int8_zstd": mobilenet,
        "summary": {
            "max_abs_estimate_error": max(abs(r["estimate_error"] or 1.0) for r in steps),
            "max_chosen_over_best": max(r["chosen_over_best"] for r in steps),
            "max_abs_predicted_over_observed": max(abs(r["predicted_over_observed"]) for r in steps),
            "max_settle_s": max((r["switch_s"] or 99.0) for r in steps),
            "max_recovery_s": max((r or 99.0) for r in backs),
        },
    }
