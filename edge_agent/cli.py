"""``tandem edge --config edge.yaml``: run the agent and its local endpoint (argument parsing around :class:`Edge`)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``edge`` command."""
    parser = subparsers.add_parser(
        "edge",
        help="run the edge agent",
        description="Run the edge agent: load the plan, connect to the hub, pick the split from the measured link, "
        "answer locally while the hub is down, and serve the local endpoint until SIGINT/SIGTERM.",
    )
    parser.add_argument("--config", type=Path, required=True, help="edge.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the plan, connect, serve the local endpoint until SIGINT/SIGTERM."""
    from tandem.edge_agent.runtime import Edge

    edge = Edge.from_file(args.config)
    config, plan = edge.config, edge.plan
    print(f"device {config.device_id}: {edge.plan_source}")
    print(f"device {config.device_id}: plan {plan.plan_id} v{plan.version}, splits {[s.split_id for s in plan.splits]}")
    edge.start()
    if edge.sync is not None and config.sync is not None:
        print(f"sync: MQTT {config.sync.mqtt.host}:{config.sync.mqtt.port}, outbox {edge.sync.outbox.path}", flush=True)
    print(f"hub channel: {config.channel.type} {_where(config.channel)}", flush=True)
    if edge.endpoint is not None:
        print(f"local endpoint listening on {edge.endpoint.address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("stopping", flush=True)
    edge.stop()
    return 0


def _where(channel: Any) -> str:
    return getattr(channel, "address", None) or f"{getattr(channel, 'host', '')}:{getattr(channel, 'port', '')}"
