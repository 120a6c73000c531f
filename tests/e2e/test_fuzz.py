"""A seeded fuzz run against live processes: `tandem hub` (ZeroMQ and MQTT) and `tandem edge`'s local endpoint.

A good client asks the hub for a real MobileNetV2 split all along: first
alone (its quiet latency), then while tests/fixtures/fuzz.py fires about 11k
mutated envelopes from another process. Asserted, as a user of the hub would
judge it: the hub and the edge survive, every reply decodes and every error
code is in docs/protocol.md, no error names an id nobody sent, the good
client's answers stay equal to its quiet ones and its p99 within 3x its quiet
p99, and the hub's RSS and metrics series stay bounded. The 100k run is
benchmarks/bench_fuzz.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.fuzz_campaign import Campaign
from tests.fixtures.broker import Mosquitto
from tests.unit.test_error_codes import documented_codes

pytestmark = [pytest.mark.slow, pytest.mark.broker]

# About 11k messages, so each of the 23 mutation kinds reaches each target a few hundred times (drawn at
# random, seeded): about a minute at the fixed rate below, on any host. The 100k run is benchmarks/bench_fuzz.py.
COUNTS = {"zmq": 6_000, "mqtt": 4_000, "endpoint": 1_500}
RATE = 250.0  # messages per second per target
RSS_GROWTH_BOUND = 200 << 20  # bytes: a leak per message would pass this within the run
MAX_DEVICES = 20


def test_a_seeded_fuzz_run_leaves_the_hub_and_edge_serving_correctly(
    mobilenet_plan: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with Campaign(mobilenet_plan, mosquitto.port, tmp_path, max_devices=MAX_DEVICES) as campaign:
        result = campaign.run(COUNTS, rate=RATE, seed=20261206)
    report = json.dumps({k: v for k, v in result.items() if k != "fuzz"}, indent=1)
    fuzz = result["fuzz"]
    sent = sum(fuzz[target]["messages"] for target in ("hub_zmq", "hub_mqtt", "edge_endpoint"))
    assert sent >= sum(COUNTS.values()), report
    # Survival: both processes lived through it and still answer.
    assert result["hub_alive"] and result["edge_alive"], report
    assert result["endpoint_answers_after"], report
    # Every reply is one a client can read and match, with a documented code.
    codes = set()
    for target in ("hub_zmq", "hub_mqtt", "edge_endpoint"):
        tally = fuzz[target]
        assert tally["undecodable"] == 0 and tally["unmatched"] == 0, (target, tally["examples"])
        codes |= set(tally["replies"])
    documented = documented_codes() | {"result", "heartbeat", "ack"}
    assert codes - documented == set(), f"undocumented reply codes: {sorted(codes - documented)}"
    assert {"malformed_header", "tensor_spec", "truncated", "unknown_plan"} <= codes, codes
    # The good client: correct answers, and a p99 within 3x its quiet p99.
    good = result["good_client"]
    assert good["wrong_answers"] == 0 and good["errors"] == 0, report
    assert good["during"]["count"] >= 100, report
    assert good["during"]["p99_ms"] <= 3 * good["quiet"]["p99_ms"], report
    # Bounded: the hub's memory and its metrics.
    assert result["hub_rss_after"] - result["hub_rss_before"] <= RSS_GROWTH_BOUND, report
    assert result["series_after"] <= result["series_bound"], report
    assert result["hub_log_bytes"] <= 2 << 20, report
    # Started with --log-format json: one stream, every line a JSON object with a timestamp and a level.
    assert result["hub_log_lines_not_json"] == [] and result["edge_log_lines_not_json"] == [], report


def test_the_fuzzer_is_seeded_and_covers_each_mutation(mobilenet_plan: Path) -> None:
    code = (
        "import sys, hashlib, collections\n"
        "from pathlib import Path\n"
        "from tests.fixtures.fuzz import EnvelopeFuzzer, bases_for\n"
        "bases, _ = bases_for(Path(sys.argv[1]), 'cam')\n"
        "fuzzer = EnvelopeFuzzer(bases, 7)\n"
        "digest, seen = hashlib.sha256(), collections.Counter()\n"
        "for _ in range(600):\n"
        "    m = fuzzer.next(); seen[m.mutation] += 1\n"
        "    digest.update(m.mutation.encode()); digest.update(str(len(m.frames)).encode())\n"
        "print(digest.hexdigest(), len(seen), len(fuzzer.mutations))\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code, str(mobilenet_plan)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True).stdout.split()
        for seed in (1, 2)
    ]  # fmt: skip
    assert runs[0][0] == runs[1][0], "the same seed must give the same messages, whatever the hash seed"
    assert runs[0][1] == runs[0][2], "600 draws cover every mutation"
