"""HubSync: the hub's side of data sync, on an MQTT channel of its own.

Upstream: each ``record`` / ``sample`` / ``telemetry`` batch (format in
:mod:`tandem.edge_agent.sync`) is checked entry by entry, the good entries are stored
(de-duplicated by record id) and the batch is answered with an ``ack`` naming
every id it settles: ``meta {"ids": [stored or already held], "rejected":
[[id, code, message], ...]}``. The ack goes out only after the store has
committed, so an acknowledged entry is on the hub's disk. Entries are rejected
(and acknowledged, so the edge stops resending them) with a named code:
``foreign_record`` (the id is not the sender's), ``record_too_large`` (over
``max_record_bytes``), ``malformed_record`` (not a msgpack map / not a sample
envelope), or the protocol error's code for a bad sample envelope. A message on
a topic its device does not own, or otherwise malformed, is logged with its
reason and answered with an ``error``; the hub goes on.

A ``telemetry`` message with ``meta {"status": {...}}`` updates the fleet view
(:mod:`tandem.cloud_hub.fleet`). When a device reports a plan older than its target
(its own, or its fleet group's), the plan is announced to it again (at most
every ``reoffer_s``), so every device converges, also those that were away
when the plan was published.

Downstream: :meth:`HubSync.publish_plan` records a plan folder as a release,
sets it as the target of a device or a fleet group and announces it (``plan``
on ``{prefix}/{device}/down/plan`` or ``{prefix}/group/{group}/down/plan``).
``artifact`` requests are answered with the asked byte range of a file of a
known release.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry

from tandem.cloud_hub.fleet import FleetMetrics
from tandem.cloud_hub.metrics import DeviceLabels
from tandem.cloud_hub.store import DeviceRow, Release, Store, StoredItem, StoreError
from tandem.cloud_hub.sync_config import HubSyncConfig
from tandem.contracts.manifest import PlanManifest, edge_manifest, scan_plan_dir
from tandem.throttled_log import ThrottledLog, ThrottledWarning, clip
from tandem.transport.artifact_reply import chunk_reply
from tandem.transport.channel import Channel
from tandem.transport.envelope import Envelope, Kind, Limits, rejection_reply, unpack
from tandem.transport.errors import ChannelError, ProtocolError
from tandem.transport.serve import receive_forever

__all__ = ["HubSync", "open_hub_sync_channel", "plan_identity", "plan_uses_hub"]

logger = logging.getLogger("tandem.hub.sync")

_ENTRY_KINDS = {Kind.RECORD: "record", Kind.SAMPLE: "sample", Kind.TELEMETRY: "telemetry"}
_TOUCH_EVERY_S = 1.0


def open_hub_sync_channel(config: HubSyncConfig, *, limits: Limits = Limits(), **options: Any) -> Channel:
    """The hub's sync channel: an MQTT server with a fixed client id (persistent session), shared group if set."""
    from tandem.transport.mqtt_channel import MqttServer

    mqtt = config.mqtt.model_copy(update={"client_id": config.mqtt.client_id or f"tandem-hub-sync-{config.replica_id}"})
    return MqttServer.from_config(mqtt, limits=limits, **options)


