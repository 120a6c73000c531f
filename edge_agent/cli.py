"""``tandem edge --config edge.yaml``: run the agent and its local endpoint."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tandem.config import load_config


def register(subparsers: Any) -> None:
    """Add the ``edge`` command."""
    parser = subparsers.add_parser("edge", help="run the edge agent")
    parser.add_argument("--config", type=Path, required=True, help="edge.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the plan, connect, serve the local endpoint until SIGINT/SIGTERM."""
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import EdgeConfig
    from edge_agent.endpoint import LocalEndpoint
    from edge_agent.plan_view import load_agent_plan
    from transport.factory import open_client
    from transport.link import EmulatedLink

    config = load_config(args.config, EdgeConfig)
    plan_dir = config.plan if config.plan.is_absolute() else args.config.parent / config.plan
    plan = load_agent_plan(plan_dir, config.codec)
    print(f"device {config.device_id}: plan {plan.plan_id} v{plan.version}, splits {[s.split_id for s in plan.splits]}")
    channel = open_client(config.channel, device_id=config.device_id, limits=config.limits.to_limits(), wait=False)
    link = None
    if config.emulation.link is not None:
        link = EmulatedLink.from_config(channel, config.emulation.link)
        channel = link
    agent = EdgeAgent(config, plan, channel)
    agent.start()
    print(f"hub channel: {config.channel.type} {_where(config.channel)}", flush=True)
    endpoint = None
    if config.endpoint.address:
        endpoint = LocalEndpoint(agent, address=config.endpoint.address, workers=config.endpoint.workers)
        endpoint.start()
        print(f"local endpoint listening on {endpoint.address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _follow_schedule(config, link, stop)
    stop.wait()
    print("stopping", flush=True)
    if endpoint is not None:
        endpoint.stop()
    agent.stop()
    return 0


def _where(channel: Any) -> str:
    return getattr(channel, "address", None) or f"{getattr(channel, 'host', '')}:{getattr(channel, 'port', '')}"


def _follow_schedule(config: Any, link: Any, stop: threading.Event) -> None:
    """Apply the emulated link's schedule (demo and tests) on a timer thread."""
    steps = sorted(config.emulation.schedule, key=lambda step: step.at_s)
    if not steps:
        return
    if link is None:
        raise SystemExit("emulation.schedule needs emulation.link")

    def follow() -> None:
        started = time.monotonic()
        for step in steps:
            if stop.wait(max(0.0, started + step.at_s - time.monotonic())):
                return
            changes = {
                k: v for k, v in (("bandwidth_mbps", step.bandwidth_mbps), ("rtt_ms", step.rtt_ms)) if v is not None
            }
            link.set_link(**changes)
            print(f"t={step.at_s:.0f}s emulated link now {changes}", flush=True)

    threading.Thread(target=follow, name="link-schedule", daemon=True).start()
