"""EdgeSync: the edge's side of data sync with the hub, on an MQTT channel of its own.

Upstream, at-least-once: entries written to the :class:`~tandem.edge_agent.outbox.Outbox`
go up in batches, one message per batch of one kind (``record``, ``sample`` or
``telemetry``)::

    meta {"ids": [record ids], "created": [unix seconds]}
    tensors: one raw uint8 tensor per entry ("0", "1", ...), in the order of ids, holding its body

The hub answers each batch with an ``ack`` (same request id) whose ``meta``
is ``{"ids": [stored or already held], "rejected": [[id, code, message], ...]}``;
only then are those entries deleted from the outbox. A batch not acknowledged
within ``ack_timeout_s`` (doubling while the hub stays silent, up to
``max_ack_timeout_s``) is sent again, so a broker restart, a hub restart, a
link that is down or this process being killed only delays entries; the
hub's de-duplication by record id keeps them exactly once in its store. At
most ``max_in_flight_batches`` batches wait for an acknowledgement, and nothing
is sent while the broker connection is down.

Status: every ``status_interval_s`` (and at once after a plan change) a
``telemetry`` message with ``meta {"status": {...}}`` tells the hub the plan in
use, the outbox backlog and dropped count and the link estimates, for the fleet
view. Every ``telemetry_interval_s`` a telemetry entry also goes into the outbox.

Downstream: a ``plan`` announcement (on the device's own topic or on one of
its fleet groups') for this device's model and a newer version is downloaded
and installed by :class:`~tandem.edge_agent.artifacts.ArtifactDownloader`; see
:mod:`tandem.edge_agent.artifacts`. Refusals are logged with their named reason and
reported in the status; serving goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from tandem.contracts.manifest import ArtifactRejected, PlanManifest
from tandem.edge_agent.artifacts import ArtifactDownloader, Installer, PlanReleases
from tandem.edge_agent.outbox import Outbox, OutboxEntry, OutboxError
from tandem.edge_agent.sync_config import EdgeSyncConfig
from tandem.throttled_log import ThrottledWarning
from tandem.transport.channel import Channel
from tandem.transport.codec import TensorSpec
from tandem.transport.envelope import Envelope, Kind, Limits, new_request_id
from tandem.transport.errors import ChannelClosed, ChannelError, ChannelTimeout, ConnectError, ProtocolError

__all__ = ["EdgeSync", "open_sync_channel"]

logger = logging.getLogger("tandem.edge.sync")

ENTRY_KIND = {"record": Kind.RECORD, "sample": Kind.SAMPLE, "telemetry": Kind.TELEMETRY}
# Hub error codes that mean the message itself can never be accepted: split the batch, then reject its entry.
_PERMANENT = {"message_too_large", "truncated", "malformed_header", "tensor_spec", "unknown_codec", "malformed_batch"}
_OPEN_RETRY_MAX_S = 30.0


def _system_telemetry() -> Mapping[str, float]:
    from tandem.edge_agent.telemetry import system_telemetry

    return system_telemetry()


def open_sync_channel(config: EdgeSyncConfig, device_id: str, *, limits: Limits = Limits(), **options: Any) -> Channel:
    """The sync channel: an MQTT client with a fixed client id (a persistent session) and the fleet groups."""
    from tandem.transport.mqtt_channel import MqttClient

    mqtt = config.mqtt.model_copy(update={"client_id": config.mqtt.client_id or f"tandem-sync-{device_id}"})
    return MqttClient.from_config(mqtt, device_id=device_id, limits=limits, groups=config.groups, **options)


@dataclass
class _Batch:
    batch_id: str
    kind: str
    seqs: set[int]
    sent_at: float
    solo: bool = False


class EdgeSync:
    """Drains the outbox to the hub with acknowledgements; follows plan announcements (module docstring).

    ``channel`` is an open channel or a function that opens one (retried with
    backoff while the broker is unreachable); EdgeSync closes it on ``stop``.
    ``install(manifest, folder)`` loads, self-checks and swaps in a downloaded
    plan and raises to refuse it; ``plan_in_use()`` says which (plan id,
    version) serves now; ``model`` is the model plans must be for (default:
    ``config.model``, else the installed plan's); ``link_estimate()`` gives
    (RTT ms, uplink Mbit/s) for the status (default: the sync's own ack round
    trip); ``telemetry()`` the values of each telemetry entry (default: CPU,
    memory, temperature). The outbox stays open: its owner closes it after ``stop``.
    """

    def __init__(
        self,
        config: EdgeSyncConfig,
        outbox: Outbox,
        channel: Channel | Callable[[], Channel],
        *,
        device_id: str,
        model: str | None = None,
        install: Installer | None = None,
        plan_in_use: Callable[[], tuple[str, int]] | None = None,
        link_estimate: Callable[[], tuple[float | None, float | None]] | None = None,
        telemetry: Callable[[], Mapping[str, float]] | None = None,
        plans_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.device_id = device_id
        self._open = None if isinstance(channel, Channel) else channel
        self.channel: Channel | None = channel if isinstance(channel, Channel) else None
        self.releases = PlanReleases(plans_dir or config.plans_dir)
        current = self.releases.current()
        self.model = model or config.model or (current[0].model if current else None)
        self._plan_in_use = plan_in_use
        self._link_estimate = link_estimate
        self._telemetry = telemetry or _system_telemetry
        self._clock = clock
        self.downloader = ArtifactDownloader(
            self.releases,
            self._send_quietly,
            device_id=device_id,
            install=install or (lambda manifest, folder: None),
            on_outcome=self._plan_outcome,
            chunk_bytes=config.artifact_chunk_bytes,
            window=config.artifact_window,
            timeout_s=config.artifact_timeout_s,
            clock=clock,
            reserve_bytes=lambda: max(0, outbox.max_bytes - outbox.bytes),
        )
        # while the hub's disk or this one is full, every batch would log the same line
        self._hub_busy = ThrottledWarning(logger)
        self._outbox_failures = ThrottledWarning(logger)
        self._batches: dict[str, _Batch] = {}
        self._batch_of: dict[int, str] = {}
        self._cursor = 0
        self._ack_timeout = config.ack_timeout_s
        self._was_connected = True
        self._resumed_at = 0.0
        self._next_status = 0.0
        self._next_telemetry = clock() + config.telemetry_interval_s
        self._sync_rtt_ms: float | None = None
        self.plan_state = "serving"
        self.plan_error = ""
        self.counters = {
            "batches_sent": 0, "entries_sent": 0, "batches_resent": 0, "acked": 0, "rejected": 0,
            "hub_errors": 0, "bad_messages": 0, "plans_refused": 0, "reconnects": 0,
        }  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.model is None:
            logger.warning("no model name set (sync.model): plan announcements for any model will be accepted")
        if config.outbox.max_record_bytes > config.mqtt.max_payload_bytes:
            logger.info(
                "entries up to %d bytes (sync.outbox.max_record_bytes) may exceed sync.mqtt.max_payload_bytes (%d) "
                "and go up in chunks; hub replicas on a shared subscription need unchunked messages "
                "(docs/scaling.md)", config.outbox.max_record_bytes, config.mqtt.max_payload_bytes,
            )  # fmt: skip

    @classmethod
    def from_config(
        cls, config: EdgeSyncConfig, outbox: Outbox, *, device_id: str, limits: Limits = Limits(), **kwargs: Any
    ) -> EdgeSync:
        """An EdgeSync whose MQTT channel is opened (and re-tried) from ``config`` in its thread."""
        return cls(config, outbox, lambda: open_sync_channel(config, device_id, limits=limits), device_id=device_id,
                   **kwargs)  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume an interrupted plan download, then start the sync thread."""
        self._resume_staged()
        self._thread = threading.Thread(target=self._run, name="edge-sync", daemon=True)
        self._thread.start()
        logger.info(
            "sync for %s: outbox %s (%d waiting), plans in %s, model %s",
            self.device_id, self.outbox.path, self.outbox.backlog, self.releases.root, self.model,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the thread, keep a partial download for later, close the channel."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.downloader.stop()
        if self.channel is not None:
            self.channel.close()

    def __enter__(self) -> EdgeSync:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------------------------------

    def plan_in_use(self) -> tuple[str, int]:
        """(plan id, version) serving now."""
        if self._plan_in_use is not None:
            return self._plan_in_use()
        current = self.releases.current()
        return (current[0].plan_id, current[0].version) if current else ("", 0)

    @property
    def in_flight(self) -> int:
        """Entries sent and not yet acknowledged."""
        return len(self._batch_of)

    def status(self) -> dict[str, Any]:
        """What the fleet view shows for this device."""
        plan_id, version = self.plan_in_use()
        rtt, bandwidth = self._link_estimate() if self._link_estimate else (None, None)
        stats = self.outbox.stats()
        busy = self.downloader.busy_with
        return {
            "time": time.time(),
            "plan_id": plan_id,
            "plan_version": version,
            "plan_state": self.plan_state,
            "plan_error": self.plan_error,
            "plan_target": busy.key if busy else "",
            "failed_plans": sorted(self.releases.failed()),
            "model": self.model or "",
            "groups": list(self.config.groups),
            "outbox_backlog": stats["backlog"],
            "outbox_bytes": stats["bytes"],
            "outbox_dropped": stats["dropped"],
            "outbox_rejected": stats["rejected"] + stats["too_large"],
            "outbox_written": stats["written"],
            "in_flight": self.in_flight,
            "rtt_ms": rtt if rtt is not None else self._sync_rtt_ms,
            "bandwidth_mbps": bandwidth,
            "sync_rtt_ms": self._sync_rtt_ms,
        }

    # -- the sync thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        retry_s = 1.0
        next_open = 0.0
        while not self._stop.is_set():
            if self.channel is None:
                if self._clock() < next_open:
                    self._stop.wait(0.1)
                    continue
                try:
                    self.channel = self._open()  # type: ignore[misc]
                    retry_s = 1.0
                except ConnectError as exc:
                    logger.warning("sync channel: %s; retrying in %.0f s", exc, retry_s)
                    next_open = self._clock() + retry_s
                    retry_s = min(retry_s * 2, _OPEN_RETRY_MAX_S)
                    continue
            try:
                self._receive(self.channel)
                self._pump()
            except ChannelClosed:
                return
            except Exception:  # the sync thread must outlive any one bad message or disk hiccup
                logger.exception("sync step failed; going on")
                self._stop.wait(0.5)

    def _receive(self, channel: Channel) -> None:
        timeout: float | None = 0.05
        for _ in range(1000):
            try:
                envelope = channel.recv(timeout=timeout)
            except ChannelTimeout:
                return
            except ProtocolError as exc:
                self.counters["bad_messages"] += 1
                logger.warning("sync: rejected a message from the hub (%s): %s", exc.code, exc)
                continue
            timeout = 0.0
            self._dispatch(envelope)

    def _dispatch(self, envelope: Envelope) -> None:
        kind = envelope.kind
        if kind is Kind.ACK:
            self._on_ack(envelope)
        elif kind is Kind.PLAN:
            self._on_plan(envelope)
        elif self.downloader.on_reply(envelope):
            return
        elif kind is Kind.ERROR:
            self._on_error(envelope)
        else:
            logger.warning("sync: ignored a %s message from the hub (not expected on the sync channel)", kind.value)

    # -- upstream -------------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        now = self._clock()
        channel = self.channel
        connected = bool(getattr(channel, "connected", True))
        if connected and not self._was_connected:
            self._resumed_at = now
            self.counters["reconnects"] += 1
            self.downloader.resend_all()
            logger.info("sync: broker connection back; %d entries await acknowledgement", self.in_flight)
        self._was_connected = connected
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.telemetry_interval_s
            self._write_telemetry()
        if not connected:
            return
        self._resend_late(now)
        self._send_new(now)
        if now >= self._next_status:
            self._next_status = now + self.config.status_interval_s
            self._send_quietly(Envelope(kind=Kind.TELEMETRY, device_id=self.device_id, meta={"status": self.status()}))
        self.downloader.pump()

    def _send_new(self, now: float) -> None:
        while len(self._batches) < self.config.max_in_flight_batches:
            entries = self.outbox.peek(
                after_seq=self._cursor, limit=self.config.batch_max_records, max_bytes=self.config.batch_max_bytes
            )
            if not entries:
                return
            self._cursor = entries[-1].seq
            by_kind: dict[str, list[OutboxEntry]] = {}
            for entry in entries:  # one message per kind; the hub does not care about order across kinds
                by_kind.setdefault(entry.kind, []).append(entry)
            for same_kind in by_kind.values():
                self._send_batch(same_kind, now)

    def _resend_late(self, now: float) -> None:
        late = [b for b in self._batches.values() if now - max(b.sent_at, self._resumed_at) > self._ack_timeout]
        if not late:
            return
        for batch in late:
            self._forget(batch)
            entries = self.outbox.get(sorted(batch.seqs))
            self.counters["batches_resent"] += 1
            if batch.solo:
                for entry in entries:
                    self._send_batch([entry], now, solo=True)
            elif entries:
                self._send_batch(entries, now)
        logger.info("sync: %d batches not acknowledged within %.1f s, sent again", len(late), self._ack_timeout)
        self._ack_timeout = min(self._ack_timeout * 2, self.config.max_ack_timeout_s)

    def _send_batch(self, entries: list[OutboxEntry], now: float, *, solo: bool = False) -> None:
        kind = entries[0].kind
        batch = _Batch(new_request_id(), kind, {e.seq for e in entries}, now, solo)
        self._batches[batch.batch_id] = batch
        for seq in batch.seqs:
            self._batch_of[seq] = batch.batch_id
        envelope = Envelope(
            kind=ENTRY_KIND[kind],
            request_id=batch.batch_id,
            device_id=self.device_id,
            meta={"ids": [e.record_id for e in entries], "created": [e.created for e in entries]},
        )
        for index, entry in enumerate(entries):
            size = len(entry.body)
            envelope.tensors.append(TensorSpec(str(index), "uint8", (size,), "raw", "none", size, size))
            envelope.frames.append(entry.body)
        envelope.timestamps["edge_sent"] = time.time()
        self.counters["batches_sent"] += 1
        self.counters["entries_sent"] += len(entries)
        self._send_quietly(envelope)  # a failed send is retried by the ack timeout

    def _on_ack(self, envelope: Envelope) -> None:
        ids = envelope.meta.get("ids", [])
        rejected = envelope.meta.get("rejected", [])
        if not isinstance(ids, list) or not isinstance(rejected, list):
            logger.warning("sync: ignored an ack whose ids/rejected are not lists")
            return
        seq_of = self.outbox.seq_of
        acked_seqs = [seq for seq in (seq_of(i) for i in ids if isinstance(i, str)) if seq is not None]
        refused = []
        for item in rejected:
            if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str):
                logger.warning("sync: the hub rejected entry %s (%s): %s", item[0], item[1], item[2])
                refused.append(item[0])
        refused_seqs = [seq for seq in map(seq_of, refused) if seq is not None]
        try:
            acked = self.outbox.ack_seqs(acked_seqs)
            if refused_seqs:
                self.counters["rejected"] += self.outbox.ack_seqs(refused_seqs, rejected=True)
        except OutboxError as exc:  # the entries stay and go again; the hub drops the duplicates
            self._outbox_failures.warn(f"sync: acknowledged entries not deleted, they will be resent: {exc}")
            return
        self.counters["acked"] += acked
        batch = self._batches.get(envelope.request_id)
        if batch is not None:
            sent = envelope.timestamps.get("edge_sent")
            if sent is not None:
                rtt = 1000 * (time.time() - sent)
                self._sync_rtt_ms = rtt if self._sync_rtt_ms is None else 0.8 * self._sync_rtt_ms + 0.2 * rtt
        for seq in [*acked_seqs, *refused_seqs]:
            owner = self._batches.get(self._batch_of.pop(seq, ""))
            if owner is not None:
                owner.seqs.discard(seq)
                if not owner.seqs:
                    del self._batches[owner.batch_id]
        self._ack_timeout = self.config.ack_timeout_s

    def _on_error(self, envelope: Envelope) -> None:
        self.counters["hub_errors"] += 1
        code, message = envelope.meta.get("code"), envelope.meta.get("message")
        batch = self._batches.get(envelope.request_id)
        if batch is None:  # a status report, or a batch already acknowledged
            self._hub_busy.warn(f"sync: hub error {code}: {message}")
            return
        if code not in _PERMANENT:  # the ack timeout sends it again
            self._hub_busy.warn(f"sync: hub refused a {batch.kind} batch of {len(batch.seqs)} ({code}): {message}; "
                                "resending after the ack timeout")  # fmt: skip
            return
        logger.warning("sync: hub refused a %s batch of %d (%s): %s", batch.kind, len(batch.seqs), code, message)
        self._forget(batch)
        entries = self.outbox.get(sorted(batch.seqs))
        if len(entries) == 1:
            logger.warning("sync: entry %s can never be accepted (%s); dropped", entries[0].record_id, code)
            self.counters["rejected"] += self.outbox.ack([entries[0].record_id], rejected=True)
            return
        now = self._clock()
        for entry in entries:  # send one by one to find the one the hub cannot take
            self._send_batch([entry], now, solo=True)

    def _forget(self, batch: _Batch) -> None:
        self._batches.pop(batch.batch_id, None)
        for seq in batch.seqs:
            if self._batch_of.get(seq) == batch.batch_id:
                del self._batch_of[seq]

    def _write_telemetry(self) -> None:
        values: dict[str, Any] = dict(self._telemetry())
        values.update(time=time.time(), outbox_backlog=self.outbox.backlog)
        try:
            self.outbox.put("telemetry", msgpack.packb(values, use_bin_type=True))
        except OutboxError as exc:
            logger.warning("telemetry not stored: %s", exc)

    def _send_quietly(self, envelope: Envelope) -> None:
        channel = self.channel
        if channel is None:
            return
        try:
            channel.send(envelope)
        except ChannelError as exc:
            logger.debug("sync: %s message not sent now (%s); it is retried", envelope.kind.value, exc)

    # -- downstream -----------------------------------------------------------------------------------------------

    def _on_plan(self, envelope: Envelope) -> None:
        try:
            manifest = PlanManifest.from_meta(envelope.meta)
        except ArtifactRejected as exc:
            self._refuse(None, exc)
            return
        if self.model is None:
            self.model = manifest.model
        elif manifest.model != self.model:
            reason = f"plan {manifest.key} is for model {manifest.model!r}; this device serves {self.model!r}"
            self._refuse(manifest, ArtifactRejected("plan_for_another_model", reason))
            return
        plan_id, version = self.plan_in_use()
        # An older version is installed only when the hub says the target moved back (tandem publish --rollback);
        # otherwise a stale announcement could undo an update.
        rollback = envelope.meta.get("allow_older") is True  # the model was checked above
        if (manifest.plan_id, manifest.version) == (plan_id, version) or (manifest.version <= version and not rollback):
            logger.debug("sync: plan %s announced; %s@%d is in use already", manifest.key, plan_id, version)
            return
        if manifest.key in self.releases.failed():
            logger.info("sync: plan %s announced again; it was refused before, not retried", manifest.key)
            return
        busy = self.downloader.busy_with
        if busy is not None and (busy.version >= manifest.version or self.downloader.installing is not None):
            return
        if rollback:
            logger.info("sync: the hub moved this device's target back to %s (rollback from v%d)", manifest.key,
                        version)  # fmt: skip
        self.plan_state, self.plan_error = "downloading", ""
        self.downloader.offer(manifest)

    def _refuse(self, manifest: PlanManifest | None, exc: ArtifactRejected) -> None:
        self.counters["plans_refused"] += 1
        logger.warning("sync: plan announcement refused, the current plan keeps serving: %s", exc)
        if manifest is not None:
            self.releases.mark_failed(manifest, str(exc))
        self.plan_state, self.plan_error = "rejected", str(exc)
        self._next_status = 0.0

    def _plan_outcome(self, manifest: PlanManifest, state: str, reason: str) -> None:
        if state == "installed" and self.plan_in_use() == (manifest.plan_id, manifest.version):
            state = "serving"  # what the fleet shows: installed and swapped in
        self.plan_state, self.plan_error = state, reason
        self._next_status = 0.0  # tell the hub now

    def _resume_staged(self) -> None:
        _, version = self.plan_in_use()
        failed = self.releases.failed()
        for manifest in self.releases.staged():
            if manifest.version > version and manifest.key not in failed and self.model in (None, manifest.model):
                logger.info("sync: resuming the interrupted download of plan %s", manifest.key)
                self.plan_state = "downloading"
                self.downloader.offer(manifest)
                return
