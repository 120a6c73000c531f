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
2. The same steps with MobileNetV2 partitioned by ``tandem partition`` with a
   forced mid-network cut (``--cut`` at the output of block 10, 14x14x64; the
   plan keeps cloud-only and edge-only beside it, and would keep no cut of its
   own), int8+zstd, a real photo, the plan's emulated edge times: the
   estimate after each split ran alone, and predicted against observed p50
   per split; skipped without the partition extra.
3. Recovery: silent cuts of 1.5 s (the TCP connection survives) and 10 s
   (longer than ZeroMQ's heartbeat timeout), dropped in the middle of the
   path, then the time from the link's return to the hub's first message and
   to the first answer served by the hub again.
4. A fade: 10 s at 50 kbit/s (the queue stalls heartbeats for seconds), then
   10 Mbit/s: the RTT estimate after it, when split answers come back, and
   whether every request had exactly one answer.
5. Behind a 40 ms delay relay (DelayRelay): steps 10, 50, 5 Mbit/s.
6. The downlink: uplink 50 Mbit/s, downlink shaped to 5, 10, 20 Mbit/s, toy
   answers of 200 kB: the downlink estimate against its tbf rate.

``python -m benchmarks.bench_link --only mid,recovery`` runs some sections and
merges them into benchmarks/results/link.json; ``python -m benchmarks.run_all
--only link`` runs them all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATES = (50.0, 10.0, 5.0, 2.0, 20.0)
MID_CUT = "/features/features.10/Add_output_0"  # MobileNetV2 after block 10 of 17: 14x14x64
SECTIONS = ("steps", "recovery", "fade", "rtt", "mid", "downlink")
RESULTS = Path(__file__).parent / "results" / "link.json"


def _mobilenet(folder: Path, seconds: float, measure: int) -> dict[str, Any]:
    """The rate steps with MobileNetV2 cut mid-network (int8+zstd) on a fresh namespace pair."""
    from tests.fixtures.netns import NetnsLink
    from tests.fixtures.netns_agent import Bed

    plan_dir = folder / "mobilenet_v2"
    argv = ["partition", "mobilenet_v2", "--cut", MID_CUT, "--out", str(plan_dir), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "tandem.cli", *argv], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"skipped": f"tandem partition mobilenet_v2 --cut failed: {done.stderr.strip()[-500:]}"}
    with NetnsLink() as link:
        bed = Bed.for_plan(link, plan_dir, "int8+zstd", deadline_ms=2000)
        try:
            splits = {s.split_id: {"wire_bytes": s.wire_bytes, "edge_ms": s.edge_ms, "cloud_ms": s.cloud_ms,
                                   "crossing": list(s.crossing)} for s in bed.plan.splits}  # fmt: skip
            steps = _steps(bed, seconds, measure)
        finally:
            bed.close()
    return {"cut": MID_CUT, "plan_splits": splits, "steps": steps, "per_split": _per_split(steps)}


