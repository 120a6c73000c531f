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
2. Recovery: a silent cut of 10 s (longer than ZeroMQ's heartbeat timeout),
   then the time from the link's return to the hub's first message (TCP's
   retransmission or reconnection, on the kernel's backoff) and to the first
   answer served by the hub again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

RATES = (50.0, 10.0, 5.0, 2.0, 20.0)


def _steps(bed: Any, seconds: float, measure: int) -> list[dict[str, Any]]:
    bed.link.shape(RATES[0])
    bed.wait_for_estimate()
    rows = []
    for rate in RATES:
        figures = bed.step(rate, seconds, measure=measure)
        row = figures.as_dict()
        row["estimate_error"] = None if figures.estimate_mbit is None else figures.estimate_mbit / rate - 1
        row["chosen_over_best"] = figures.measured_p50_ms[figures.chosen] / figures.measured_p50_ms[figures.best] - 1
        row["predicted_over_observed"] = figures.predicted_ms / figures.chosen_p50_ms - 1
        rows.append(row)
        print(
            f"   {rate:5.1f} Mbit/s: estimate {figures.estimate_mbit or 0:6.2f} ({row['estimate_error']:+.1%}), "
            f"chosen {figures.chosen} (best {figures.best}, {row['chosen_over_best']:+.1%}), "
            f"predicted {figures.predicted_ms:.1f} ms vs p50 {figures.chosen_p50_ms:.1f} ms, "
            f"settled {figures.switch_s if figures.switch_s is None else round(figures.switch_s, 2)} s",
            flush=True,
        )
    return rows


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


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Run the rate steps and the recovery on a fresh namespace pair; skipped where the bed cannot run."""
    from tests.fixtures.netns import NetnsLink, missing_reason
    from tests.fixtures.netns_agent import Bed

    reason = missing_reason()
    if reason:
        print(f"   skipped: {reason}")
        return {"skipped": reason}
    with tempfile.TemporaryDirectory() as folder, NetnsLink() as link:
        bed = Bed(link, Path(folder), deadline_ms=1000)
        try:
            steps = _steps(bed, 3.0 if quick else 5.0, 5 if quick else 10)
            recoveries = [_recovery(bed, 10.0) for _ in range(2 if quick else 5)]
        finally:
            bed.close()
    backs = [r["split_back_s"] for r in recoveries]
    print(f"   recovery after a 10 s cut: {recoveries}", flush=True)
    return {
        "rates_mbit": list(RATES),
        "steps": steps,
        "recovery_after_10s_cut_s": recoveries,
        "summary": {
            "max_abs_estimate_error": max(abs(r["estimate_error"] or 1.0) for r in steps),
            "max_chosen_over_best": max(r["chosen_over_best"] for r in steps),
            "max_abs_predicted_over_observed": max(abs(r["predicted_over_observed"]) for r in steps),
            "max_settle_s": max((r["switch_s"] or 99.0) for r in steps),
            "max_recovery_s": max((r or 99.0) for r in backs),
        },
    }
