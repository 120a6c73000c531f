"""The hub's Prometheus metrics, in a registry of their own."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from tandem.status_http import StatusServer, StatusServerError

__all__ = ["OTHER_DEVICES", "UNIDENTIFIED", "UNKNOWN", "DeviceLabels", "HubMetrics", "MetricsError", "bounded_label"]

logger = logging.getLogger("tandem.hub.metrics")

OTHER_DEVICES = "other"  # the label of devices beyond max_devices
UNIDENTIFIED = "unidentified"  # the label of a sender no valid message has named yet
UNKNOWN = "unknown"  # the plan / split label of a request naming a plan or split the hub does not serve

_MAX_LABEL_CHARS = 64
_TELEMETRY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")

_MAX_TELEMETRY_NAMES = 64  # the agent sends about 25; an edge cannot invent more
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsError(StatusServerError):
    """The metrics endpoint could not be started; the message names ``metrics.port`` and why."""


def bounded_label(value: str) -> str:
    """``value`` as a label of at most 64 characters: valid UTF-8, a long one cut and marked with its hash."""
    label = _printable(value)
    if len(label) <= _MAX_LABEL_CHARS:
        return label
    digest = hashlib.sha256(label.encode("utf-8", "backslashreplace")).hexdigest()[:12]
    return f"{label[: _MAX_LABEL_CHARS - 14]}…{digest}"


class DeviceLabels:
    """The one place a device id becomes a metrics label (hub requests, errors, fleet sync).

    At most ``max_devices`` distinct values, each valid UTF-8 and at most 64
    characters, and none made up by a sender whose messages never passed
    validation, so hostile or broken clients cannot grow the series without
    bound or break the exporter.
    """

    def __init__(self, max_devices: int = 10_000) -> None:
        self.max_devices = max_devices
        self._devices: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str | None, *, identified: bool = True) -> str:
        """The label for device ``name``.

        ``identified``: ``name`` comes from a message that passed validation;
        otherwise (a malformed message's claimed device, a bare routing id) only
        a device already labelled keeps its name, any other is ``unidentified``.
        Past ``max_devices`` distinct devices, new ones are ``other``.
        """
        if name and name in self._devices:  # the hot path: a device already labelled (labels are printable)
            return name
        label = bounded_label(name or "") or UNIDENTIFIED
        if label in self._devices:
            return label
        if not identified:
            return UNIDENTIFIED
        with self._lock:
            if len(self._devices) >= self.max_devices:
                if len(self._devices) == self.max_devices:
                    self._devices.add(OTHER_DEVICES)  # once: it is not counted against the limit again
                    logger.warning(
                        "metrics: %d devices labelled (metrics.max_devices); further devices are counted as %r",
                        self.max_devices, OTHER_DEVICES,
                    )  # fmt: skip
                return OTHER_DEVICES
            self._devices.add(label)
        return label


class HubMetrics:
    """Requests, latency per stage, batch sizes, errors per device, fleet gauges.

    Every label a sender could choose is bounded: devices through
    :class:`DeviceLabels` (shared with fleet sync), plans and splits to those
    the hub serves (:meth:`request_labels`), telemetry names to 128 short
    identifiers, error codes to the hub's own.
    """

    def __init__(self, *, max_devices: int = 10_000) -> None:
        self.max_devices = max_devices
        self.device_label = DeviceLabels(max_devices)
        self._served: set[tuple[str, str]] = set()
        self._served_plans: set[str] = set()
        self._telemetry_names: set[str] = set()
        self._devices_lock = threading.Lock()
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

    def set_served(self, plan_splits: Iterable[tuple[str, str]]) -> None:
        """The (plan, split) pairs the hub serves: the only plan and split values labels take."""
        self._served = set(plan_splits)
        self._served_plans = {plan for plan, _ in self._served}

    def request_labels(self, plan: str, split: str) -> tuple[str, str]:
        """(plan, split) labels for a request: its own where the hub serves them, ``unknown`` otherwise."""
        if (plan, split) in self._served:
            return plan, split
        return (plan if plan in self._served_plans else UNKNOWN), UNKNOWN

    def telemetry_name(self, name: str) -> str | None:
        """``name`` as a telemetry label (an edge sets them).

        None for a name that is not a short identifier and past ``_MAX_TELEMETRY_NAMES`` distinct names.
        """
        if name in self._telemetry_names:
            return name
        if not _TELEMETRY_NAME.fullmatch(name):
            return None
        with self._devices_lock:
            if len(self._telemetry_names) >= _MAX_TELEMETRY_NAMES:
                return None
            self._telemetry_names.add(name)
        return name

    def seen(self, device: str) -> None:
        """Note that ``device`` (from a valid message) was heard from just now."""
        self._child(self.last_seen, self.device_label(device)).set(time.time())

    def answered(self, device: str, plan: str, split: str, stage_seconds: dict[str, float], batch_size: int) -> None:
        """Record one answered activation: its time per stage and the size of the batch it ran in."""
        for stage, seconds in stage_seconds.items():
            self._child(self.latency, stage).observe(seconds)
        self._child(self.batch_size, plan, split).observe(batch_size)
        self._child(self.requests, self.device_label(device), plan, split, "ok").inc()

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def serve(self, host: str, port: int, status: StatusServer | None = None) -> int:
        """Serve /metrics (and /healthz, /readyz) on ``host:port``; returns the port it listens on.

        ``status``: a status server already started (the CLI starts it before
        the plans load, so probes see "loading plans"); it is given this
        registry. Raises :class:`MetricsError` when ``host:port`` cannot be
        bound (in use, no such address).
        """
        if status is None:
            status = StatusServer(config_key="metrics.port", serves="metrics")
            try:
                status.start(host, port)
            except StatusServerError as exc:
                raise MetricsError(str(exc)) from exc
        status.registry = self.registry
        self.status = status
        assert status.port is not None
        logger.info("metrics on http://%s:%d/metrics", host, status.port)
        return status.port

    def close(self) -> None:
        """Stop the HTTP endpoint, if started."""
        status = getattr(self, "status", None)
        if status is not None:
            status.close()


def _printable(name: str) -> str:
    """``name`` as valid UTF-8: a routing id decoded with ``surrogateescape`` shows its odd bytes as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
