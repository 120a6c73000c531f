"""The fleet view: per device last seen, plan version, link estimates, outbox backlog, dropped records.

The rows come from the store (the hub updates them from every message and
every status report a device sends), so ``tandem fleet`` can print them from
another process while the hub runs. :class:`FleetMetrics` exports the same
figures as Prometheus gauges, in the hub's registry when given one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from tandem.cloud_hub.metrics import DeviceLabels, bounded_label
from tandem.cloud_hub.store import DeviceRow

__all__ = ["FleetMetrics", "format_fleet", "target_for"]

_COLUMNS = ("device", "last seen", "running", "target", "state", "rtt ms", "Mbit/s", "backlog", "dropped", "records",
            "samples", "groups")  # fmt: skip


def target_for(device: str, groups: Sequence[str], targets: Mapping[str, tuple[str, int]]) -> tuple[str, int] | None:
    """The (plan id, version) a device should run: its own target, else its groups' newest (as the hubs decide)."""
    own = targets.get(f"device:{device}")
    if own is not None:
        return own
    candidates = [targets[f"group:{g}"] for g in groups if f"group:{g}" in targets]
    return max(candidates, key=lambda target: target[1], default=None)


def format_fleet(
    rows: Sequence[DeviceRow], *, now: float | None = None, targets: Mapping[str, tuple[str, int]] | None = None
) -> str:
    """The fleet as a text table, one device per line: what it runs, what it should run, and its state."""
    now = time.time() if now is None else now
    table = [_COLUMNS]
    for row in rows:
        plan = f"{row.get('plan_id')} v{row.get('plan_version')}" if row.get("plan_id") else "-"
        wanted = target_for(row.device, row.get("groups") or [], targets or {})
        target = f"{wanted[0]} v{wanted[1]}" if wanted else "-"
        if wanted and plan != target:
            target += " *"  # not there yet
        state = str(row.get("plan_state", "?"))
        if row.get("plan_error"):
            state += f" ({row.get('plan_error')})"
        table.append((
            row.device,
            _ago(now - row.last_seen),
            plan,
            target,
            state,
            _number(row.get("rtt_ms")),
            _number(row.get("bandwidth_mbps")),
            str(row.get("outbox_backlog", "?")),
            str(row.get("outbox_dropped", "?")),
            str(row.records),
            str(row.samples),
            ",".join(row.get("groups", []) or []) or "-",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    if len(table) == 1:
        lines.append("(no device has synced yet)")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _number(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


class FleetMetrics:
    """Prometheus gauges per device, and counters of what sync stored, de-duplicated and rejected."""

    def __init__(self, registry: CollectorRegistry | None = None, device_label: DeviceLabels | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # The hub's own (one bound for all its metrics) when sync runs inside a hub.
        self.device = device_label or DeviceLabels()
        r = self.registry
        self.last_seen = Gauge("tandem_fleet_last_seen_seconds", "Unix time a device was last heard on sync",
                               ["device"], registry=r)  # fmt: skip
        self.plan_version = Gauge("tandem_fleet_plan_version", "Plan version in use", ["device", "plan"], registry=r)
        self.rtt = Gauge("tandem_fleet_rtt_ms", "Device's RTT estimate to the hub", ["device"], registry=r)
        self.bandwidth = Gauge("tandem_fleet_bandwidth_mbps", "Device's uplink estimate", ["device"], registry=r)
        self.backlog = Gauge("tandem_fleet_outbox_backlog", "Entries waiting in a device's outbox", ["device"],
                             registry=r)  # fmt: skip
        self.dropped = Gauge("tandem_fleet_outbox_dropped", "Entries a device dropped because its outbox was full",
                             ["device"], registry=r)  # fmt: skip
        self.stored = Counter("tandem_sync_stored", "Entries stored", ["device", "kind"], registry=r)
        self.duplicates = Counter("tandem_sync_duplicates", "Entries received again and not stored twice",
                                  ["device"], registry=r)  # fmt: skip
        self.rejected = Counter("tandem_sync_rejected", "Entries or messages rejected", ["device", "code"], registry=r)
        self.artifact_bytes = Counter("tandem_sync_artifact_bytes", "Artifact bytes served", ["device"], registry=r)
        self._plans: dict[str, str] = {}

    def observe(self, row: DeviceRow) -> None:
        """Set the gauges of one device from its row."""
        device = self.device(row.device)
        self.last_seen.labels(device).set(row.last_seen)
        plan = bounded_label(str(row.get("plan_id", "")))
        if self._plans.get(device, plan) != plan:
            self.plan_version.remove(device, self._plans[device])
        self._plans[device] = plan
        self.plan_version.labels(device, plan).set(float(row.get("plan_version", 0) or 0))
        for gauge, key in ((self.rtt, "rtt_ms"), (self.bandwidth, "bandwidth_mbps"),
                           (self.backlog, "outbox_backlog"), (self.dropped, "outbox_dropped")):  # fmt: skip
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                gauge.labels(device).set(value)