def _per_split(steps: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per split that sends bytes: at each rate, the estimate after it ran alone and predicted against observed."""
    table: dict[str, list[dict[str, Any]]] = {}
    for row in steps:
        rate = row["rate_mbit"]
        for split, estimate in row["estimate_by_split"].items():
            observed, predicted = row["measured_p50_ms"][split], row["predicted_by_split"][split]
            table.setdefault(split, []).append({
                "rate_mbit": rate, "estimate_mbit": estimate,
                "estimate_error": None if estimate is None else estimate / rate - 1,
                "predicted_ms": predicted, "observed_p50_ms": observed,
                "predicted_over_observed": predicted / observed - 1,
            })  # fmt: skip
    return table


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
        "cut_s": cut_s,
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
    ids = [r.request_id for _, r in during + after]
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
        "every_request_answered_once": len(ids) == len(set(ids)),
        "sources_during": {src: sum(r.source == src for _, r in during) for src in ("hub", "edge", "fallback")},
    }


def _downlink(folder: Path, rates: tuple[float, ...]) -> list[dict[str, Any]]:
    """Uplink 50 Mbit/s, the downlink at each of ``rates``: the downlink estimate from 200 kB answers."""
    from tests.fixtures.netns import NetnsLink, Shape
    from tests.fixtures.netns_agent import Bed

    rows = []
    with NetnsLink() as link:
        bed = Bed(link, folder, echo_floats=50_000, deadline_ms=2000)
        try:
            for rate in rates:
                link.shape(50.0, down=Shape.for_rate(rate, limit_bytes=400_000))
                # Held on s1: answers are the only downlink samples, and the agent would leave for edge-only
                # where 200 kB answers cost more than the edge's 120 ms. 25 answers replace all 24 samples kept.
                bed.measure("s1", 25)
                estimate = bed.agent.estimator.snapshot()
                error = None if estimate.downlink_mbps is None else estimate.downlink_mbps / rate - 1
                rows.append({"down_mbit": rate, "downlink_estimate_mbit": estimate.downlink_mbps,
                             "downlink_error": error, "uplink_estimate_mbit": estimate.bandwidth_mbps})  # fmt: skip
                print(f"   downlink {rate:5.1f} Mbit/s: estimate {estimate.downlink_mbps} ({error})", flush=True)
        finally:
            bed.close()
    return rows


def run(out_dir: Path, quick: bool, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Run ``sections`` (all by default) on fresh namespace pairs; skipped where the bed cannot run."""
    from tests.fixtures.netns import missing_reason

    reason = missing_reason()
    if reason:
        print(f"   skipped: {reason}")
        return {"skipped": reason}
    seconds, measure = (3.0, 5) if quick else (5.0, 10)
    result: dict[str, Any] = {"rates_mbit": list(RATES)}
    if {"steps", "recovery", "fade"} & set(sections):
        result.update(_toy(sections, seconds, measure, repeats=2 if quick else 5))
    if "rtt" in sections:
        result["rtt_40ms"] = _behind_relay(seconds, measure)
    if "mid" in sections:
        result["mobilenet_v2_mid_int8_zstd"] = _mid(seconds, measure)
    if "downlink" in sections:
        with tempfile.TemporaryDirectory() as folder:
            result["downlink"] = _downlink(Path(folder), (5.0, 10.0, 20.0))
    result["summary"] = _summary(result)
    return result


def _toy(sections: tuple[str, ...], seconds: float, measure: int, repeats: int) -> dict[str, Any]:
    from tests.fixtures.netns import NetnsLink
    from tests.fixtures.netns_agent import Bed

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder, NetnsLink() as link:
        bed = Bed(link, Path(folder), deadline_ms=1000)
        try:
            bed.link.shape(RATES[0])
            bed.wait_for_estimate()
            if "steps" in sections:
                out["steps"] = _steps(bed, seconds, measure)
            if "recovery" in sections:
                out["recovery_after_cuts_s"] = [_recovery(bed, cut) for cut in (1.5, 10.0) for _ in range(repeats)]
                print(f"   recovery: {out['recovery_after_cuts_s']}", flush=True)
            if "fade" in sections:
                out["fade_to_50_kbit"] = _fade(bed, 10.0)
                print(f"   fade: {out['fade_to_50_kbit']}", flush=True)
        finally:
            bed.close()
    return out


def _behind_relay(seconds: float, measure: int) -> dict[str, Any]:
    from tests.fixtures.netns import NetnsLink
    from tests.fixtures.netns_agent import Bed

    print("   toy plan behind a 40 ms delay relay:", flush=True)
    with tempfile.TemporaryDirectory() as folder, NetnsLink() as link:
        bed = Bed(link, Path(folder), rtt_ms=40, deadline_ms=1000)
        try:
            bed.link.shape(10.0)
            bed.wait_for_estimate()
            with_rtt = [_row(bed.step(rate, seconds, measure=measure)) for rate in (10.0, 50.0, 5.0)]
            return {"rtt_estimate_ms": bed.agent.estimator.snapshot().rtt_ms, "steps": with_rtt}
        finally:
            bed.close()


def _mid(seconds: float, measure: int) -> dict[str, Any]:
    try:
        import torchvision  # noqa: F401  (the partition extra)
    except ImportError:
        return {"skipped": "needs the partition extra (torch, torchvision)"}
    print(f"   MobileNetV2 cut at {MID_CUT}, int8+zstd:", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        return _mobilenet(Path(folder), seconds, measure)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    steps = result.get("steps", [])
    mid = result.get("mobilenet_v2_mid_int8_zstd", {})
    summary: dict[str, Any] = {}
    if steps:
        summary.update(
            max_abs_estimate_error=max(abs(r["estimate_error"] or 1.0) for r in steps),
            max_chosen_over_best=max(r["chosen_over_best"] for r in steps),
            max_abs_predicted_over_observed=max(abs(r["predicted_over_observed"]) for r in steps),
            max_settle_s=max((r["switch_s"] or 99.0) for r in steps),
        )
    if "recovery_after_cuts_s" in result:
        summary["max_recovery_s"] = max((r["split_back_s"] or 99.0) for r in result["recovery_after_cuts_s"])
    if "per_split" in mid:
        errors = [abs(row["estimate_error"] or 1.0) for rows in mid["per_split"].values() for row in rows]
        summary["mid_max_abs_estimate_error"] = max(errors)
        summary["mid_max_abs_predicted_over_observed"] = max(abs(r["predicted_over_observed"]) for r in mid["steps"])
    if "downlink" in result:
        summary["max_abs_downlink_error"] = max(abs(r["downlink_error"] or 1.0) for r in result["downlink"])
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run some sections and merge them into benchmarks/results/link.json (the rest of it is kept)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_link", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, from: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sections = tuple(args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    started = time.monotonic()
    fresh = run(RESULTS.parent, args.quick, sections)
    merged: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": "link"}
    merged.update({k: v for k, v in fresh.items() if k != "summary"})
    merged["summary"] = {**merged.get("summary", {}), **fresh.get("summary", {})}
    merged.setdefault("sections_seconds", {})[",".join(sections)] = round(time.monotonic() - started, 1)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"merged {', '.join(sections)} into {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
