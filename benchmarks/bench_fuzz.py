"""The 100k fuzz run: `tandem hub` and `tandem edge` as processes under mutated envelopes, a good client alongside.

Partitions MobileNetV2, starts Mosquitto, the hub (ZeroMQ and MQTT) and the
edge (local endpoint), then tests/e2e/fuzz_campaign.py fires 100k messages
(quick: 20k, the size `make test` runs) from tests/fixtures/fuzz.py and
reports: messages per target and mutation, replies by code, the good client's
p50/p99 before and during, wrong answers, hub RSS before and after, metrics
series before and after (and the bound), and whether both processes lived.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.fuzz_campaign import Campaign
from tests.fixtures.broker import Mosquitto, find_mosquitto

FULL = {"zmq": 50_000, "mqtt": 30_000, "endpoint": 20_000}
QUICK = {"zmq": 11_000, "mqtt": 7_000, "endpoint": 2_000}
RATE = 250.0


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """The campaign's figures (see the module docstring)."""
    if find_mosquitto() is None:
        return {"skipped": "no mosquitto binary (make broker installs it)"}
    counts = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="tandem-fuzz-") as tmp:
        work = Path(tmp)
        plan = work / "plan"
        subprocess.run([sys.executable, "-m", "tandem.cli", "partition", "mobilenet_v2", "--out", str(plan),
                        "--no-progress"], check=True, capture_output=True, timeout=900)  # fmt: skip
        with Mosquitto(work / "broker") as broker, Campaign(plan, broker.port, work) as campaign:
            print(f"   fuzzing {sum(counts.values())} messages at {RATE:.0f}/s per target", flush=True)
            result = campaign.run(counts, rate=RATE, seed=20261206)
    fuzz = result.pop("fuzz")
    targets = {name: fuzz[name] for name in ("hub_zmq", "hub_mqtt", "edge_endpoint")}
    replies: dict[str, int] = {}
    for tally in targets.values():
        for code, count in tally["replies"].items():
            replies[code] = replies.get(code, 0) + count
    return {
        "messages": sum(t["messages"] for t in targets.values()),
        "replies_by_code": dict(sorted(replies.items(), key=lambda item: -item[1])),
        "targets": {name: {k: v for k, v in t.items() if k != "examples"} for name, t in targets.items()},
        "rate_per_target": RATE,
        **result,
        "hub_rss_growth_mb": round((result["hub_rss_after"] - result["hub_rss_before"]) / 2**20, 1),
    }
