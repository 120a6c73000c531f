"""``tandem edge --config edge.yaml``: run the agent and its local endpoint."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tandem.config import load_config
from tandem.config_paths import resolve_relative_paths


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
    from tandem.edge_agent.agent import EdgeAgent
    from tandem.edge_agent.config import EdgeConfig
    from tandem.edge_agent.endpoint import LocalEndpoint
    from tandem.transport.factory import open_client
    from tandem.transport.link import EmulatedLink

    base = args.config.resolve().parent
    config = resolve_relative_paths(load_config(args.config, EdgeConfig), base)
    plan = _initial_plan(config)
    print(f"device {config.device_id}: plan {plan.plan_id} v{plan.version}, splits {[s.split_id for s in plan.splits]}")
    channel = open_client(config.channel, device_id=config.device_id, limits=config.limits.to_limits(), wait=False)
    link = None
    if config.emulation.link is not None:
        link = EmulatedLink.from_config(channel, config.emulation.link)
        channel = link
    agent = EdgeAgent(config, plan, channel)
    agent.start()
    sync = _start_sync(config, agent)
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
    if sync is not None:
        sync.stop()
        sync.outbox.close()
    agent.stop()
    return 0


def _initial_plan(config: Any) -> Any:
    """The plan version sync installed last, if any (a restart keeps it), else ``plan:`` from the config."""
    import dataclasses

    from tandem.edge_agent.plan_view import load_agent_plan

    if config.sync is not None:
        from tandem.edge_agent.artifacts import PlanReleases

        current = PlanReleases(config.sync.plans_dir).current()
        if current is not None:
            manifest, folder = current
            print(f"plan: synced release {manifest.plan_id} v{manifest.version} in {folder}")
            return dataclasses.replace(load_agent_plan(folder, config.codec), version=manifest.version)
    return load_agent_plan(config.plan, config.codec)


def _start_sync(config: Any, agent: Any) -> Any:
    """Outbox, sampling and plan updates over MQTT, when ``sync:`` is configured."""
    if config.sync is None:
        return None
    import dataclasses

    from tandem.edge_agent.outbox import Outbox
    from tandem.edge_agent.plan_install import full_model_self_check, make_installer
    from tandem.edge_agent.plan_view import load_agent_plan
    from tandem.edge_agent.sampling import InferenceRecorder
    from tandem.edge_agent.sync import EdgeSync

    def plan_in_use() -> tuple[str, int]:
        return agent.plan.plan_id, agent.plan.version

    def link() -> tuple[float | None, float | None]:
        estimate = agent.estimator.snapshot()
        return estimate.rtt_ms, estimate.bandwidth_mbps

    outbox = Outbox.from_config(config.sync.outbox, device_id=config.device_id)
    recorder = InferenceRecorder(outbox, config.sync.sampling, device_id=config.device_id, plan_in_use=plan_in_use)
    agent.on_result = recorder
    install = make_installer(
        lambda folder, manifest: dataclasses.replace(load_agent_plan(folder, config.codec), version=manifest.version),
        agent.swap_plan,
        full_model_self_check(lambda: recorder.last_feeds, executor=config.executor),
    )
    sync = EdgeSync.from_config(
        config.sync,
        outbox,
        device_id=config.device_id,
        model=sync_model(config, agent.plan),
        limits=config.limits.to_limits(),
        install=install,
        plan_in_use=plan_in_use,
        link_estimate=link,
        plans_dir=config.sync.plans_dir,
    )
    sync.start()
    print(f"sync: MQTT {config.sync.mqtt.host}:{config.sync.mqtt.port}, outbox {outbox.path}", flush=True)
    return sync


def sync_model(config: Any, plan: Any) -> str | None:
    """The model plan updates must be for: ``sync.model``, else the model of the plan being served.

    Never left open: an edge that took the first announced plan's model would
    then refuse the right plans (``plan_for_another_model``).
    """
    return config.sync.model or plan.model_name or None


def _where(channel: Any) -> str:
    return getattr(channel, "address", None) or f"{getattr(channel, 'host', '')}:{getattr(channel, 'port', '')}"


def _follow_schedule(config: Any, link: Any, stop: threading.Event) -> None:
    """Apply the emulated link's schedule (demo and tests) on a timer thread."""
    steps = sorted(config.emulation.schedule, key=lambda step: step.at_s)
    if not steps:
        return  # a schedule without emulation.link is a config error

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
