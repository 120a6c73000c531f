"""The hub's Prometheus metrics, in a registry of their own."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["HubMetrics"]

logger = logging.getLogger("tandem.hub.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP exporter; returns the port it listens on."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
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
