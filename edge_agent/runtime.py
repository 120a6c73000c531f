"""The edge as one object: agent, hub channel (and emulated link), sync and local endpoint, as `tandem edge` runs them.

A few lines build and run an edge from Python, the same code the CLI runs::

    from tandem.edge_agent.runtime import Edge

    with Edge.from_file("configs/edge.yaml") as edge:   # or Edge(EdgeConfig(...))
        result = edge.infer(image)                       # local endpoint, sync and link as configured
        print(result.split_id, result.source, result.latency_ms)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tandem.config import load_config
from tandem.config_paths import resolve_relative_paths
from tandem.edge_agent.agent import EdgeAgent, InferenceResult
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.plan_view import AgentPlan, load_agent_plan
from tandem.transport.channel import Channel

__all__ = ["Edge", "follow_schedule", "fresh_connections", "initial_plan", "start_sync", "sync_model"]

logger = logging.getLogger("tandem.edge")


class Edge:
    """An edge agent with everything configured around it; :meth:`start` opens it all, :meth:`stop` closes it.

    ``agent`` serves :meth:`infer`; ``sync`` (an :class:`EdgeSync`, when
    ``sync:`` is configured) moves records, samples and plans; ``endpoint``
    (when ``endpoint.address`` is set) lets other processes call the agent;
    ``link`` is the emulated uplink when ``emulation.link`` is set.
    """

    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.plan, self.plan_source = initial_plan(config)
        self.agent: EdgeAgent | None = None
        self.link: Any = None
        self.sync: Any = None
        self.endpoint: Any = None
        self.status: Any = None
        self.serving = False  # the parts are loaded and the endpoint listens
        self.draining = False
        self._stop = threading.Event()

    @classmethod
    def from_file(cls, path: str | Path) -> Edge:
        """The edge that ``edge.yaml`` at ``path`` describes (relative paths taken from its folder)."""
        path = Path(path)
        return cls(resolve_relative_paths(load_config(path, EdgeConfig), path.resolve().parent))

    def start(self) -> Edge:
        """Open the hub channel (without waiting for the hub), start the agent, sync, endpoint and link schedule."""
        from tandem.edge_agent.endpoint import LocalEndpoint
        from tandem.transport.factory import open_client
        from tandem.transport.link import EmulatedLink

        config = self.config
        self._open_status()
        from tandem.transport.config import exposure_warning

        for what, channel_config in (("hub channel", config.channel), ("sync", config.sync and config.sync.mqtt)):
            warning = channel_config and exposure_warning(channel_config, listens=False)
            if warning:
                logger.warning("%s: %s", what, warning)
        channel = open_client(config.channel, device_id=config.device_id, limits=config.limits.to_limits(), wait=False)
        if config.emulation.link is not None:
            channel = self.link = EmulatedLink.from_config(channel, config.emulation.link)
        self.agent = EdgeAgent(config, self.plan, channel, reopen=fresh_connections(config))
        self.agent.start()
        self.sync = start_sync(config, self.agent)
        if config.endpoint.address:
            self.endpoint = LocalEndpoint(self.agent, address=config.endpoint.address, workers=config.endpoint.workers)
            self.endpoint.start()
        follow_schedule(config, self.link, self._stop)
        self.serving = True
        return self

    def _open_status(self) -> None:
        """The status port (/metrics, /healthz, /readyz), first, so probes see the parts load."""
        if self.config.status.port is None:
            return
        from tandem.edge_agent.status import edge_readiness, edge_registry
        from tandem.status_http import StatusServer

        self.status = StatusServer(config_key="status.port")
        self.status.registry = edge_registry(self)
        self.status.readiness = lambda: edge_readiness(self)
        port = self.status.start(self.config.status.host, self.config.status.port)
        logger.info("status on http://%s:%d/metrics, /healthz, /readyz", self.config.status.host, port)

    def drain_and_stop(self) -> bool:
        """SIGTERM: refuse new local requests (``shutting_down``), answer those in flight, give the outbox the
        rest of ``shutdown_grace_s`` to empty while the hub takes it, then stop. True if all that fit in time."""
        self.draining = True
        deadline = time.monotonic() + self.config.shutdown_grace_s
        answered = self.endpoint.drain(self.config.shutdown_grace_s) if self.endpoint is not None else True
        flushed = True
        if self.sync is not None:
            while self.sync.outbox.backlog and time.monotonic() < deadline:
                time.sleep(0.05)
            flushed = not self.sync.outbox.backlog
            if not flushed:
                logger.info("%d outbox entries wait for the next start (they are on disk)", self.sync.outbox.backlog)
        self.stop()
        return answered and flushed

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> InferenceResult:
        """One answer from the agent (see :meth:`EdgeAgent.infer`)."""
        if self.agent is None:
            raise RuntimeError("Edge.infer before Edge.start")
        return self.agent.infer(inputs)

    def stop(self) -> None:
        """Close the endpoint, sync (and its outbox) and the agent, in that order."""
        self._stop.set()
        self.serving = False
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.sync is not None:
            self.sync.stop()
            self.sync.outbox.close()
        if self.agent is not None:
            self.agent.stop()
        if self.status is not None:
            self.status.close()

    def __enter__(self) -> Edge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fresh_connections(config: EdgeConfig) -> Callable[[float], Channel] | None:
    """How the agent opens a fresh ZeroMQ connection when the hub goes silent (see ``EdgeAgent``).

    None for MQTT (paho reconnects to the broker itself) and under an emulated
    link (its schedule holds the channel it wraps).
    """
    from tandem.transport.config import ZmqConfig

    channel = config.channel
    if not isinstance(channel, ZmqConfig) or config.emulation.link is not None:
        return None

    def reopen(connect_s: float) -> Channel:
        from tandem.transport.zmq_channel import ZmqClient

        limits = config.limits.to_limits()
        return ZmqClient.from_config(channel, device_id=config.device_id, limits=limits, connect_timeout_s=connect_s)

    return reopen


def initial_plan(config: EdgeConfig) -> tuple[AgentPlan, str]:
    """The plan to start with, and where it came from.

    The version sync installed last, if any (a restart keeps it), else ``plan:`` from the config.
    """
    if config.sync is not None:
        from tandem.edge_agent.artifacts import PlanReleases

        current = PlanReleases(config.sync.plans_dir).current()
        if current is not None:
            manifest, folder = current
            plan = dataclasses.replace(
                load_agent_plan(folder, config.codec, in_graph=config.codec_in_graph), version=manifest.version
            )
            return plan, f"synced release {manifest.plan_id} v{manifest.version} in {folder}"
    return load_agent_plan(config.plan, config.codec, in_graph=config.codec_in_graph), f"plan: {config.plan}"


def start_sync(config: EdgeConfig, agent: EdgeAgent) -> Any:
    """Outbox, sampling and plan updates over MQTT, when ``sync:`` is configured."""
    if config.sync is None:
        return None
    from tandem.edge_agent.outbox import Outbox
    from tandem.edge_agent.plan_install import full_model_self_check, make_installer
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
        lambda folder, manifest: dataclasses.replace(
            load_agent_plan(folder, config.codec, in_graph=config.codec_in_graph), version=manifest.version
        ),
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
    logger.info("sync: MQTT %s:%s, outbox %s", config.sync.mqtt.host, config.sync.mqtt.port, outbox.path)
    return sync


def sync_model(config: EdgeConfig, plan: AgentPlan) -> str | None:
    """The model plan updates must be for: ``sync.model``, else the model of the plan being served.

    Never left open: an edge that took the first announced plan's model would
    then refuse the right plans (``plan_for_another_model``).
    """
    return (config.sync.model if config.sync is not None else None) or plan.model_name or None


def follow_schedule(config: EdgeConfig, link: Any, stop: threading.Event) -> None:
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
            logger.info("t=%.0fs emulated link now %s", step.at_s, changes)

    threading.Thread(target=follow, name="link-schedule", daemon=True).start()
