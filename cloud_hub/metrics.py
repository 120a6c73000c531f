"""The hub's Prometheus metrics, in a registry of their own."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["HubMetrics", "MetricsError"]

logger = logging.getLogger("tandem.hub.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsError(Exception):
    """The metrics endpoint could not be started; the message names ``metrics.port`` and why."""


class HubMetrics:
    """Requests, latency per stage, batch sizes, errors per device, fleet gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_hub_requests", "Activations answered", ["device", "plan", "split", "outcome"], registry=r
        )
        self.latency = Histogram(
            "tandem_hub_stage_seconds", "Time per stage in the hub", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "tandem_hub_batch_size", "Requests per executed batch", ["plan", "split"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.errors = Counter("tandem_hub_errors", "Error replies sent", ["device", "code"], registry=r)
        self.dropped_replies = Counter(
            "tandem_hub_undeliverable_replies", "Replies to edges that were gone", ["device"], registry=r
        )
        self.last_seen = Gauge(
            "tandem_hub_device_last_seen_seconds", "Unix time of last message", ["device"], registry=r
        )
        self.telemetry = Gauge(
            "tandem_edge_telemetry", "Latest telemetry value per device", ["device", "name"], registry=r
        )

        # labels() costs a lookup, a lock and checks each time; the hot path keeps the children.
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def seen(self, device: str) -> None:
        """Note that ``device`` was heard from just now."""
        self._child(self.last_seen, device).set(time.time())

    def answered(self, device: str, plan: str, split: str, stage_seconds: dict[str, float], batch_size: int) -> None:
        """Record one answered activation: its time per stage and the size of the batch it ran in."""
        for stage, seconds in stage_seconds.items():
            self._child(self.latency, stage).observe(seconds)
        self._child(self.batch_size, plan, split).observe(batch_size)
        self._child(self.requests, device, plan, split, "ok").inc()

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; returns the port it listens on.

        Raises :class:`MetricsError` when ``host:port`` cannot be bound (in use, no such address).
        """
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MetricsError(
                f"metrics.port {port}: cannot listen on {host}:{port}: {reason}; "
                "choose another metrics.port (0 picks a free one) or set it to null to turn metrics off"
            ) from exc
        bound = server.server_address[1]
        self._server = server
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return int(bound)

    def close(self) -> None:
        """Stop the HTTP exporter, if started."""
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