class HubSync:
    """Consume the fleet's entries and status, serve plans and artifacts (see the module docstring).

    ``channel``: an open server channel (default: opened from ``config`` on
    ``start``); HubSync closes it on ``stop``. ``registry``: the Prometheus
    registry for the fleet gauges (the hub's, to serve them on its endpoint).
    The store stays open: its owner closes it.
    """

    def __init__(
        self,
        config: HubSyncConfig,
        store: Store,
        *,
        channel: Channel | None = None,
        registry: CollectorRegistry | None = None,
        device_label: DeviceLabels | None = None,
        limits: Limits = Limits(),
        base: Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.channel = channel
        self.limits = limits
        self.base = base
        self.metrics = FleetMetrics(registry, device_label)
        self._releases: dict[tuple[str, int], Release] = {}
        self._targets: dict[str, tuple[str, int]] = {}
        self._targets_read = 0.0
        self._offered: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {
            "batches": 0, "stored": 0, "duplicates": 0, "rejected": 0, "bad_messages": 0, "chunks": 0, "store_failed": 0
        }  # fmt: skip
        self._store_failures = ThrottledWarning(logger)  # a full disk fails every message until space is freed
        self._rejections = ThrottledLog(logger)  # one line per rejection code an interval, whatever the flood

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the channel, load the releases and targets from the store, start receiving, publish from config."""
        if self.channel is None:
            self.channel = open_hub_sync_channel(self.config, limits=self.limits)
        for release in self.store.releases():
            self._releases[(release.manifest.plan_id, release.manifest.version)] = release
        self._targets = self.store.targets()
        self._targets_read = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="hub-sync", daemon=True)
        self._thread.start()
        logger.info("hub sync: store %s, %d plan releases, %d targets", getattr(self.store, "root", self.store),
                    len(self._releases), len(self._targets))  # fmt: skip
        for item in self.config.publish:
            plan_dir = item.plan if self.base is None or item.plan.is_absolute() else self.base / item.plan
            self.publish_plan(plan_dir, version=item.version, plan_id=item.plan_id, model=item.model,
                              device=item.device, group=item.group, seed_only=True)  # fmt: skip

    def stop(self) -> None:
        """Stop receiving and close the channel."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> HubSync:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fleet(self) -> list[DeviceRow]:
        """The fleet view's rows."""
        return self.store.devices()

    # -- plans ----------------------------------------------------------------------------------------------------

    def publish_plan(
        self,
        plan_dir: Path,
        *,
        version: int | None = None,
        plan_id: str | None = None,
        model: str | None = None,
        device: str | None = None,
        group: str | None = None,
        allow_older: bool = False,
        seed_only: bool = False,
    ) -> PlanManifest:
        """Serve the plan in ``plan_dir`` and make it the target of ``device`` or ``group``, announcing it.

        ``plan_id``, ``version`` and ``model`` default to plan.yaml's ``plan_id``,
        ``version`` and ``model.name``. Hubs route activations by (plan id,
        version), so the version announced should be the one they load.

        The target is the truth (``tandem publish`` sets it): moving it to an
        older version of the same plan is a rollback and needs
        ``allow_older`` (edges then install the older version too).
        ``seed_only`` (hub.yaml's ``sync.publish`` at start): set the target
        only where none exists; a different one is kept, with a warning naming
        both. Publishing to a device or group no device has reported is
        allowed (it may join later) but warned about.
        """
        if (device is None) == (group is None):
            raise ValueError("publish_plan needs exactly one of device= and group=")
        plan_dir = Path(plan_dir).resolve()
        found_id, found_version, found_model = plan_identity(plan_dir)
        plan_id, version, model = plan_id or found_id, version or found_version, model or found_model
        if not plan_id or not model or not version:
            raise ValueError(
                f"{plan_dir}: pass plan_id=, version= and model= (plan.yaml gives plan_id {found_id!r}, "
                f"version {found_version!r}, model.name {found_model!r})"
            )
        target = f"device:{device}" if device is not None else f"group:{group}"
        existing = self.store.targets().get(target)  # the store's: tandem publish may have moved it
        if existing is not None and existing[1] > version and not (allow_older or seed_only):
            raise ValueError(
                f"{target.replace(':', ' ')}'s target is {existing[0]}@{existing[1]}; publishing version {version} "
                "would roll it back: pass --rollback (or --allow-older) to do that"
            )
        manifest = scan_plan_dir(plan_dir, plan_id=plan_id, version=version, model=model)
        release = Release(manifest, plan_dir, time.time())
        self.store.save_release(release)
        self._releases[(plan_id, version)] = release
        if seed_only and existing is not None and existing != (plan_id, version):
            logger.warning("hub sync: %s keeps its target %s@%d (set by tandem publish); hub.yaml's sync.publish "
                           "names %s: remove or update that entry, or change the target with tandem publish",
                           target.replace(":", " "), existing[0], existing[1], manifest.key)  # fmt: skip
            self._targets[target] = existing
            return manifest
        self.store.set_target(target, plan_id, version)
        self._targets[target] = (plan_id, version)
        nobody = self.audience_warning(device=device, group=group)
        if nobody:
            logger.warning("hub sync: %s", nobody)
        meta = {**edge_manifest(manifest, plan_dir).to_meta(), **({"allow_older": True} if allow_older else {})}
        announcement = Envelope(kind=Kind.PLAN, plan_id=plan_id, plan_version=version, meta=meta)
        self._announce(announcement, device=device, group=group)
        logger.info("published plan %s (%d files, %d bytes, model %s) to %s",
                    manifest.key, len(manifest.artifacts), manifest.total_bytes, model, target)  # fmt: skip
        return manifest

    def audience_warning(self, *, device: str | None, group: str | None) -> str | None:
        """Why publishing to ``device`` or ``group`` reaches no device known to the store yet, or None."""
        rows = self.store.devices()
        if device is not None and not any(row.device == device for row in rows):
            known = ", ".join(sorted(row.device for row in rows)[:10]) or "none yet"
            return (f"device {device!r} has never reported to these hubs (known: {known}); it gets the plan when "
                    "it first does")  # fmt: skip
        if group is not None and not any(group in (row.get("groups") or []) for row in rows):
            groups = sorted({g for row in rows for g in (row.get("groups") or [])})
            return (f"no device has reported group {group!r} (groups seen: {', '.join(groups[:10]) or 'none'}); "
                    "its members get the plan when they first report")  # fmt: skip
        return None

    def target_of(self, device: str, groups: list[str]) -> tuple[str, int] | None:
        """The (plan id, version) ``device`` should run: its own target, else its groups' newest."""
        wanted = self._targets.get(f"device:{device}")
        if wanted is None:
            candidates = [self._targets[f"group:{g}"] for g in groups if f"group:{g}" in self._targets]
            wanted = max(candidates, key=lambda target: target[1], default=None)
        return wanted

    def _announce(self, announcement: Envelope, *, device: str | None, group: str | None) -> None:
        channel = self.channel
        if channel is None:
            return  # not started: devices get it from reconciliation once it is
        try:
            if device is not None:
                channel.send(announcement, to=device)
            elif hasattr(channel, "send_to_group"):
                channel.send_to_group(announcement, str(group))
            else:  # a channel without group topics: announce to the members heard from
                for row in self.store.devices():
                    if group in (row.get("groups") or []):
                        channel.send(announcement, to=row.device)
        except (ChannelError, ValueError) as exc:
            logger.warning("announcing plan %s to %s failed (%s); reconciliation retries",
                           announcement.plan_id, device or group, exc)  # fmt: skip

    # -- the receive thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        channel = self.channel
        if channel is None:
            return
        receive_forever(
            channel,
            self._stop,
            on_message=lambda envelope: self._handle(channel, envelope),
            on_rejected=lambda exc: self._reject_message(channel, exc),
            on_failure=lambda envelope, _: self._reply_error(
                channel, envelope, "internal", "the hub failed on this message; see its log"
            ),
            logger=logger,
        )

    def _handle(self, channel: Channel, envelope: Envelope) -> None:
        try:
            self._dispatch(channel, envelope)
        except StoreError as exc:  # the store is the hub's own (disk full, I/O error): the edge resends later
            self.counters["store_failed"] += 1
            self._store_failures.warn(
                f"hub sync: the store failed on a message of kind {envelope.kind.value} from "
                f"{envelope.sender or '?'}; the edge keeps it and resends: {exc}"
            )
            self._reply_error(channel, envelope, "store_failed", "the hub could not store this message; resend later",
                              quiet=True)  # fmt: skip

    def _dispatch(self, channel: Channel, envelope: Envelope) -> None:
        device = str(envelope.sender or envelope.device_id)
        kind = envelope.kind
        if kind in _ENTRY_KINDS and "ids" in envelope.meta:
            self._store_batch(channel, envelope, device)
        elif kind is Kind.TELEMETRY and isinstance(envelope.meta.get("status"), dict):
            self._on_status(channel, device, envelope.meta["status"])
        elif kind is Kind.ARTIFACT:
            self._touch(device)
            self._serve_chunk(channel, envelope)
        else:
            self._reply_error(channel, envelope, "unsupported_kind",
                              f"the hub's sync channel does not take {kind.value!r} messages", "kind")  # fmt: skip

    def _store_batch(self, channel: Channel, envelope: Envelope, device: str) -> None:
        kind = _ENTRY_KINDS[envelope.kind]
        ids, created = envelope.meta.get("ids"), envelope.meta.get("created", [])
        count = len(envelope.frames)
        if (
            not isinstance(ids, list)
            or len(ids) != count
            or not all(isinstance(i, str) for i in ids)
            or not isinstance(created, list)
            or len(created) not in (0, count)
        ):
            self._reply_error(channel, envelope, "malformed_batch",
                              f"meta.ids must list one id per tensor ({count} tensors)", "meta.ids")  # fmt: skip
            return
        items: list[StoredItem] = []
        rejected: list[list[str]] = []
        for index, record_id in enumerate(ids):
            when = created[index] if created and isinstance(created[index], (int, float)) else time.time()
            try:
                items.append(self._item(device, kind, record_id, float(when), envelope, index))
            except _Rejected as exc:
                rejected.append([record_id, exc.code, exc.message])
                self.metrics.rejected.labels(self.metrics.device(device), exc.code).inc()
                self._rejections.log(exc.code, f"hub sync: rejected {kind} entry {clip(record_id)} from "
                                               f"{clip(device)} ({exc.code}): {exc.message}")  # fmt: skip
        new = self.store.put(items)  # a StoreError is answered by _handle: the edge resends the batch
        self._touched[device] = time.monotonic()
        self.counters["batches"] += 1
        self.counters["stored"] += len(new)
        self.counters["duplicates"] += len(items) - len(new)
        self.counters["rejected"] += len(rejected)
        label = self.metrics.device(device)
        if new:
            self.metrics.stored.labels(label, kind).inc(len(new))
        if len(items) > len(new):
            self.metrics.duplicates.labels(label).inc(len(items) - len(new))
        self.metrics.last_seen.labels(label).set(time.time())
        ack = envelope.reply(Kind.ACK, meta={"ids": [item.record_id for item in items], "rejected": rejected})
        self._send(channel, device, ack)

    def _item(
        self, device: str, kind: str, record_id: str, created: float, envelope: Envelope, index: int
    ) -> StoredItem:
        spec, frame = envelope.tensors[index], envelope.frames[index]
        if not record_id.startswith(f"{device}:"):
            raise _Rejected("foreign_record", f"record id {record_id!r} does not belong to device {device!r}")
        if spec.dtype != "uint8" or spec.codec != "raw" or spec.compression != "none" or len(spec.shape) != 1:
            raise _Rejected("malformed_record", f"entry {index} is not one raw uint8 tensor")
        if len(frame) > self.config.max_record_bytes:
            raise _Rejected(
                "record_too_large",
                f"{kind} entry of {len(frame)} bytes is over the hub's limit of {self.config.max_record_bytes} "
                "bytes (sync.max_record_bytes)",
            )
        if kind == "sample":
            try:
                sample = unpack(frame, self.limits)
            except ProtocolError as exc:
                raise _Rejected(exc.code, f"sample envelope: {exc}") from exc
            if sample.kind is not Kind.SAMPLE or sample.device_id not in ("", device):
                raise _Rejected("malformed_record", f"a sample entry must be a sample envelope of device {device!r}")
            body = {
                "request_id": sample.request_id, "plan_id": sample.plan_id, "plan_version": sample.plan_version,
                "split": sample.split_id, "meta": sample.meta,
                "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in sample.tensors],
            }  # fmt: skip
            return StoredItem(record_id, device, kind, created, body, bytes(frame))
        try:
            body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise _Rejected("malformed_record", f"entry is not valid msgpack: {exc}") from exc
        if not isinstance(body, dict):
            raise _Rejected("malformed_record", f"entry is a {type(body).__name__}, expected a map")
        return StoredItem(record_id, device, kind, created, body)

    def _on_status(self, channel: Channel, device: str, status: dict[str, Any]) -> None:
        self.store.touch_device(device, seen=time.time(), status=status)
        self._touched[device] = time.monotonic()
        rows = [row for row in self.store.devices() if row.device == device]
        if rows:
            self.metrics.observe(rows[0])
        self._reconcile(channel, device, status)

    def _reconcile(self, channel: Channel, device: str, status: dict[str, Any]) -> None:
        """Announce the target plan again to a device that reports an older one."""
        if time.monotonic() - self._targets_read > self.config.reoffer_s:
            self._targets = self.store.targets()  # another replica sharing the store may have published
            self._targets_read = time.monotonic()
        wanted = self.target_of(device, [g for g in status.get("groups") or [] if isinstance(g, str)])
        if wanted is None:
            return
        plan_id, version = wanted
        key = f"{plan_id}@{version}"
        current = status.get("plan_version")
        if not isinstance(current, int) or (status.get("plan_id") == plan_id and current == version):
            return
        older = current > version  # a rollback: the target is the truth
        if key in (status.get("failed_plans") or []) or status.get("plan_target") == key:
            return
        now = time.monotonic()
        if now - self._offered.get(device, -1e9) < self.config.reoffer_s:
            return
        release = self._release(wanted)
        if release is None:
            return
        self._offered[device] = now
        logger.info("hub sync: %s runs %s@%s, its target is %s: announcing it again",
                    clip(device), clip(status.get("plan_id")), current, key)  # fmt: skip
        meta = {**edge_manifest(release.manifest, release.directory).to_meta(),
                **({"allow_older": True} if older else {})}  # fmt: skip
        announcement = Envelope(kind=Kind.PLAN, plan_id=plan_id, plan_version=version, meta=meta)
        self._send(channel, device, announcement)

    def _release(self, key: tuple[str, int]) -> Release | None:
        """A release served here, also one another replica sharing the store published."""
        if key not in self._releases:
            for release in self.store.releases():
                self._releases[(release.manifest.plan_id, release.manifest.version)] = release
        return self._releases.get(key)

    def _serve_chunk(self, channel: Channel, request: Envelope) -> None:
        release = self._release((request.plan_id, request.plan_version))
        if release is None:
            message = f"plan {clip(request.plan_id)}@{request.plan_version} is not served here"
            self._reply_error(channel, request, "unknown_plan", message, "plan")
            return
        path, offset, length = (request.meta.get(k) for k in ("path", "offset", "length"))
        entry = release.manifest.entry(path) if isinstance(path, str) else None
        if entry is None:
            self._reply_error(channel, request, "unknown_artifact",
                              f"plan {release.manifest.key} has no artifact {path!r}", "meta.path")  # fmt: skip
            return
        limit = self.config.max_artifact_chunk_bytes
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0 and 0 < length <= limit):
            self._reply_error(channel, request, "bad_range",
                              f"offset {offset!r}, length {length!r}: expected offset >= 0, 0 < length <= {limit}",
                              "meta.length")  # fmt: skip
            return
        file = release.directory / entry.path
        try:
            size = file.stat().st_size
            with file.open("rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
        except OSError as exc:
            logger.error("hub sync: artifact %s of plan %s cannot be read: %s", entry.path, release.manifest.key, exc)
            self._reply_error(channel, request, "unknown_artifact", f"artifact {entry.path!r} cannot be read here")
            return
        self.counters["chunks"] += 1
        self.metrics.artifact_bytes.labels(self.metrics.device(request.sender)).inc(len(data))
        self._send(channel, str(request.sender), chunk_reply(request, data, path=entry.path, offset=offset, size=size))

    # -- replies --------------------------------------------------------------------------------------------------

    def _reject_message(self, channel: Channel, exc: ProtocolError) -> None:
        device = exc.sender or exc.device_id or "unknown"
        self.counters["bad_messages"] += 1
        self.metrics.rejected.labels(self.metrics.device(device, identified=False), exc.code).inc()
        self._rejections.log(exc.code, f"hub sync: rejected a message from {clip(device)} ({exc.code}): {exc}")
        if exc.sender is None:
            return
        self._send(channel, exc.sender, rejection_reply(exc, device_id=exc.sender))

    def _reply_error(
        self, channel: Channel, request: Envelope, code: str, message: str, field: str = "", *, quiet: bool = False
    ) -> None:
        """Answer ``request`` with an error; logged at WARNING unless ``quiet`` (the caller logged it already)."""
        line = f"hub sync: {request.kind.value} from {clip(request.sender)} refused ({code}): {message}"
        if quiet:
            logger.debug("%s", line)
        else:
            self._rejections.log(code, line)
        if request.sender is not None:
            self._send(channel, request.sender, request.error_reply(code, message, field_name=field))

    def _send(self, channel: Channel, to: str, envelope: Envelope) -> None:
        try:
            channel.send(envelope, to=to)
        except (ChannelError, ValueError) as exc:
            logger.debug("hub sync: %s to %s not sent: %s", envelope.kind.value, to, exc)

    def _touch(self, device: str) -> None:
        """Note that ``device`` was heard; bookkeeping a failing store must not stop the chunk it came with."""
        now = time.monotonic()
        if now - self._touched.get(device, -1e9) >= _TOUCH_EVERY_S:
            self._touched[device] = now
            try:
                self.store.touch_device(device, seen=time.time())
            except StoreError as exc:
                self.counters["store_failed"] += 1
                self._store_failures.warn(f"hub sync: noting that {device} was heard failed: {exc}")


class _Rejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def plan_identity(plan_dir: Path) -> tuple[str | None, int | None, str | None]:
    """(plan_id, version, model.name) from ``plan_dir``'s plan.yaml, each None where it does not say."""
    data = _plan_yaml(plan_dir)
    plan_id, version, model = data.get("plan_id"), data.get("version"), data.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    return (
        plan_id if isinstance(plan_id, str) else None,
        version if isinstance(version, int) and not isinstance(version, bool) else None,
        name if isinstance(name, str) else None,
    )


def unserved_plan(
    plan_dir: Path, plan_id: str | None, version: int | None, served: set[tuple[str, int]]
) -> str | None:
    """Why edges given this plan would fail at the hub, or None: the hub serves its version, or it needs no hub.

    ``plan_id`` and ``version`` default to plan.yaml's; ``served`` holds the
    (plan id, version) pairs whose cloud parts the hub loads.
    """
    found_id, found_version, _ = plan_identity(plan_dir)
    plan_id, version = plan_id or found_id, version or found_version
    if (plan_id, version) in served or not plan_uses_hub(plan_dir):
        return None
    loaded = ", ".join(f"{p} v{v}" for p, v in sorted(served)) or "none"
    return (
        f"plan {plan_id} v{version} ({plan_dir}) is not among the plans this hub serves ({loaded}): edges that "
        "install it would get unknown_plan_version on every request"
    )


def plan_uses_hub(plan_dir: Path) -> bool:
    """Whether a split of the plan in ``plan_dir`` has a cloud part (an edge serving it sends to a hub)."""
    splits = _plan_yaml(plan_dir).get("splits")
    return isinstance(splits, list) and any(isinstance(s, dict) and s.get("cloud_model") for s in splits)


def _plan_yaml(plan_dir: Path) -> dict[str, Any]:
    path = plan_dir / "plan.yaml"
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}
