"""The edge's status port: /metrics from the agent's own counters and estimates, /healthz, /readyz.

Nothing is counted twice: :class:`EdgeCollector` reads the agent's counters,
link estimate, chosen split and outbox when Prometheus scrapes. Readiness: the
plan's parts are loaded and the local endpoint listens (the agent exists and
is not draining); whether the hub answers is reported in the body, not a
reason to be unready, since the edge answers locally (degraded) without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["EdgeCollector", "edge_readiness", "edge_registry"]


class EdgeCollector(Collector):
    """Prometheus metrics of an :class:`~tandem.edge_agent.runtime.Edge`, read at scrape time."""

    def __init__(self, edge: Any) -> None:
        self.edge = edge

    def collect(self) -> Iterator[Any]:
        """The current figures (nothing while the agent is not built yet)."""
        agent = self.edge.agent
        if agent is None:
            return
        device = self.edge.config.device_id
        labels = ["device", "source"]
        answers = CounterMetricFamily("tandem_edge_answers", "Answers by where they came from", labels=labels)
        for source in ("hub", "edge", "fallback"):
            answers.add_metric([device, source], agent.counters.get(source, 0))
        yield answers
        events = CounterMetricFamily("tandem_edge_events", "Hub errors, late replies, emulation overruns",
                                     labels=["device", "event"])  # fmt: skip
        for name in ("hub_errors", "late_replies", "emulation_overrun"):
            events.add_metric([device, name], agent.counters.get(name, 0))
        yield events
        up = GaugeMetricFamily("tandem_edge_hub_up", "1 while the agent believes the hub answers", labels=["device"])
        up.add_metric([device], 1.0 if agent.hub_up else 0.0)
        yield up
        estimate = agent.estimator.snapshot()
        link = GaugeMetricFamily("tandem_edge_link", "Current link estimates", labels=["device", "quantity"])
        for name, value in (("rtt_ms", estimate.rtt_ms), ("uplink_mbps", estimate.bandwidth_mbps),
                            ("downlink_mbps", getattr(estimate, "downlink_mbps", None))):  # fmt: skip
            if value is not None:
                link.add_metric([device, name], float(value))
        yield link
        current = agent.selector.current
        split = GaugeMetricFamily("tandem_edge_split", "1 for the split in use", labels=["device", "plan", "split"])
        if current is not None:
            split.add_metric([device, f"{agent.plan.plan_id}@{agent.plan.version}", current.split_id], 1.0)
        yield split
        sync = self.edge.sync
        if sync is not None:
            backlog = GaugeMetricFamily("tandem_edge_outbox_backlog", "Entries waiting to go up", labels=["device"])
            backlog.add_metric([device], float(sync.outbox.backlog))
            yield backlog


def edge_registry(edge: Any) -> CollectorRegistry:
    """A registry holding the edge's collector."""
    registry = CollectorRegistry()
    registry.register(EdgeCollector(edge))
    return registry


def edge_readiness(edge: Any) -> tuple[bool, str, dict[str, Any]]:
    """For /readyz: ready once the parts are loaded and the endpoint listens; the hub's state as details."""
    agent = edge.agent
    if edge.draining:
        return False, "draining: stopping, refusing new work", {}
    if agent is None or not edge.serving:
        return False, "loading the plan's parts", {}
    current = agent.selector.current
    details = {
        "plan": f"{agent.plan.plan_id}@{agent.plan.version}",
        "split": current.split_id if current is not None else None,
        "hub_reachable": agent.hub_up,
        "endpoint": edge.endpoint.address if edge.endpoint is not None else None,
    }
    return True, "", details
