"""``tandem edge --config edge.yaml``: run the agent and its local endpoint (argument parsing around :class:`Edge`)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("tandem.edge")


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
    log.info("device %s: %s", config.device_id, edge.plan_source)
    log.info("device %s: plan %s v%d, splits %s", config.device_id, plan.plan_id, plan.version,
             [s.split_id for s in plan.splits])  # fmt: skip
    edge.start()
    if edge.sync is not None and config.sync is not None:
        log.info("sync: MQTT %s:%s, outbox %s", config.sync.mqtt.host, config.sync.mqtt.port, edge.sync.outbox.path)
    log.info("hub channel: %s %s", config.channel.type, _where(config.channel))
    if edge.endpoint is not None:
        log.info("local endpoint listening on %s", edge.endpoint.address)
    stop = threading.Event()
    received: list[int] = []

    def note(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, note)
    # SIGHUP would end the process by default: say instead that nothing reloads in place here.
    signal.signal(signal.SIGHUP, lambda *_: log.warning(
        "SIGHUP: the edge reloads nothing in place (new plans come through sync); restart it to apply edge.yaml"))
    stop.wait()
    log.info("stopping (%s): draining for up to %.1f s", signal.Signals(received[0]).name, config.shutdown_grace_s)
    edge.drain_and_stop()
    log.info("stopped")
    return 0


def _where(channel: Any) -> str:
    return getattr(channel, "address", None) or f"{getattr(channel, 'host', '')}:{getattr(channel, 'port', '')}"
