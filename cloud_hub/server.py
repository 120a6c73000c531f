"""The cloud hub: hears edges on every configured channel, batches, replies.

One receive thread per channel validates each message and routes activations
to the batcher of their (plan, version, split). Anything wrong with a message
becomes an ``error`` reply to its sender naming the problem; the hub keeps
serving everyone else. Replies never block: an edge that is gone or slow costs
a counted, dropped reply, not a stalled thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from tandem.cloud_hub.batcher import Batcher, Pending, Tail
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.metrics import HubMetrics
from tandem.status_http import StatusServer
from tandem.throttled_log import ThrottledLog, clip
from tandem.transport.channel import Channel
from tandem.transport.codec import CodecSpec
from tandem.transport.config import exposure_warning
from tandem.transport.envelope import Envelope, Kind, rejection_reply
from tandem.transport.errors import ChannelError, ProtocolError
from tandem.transport.factory import open_server
from tandem.transport.serve import receive_forever

__all__ = ["Hub"]

logger = logging.getLogger("tandem.hub")

_DRAIN_LINGER_S = 0.5


class Hub:
    """Serve the cloud parts in ``tails`` on the channels in ``config``."""

    def __init__(self, config: HubConfig, tails: Iterable[Tail], *, status: StatusServer | None = None) -> None:
        self.config = config
        self._status = status  # started already (by the CLI, before the plans loaded), or None
        self.metrics = HubMetrics(max_devices=config.metrics.max_devices)
        self._rejections = ThrottledLog(logger, level=logging.INFO)  # one line per code an interval, whatever the flood
        self._reply_codec = CodecSpec.parse(config.reply_codec)
        self._state = "starting"  # then "serving", "draining", "stopped"
        # Both dicts are replaced whole, never changed in place: the receive threads read them without a lock.
        self.tails: dict[tuple[str, int, str], Tail] = {}
        self._variants: dict[tuple[str, int, str], list[Tail]] = {}  # cloud parts with the codec inside, per split
        self._batchers: dict[tuple[str, int, str, str], Batcher] = {}
        self._swap(list(tails), removed=[])
        self.channels: list[Channel] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.metrics_port: int | None = None

    def _batcher_for(self, tail: Tail) -> Batcher:
        batching = self.config.batching
        return Batcher(
            tail,
            max_batch_size=batching.max_batch_size if batching.enabled else 1,
            max_delay_s=batching.max_queue_delay_ms / 1000 if batching.enabled else 0.0,
            finish=self._finish,
            max_queue=batching.max_queue,
            max_queue_per_device=batching.max_queue_per_device,
        )

    def _swap(self, added: list[Tail], removed: list[tuple[str, int, str]]) -> None:
        """Serve ``added`` and stop routing to ``removed`` (one assignment each: readers see old or new)."""
        new = {tail.batch_key: self._batcher_for(tail) for tail in added}
        if self._state == "serving":
            for batcher in new.values():
                batcher.start()
        self._batchers = {**{k: b for k, b in self._batchers.items() if k[:3] not in removed}, **new}
        variants: dict[tuple[str, int, str], list[Tail]] = {}
        for batcher in self._batchers.values():
            if batcher.tail.variant:
                variants.setdefault(batcher.tail.key, []).append(batcher.tail)
        self._variants = variants
        self.tails = {key[:3]: batcher.tail for key, batcher in self._batchers.items() if not key[3]}
        self.metrics.set_served((plan_id, split_id) for plan_id, _, split_id in self.tails)

    def update_plans(self, added: list[Tail], removed: list[tuple[str, int, str]]) -> None:
        """Start serving ``added`` tails and stop serving ``removed`` keys, without touching the channels.

        A removed tail's queued requests are still answered: its batcher stops
        once it is idle (on a thread of its own).
        """
        retired = [batcher for key, batcher in self._batchers.items() if key[:3] in removed]
        self._swap(added, removed)
        for batcher in retired:
            threading.Thread(target=_stop_when_idle, args=(batcher, 30.0), name="hub-retire", daemon=True).start()

    def drain(self, grace_s: float) -> bool:
        """Stop taking work (new activations get ``shutting_down``, /readyz says draining) and wait up to
        ``grace_s`` for every queued and running request to be answered; True if all were."""
        self._state = "draining"
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if all(batcher.idle for batcher in self._batchers.values()):
                # Linger a moment, still answering: a caller that just got its result and asks again at once
                # then learns "shutting_down" instead of waiting out its timeout.
                time.sleep(min(_DRAIN_LINGER_S, max(0.0, deadline - time.monotonic())))
                return True
            time.sleep(0.01)
        return False

    def start(self) -> None:
        """Open the channels and the metrics endpoint, start the threads."""
        limits = self.config.limits.to_limits()
        for channel_config in self.config.channels:
            warning = exposure_warning(channel_config, listens=True)
            if warning:
                logger.warning("%s", warning)
        for batcher in self._batchers.values():
            batcher.start()
        for channel_config in self.config.channels:
            channel = open_server(channel_config, limits=limits)
            self.channels.append(channel)
            thread = threading.Thread(target=self._receive, args=(channel,), name="hub-recv", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.config.metrics.port is not None or self._status is not None:
            port = self.config.metrics.port or 0
            self.metrics_port = self.metrics.serve(self.config.metrics.host, port, self._status)
            self.metrics.status.readiness = self.readiness
        self._state = "serving"

    def readiness(self) -> tuple[bool, str, dict[str, Any]]:
        """For /readyz: ready while serving; the reason otherwise; the plans and channels as details."""
        details: dict[str, Any] = {"state": self._state, "plans": self._serving(), "channels": self.addresses}
        if self._state == "serving":
            return True, "", details
        return False, {"starting": "opening channels", "draining": "draining: stopping, refusing new work",
                       "stopped": "stopped"}[self._state], details  # fmt: skip

    def stop(self) -> None:
        """Stop receiving, finish the batches in progress, close everything."""
        self._state = "draining"
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for batcher in self._batchers.values():
            batcher.stop()
        for channel in self.channels:
            channel.close()
        self._state = "stopped"
        self.metrics.close()

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def addresses(self) -> list[str]:
        """Where each channel listens (the bound ZeroMQ endpoint, the MQTT broker and topics, or the channel type)."""
        return [str(getattr(c, "address", type(c).__name__)) for c in self.channels]

    def _receive(self, channel: Channel) -> None:
        receive_forever(
            channel,
            self._stop,
            on_message=lambda envelope: self._handle(channel, envelope),
            on_rejected=lambda exc: self._reject_malformed(channel, exc),
            on_failure=lambda envelope, _: self._error(
                channel, envelope, "internal", "the hub failed on this message; see its log"
            ),
            logger=logger,
        )

    def _handle(self, channel: Channel, envelope: Envelope) -> None:
        self.metrics.seen(envelope.device_id or str(envelope.sender))
        if envelope.kind is Kind.ACTIVATION:
            self._route(channel, envelope)
        elif envelope.kind is Kind.HEARTBEAT:
            reply = envelope.reply(Kind.HEARTBEAT, meta={"hub_time": time.time(), "probe_bytes": envelope.wire_bytes})
            if pad := reply_padding(envelope):  # a downlink probe: the answer carries the bytes
                reply.add_arrays({"probe": _PADDING[:pad]})
            self._send(channel, envelope.sender, reply)
        elif envelope.kind is Kind.HELLO:
            self._send(channel, envelope.sender, envelope.reply(Kind.ACK, meta={"serving": self._serving()}))
        elif envelope.kind is Kind.TELEMETRY:
            self._record_telemetry(envelope)
        else:
            self._error(
                channel, envelope, "unsupported_kind", f"the hub does not accept {envelope.kind.value!r}", "kind"
            )

    def _route(self, channel: Channel, envelope: Envelope) -> None:
        if self._state != "serving":
            self._error(channel, envelope, "shutting_down", "the hub is shutting down; answer locally or retry "
                        "another hub")  # fmt: skip
            return
        tail = self._find_tail(channel, envelope)
        if tail is None:
            return
        tail = next((v for v in self._variants.get(tail.key, ()) if v.takes(envelope)), tail)
        started = time.perf_counter()
        try:
            feeds = envelope.arrays(max_bytes=self.config.limits.max_message_bytes, as_sent=frozenset(tail.as_sent))
        except ProtocolError as exc:
            self._error(channel, envelope, exc.code, str(exc), exc.field)
            return
        problem, field = _check_feeds(tail, feeds)
        if problem:
            self._error(channel, envelope, "bad_input", problem, field)
            return
        pending = Pending(envelope, feeds, received=started, decode_s=time.perf_counter() - started, channel=channel)
        batcher = self._batchers[tail.batch_key]
        if batcher.max_batch_size == 1 and _nothing_waiting(channel) and batcher.run_inline(pending):
            return
        refusal = batcher.submit(pending)
        if refusal is not None:
            self._error(channel, envelope, refusal.code, refusal.message, refusal.field)

    def _find_tail(self, channel: Channel, envelope: Envelope) -> Tail | None:
        key = (envelope.plan_id, envelope.plan_version, envelope.split_id)
        if key in self.tails:
            return self.tails[key]
        held = self._serving()
        plan = clip(envelope.plan_id)
        if envelope.plan_id not in held:
            known = ", ".join(sorted(held)) or "none"
            self._error(channel, envelope, "unknown_plan", f"plan {plan} is not loaded; loaded: {known}", "plan")
        elif str(envelope.plan_version) not in held[envelope.plan_id]:
            versions = ", ".join(sorted(held[envelope.plan_id]))
            message = f"plan {plan} version {envelope.plan_version} is not loaded; loaded: {versions}"
            self._error(channel, envelope, "unknown_plan_version", message, "plan_version")
        else:
            splits = ", ".join(held[envelope.plan_id][str(envelope.plan_version)])
            message = f"plan {plan} has no split {clip(envelope.split_id)}; its splits: {splits}"
            self._error(channel, envelope, "unknown_split", message, "split")
        return None

    def _finish(self, pending: Pending) -> None:
        channel, request = pending.channel, pending.envelope
        if pending.error:
            self._error(channel, request, "execution_failed", pending.error)
            return
        if pending.expired:
            self._error(channel, request, "deadline_exceeded", "the request's deadline passed while it waited; "
                        "it was not run", "deadline")  # fmt: skip
            return
        if request.deadline is not None and time.time() > request.deadline:
            self._error(
                channel, request, "deadline_exceeded", "the request's deadline passed while it ran", "deadline"
            )
            return
        started = time.perf_counter()
        reply = request.reply(Kind.RESULT)
        reply.add_arrays(pending.outputs, self._reply_codec)
        encode_s = time.perf_counter() - started
        reply.meta["timing"] = {
            "queue_ms": 1000 * pending.queue_s,
            "decode_ms": 1000 * pending.decode_s,
            "compute_ms": 1000 * pending.compute_s,
            "encode_ms": 1000 * encode_s,
            "batch_size": pending.batch_size,
        }
        reply.timestamps["hub_sent"] = time.time()
        self._observe(pending, encode_s)
        self._send(channel, request.sender, reply)

    def _observe(self, pending: Pending, encode_s: float) -> None:
        request = pending.envelope
        stages = {
            "queue": pending.queue_s,
            "decode": pending.decode_s,
            "compute": pending.compute_s,
            "encode": encode_s,
            "total": time.perf_counter() - pending.received,
        }
        self.metrics.answered(request.device_id, request.plan_id, request.split_id, stages, pending.batch_size)

    def _reject_malformed(self, channel: Channel, exc: ProtocolError) -> None:
        device = exc.device_id or exc.sender or "unknown"
        why = clip(exc, 300, quoted=False)
        self._rejections.log(exc.code, f"rejected a message from {clip(device)} ({exc.code}): {why}")
        self.metrics.errors.labels(self.metrics.device_label(device, identified=False), exc.code).inc()
        if exc.sender is None:
            return
        self._send(channel, exc.sender, rejection_reply(exc))

    def _error(self, channel: Channel, request: Envelope, code: str, message: str, field: str = "") -> None:
        self._rejections.log(code, f"error {code} for {clip(request.device_id)} request {clip(request.request_id)}: "
                                   f"{clip(message, 300, quoted=False)}")  # fmt: skip
        device = self.metrics.device_label(request.device_id or str(request.sender))
        self.metrics.errors.labels(device, code).inc()
        plan, split = self.metrics.request_labels(request.plan_id, request.split_id)
        self.metrics.requests.labels(device, plan, split, code).inc()
        self._send(channel, request.sender, request.error_reply(code, message, field_name=field))

    def _send(self, channel: Channel, to: str | None, envelope: Envelope) -> None:
        try:
            channel.send(envelope, to=to)
        except (ChannelError, ValueError) as exc:  # ValueError: an address the channel refuses (a bad topic name)
            self.metrics.dropped_replies.labels(
                self.metrics.device_label(envelope.device_id or str(to), identified=False)
            ).inc()
            logger.debug("reply to %s dropped: %s", clip(to), exc)

    def _serving(self) -> dict[str, dict[str, list[str]]]:
        held: dict[str, dict[str, list[str]]] = {}
        for plan_id, version, split_id in self.tails:
            held.setdefault(plan_id, {}).setdefault(str(version), []).append(split_id)
        return held

    def _record_telemetry(self, envelope: Envelope) -> None:
        device = self.metrics.device_label(envelope.device_id)
        for name, value in envelope.meta.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                label = self.metrics.telemetry_name(name)
                if label is not None:
                    self.metrics.telemetry.labels(device, label).set(value)


def _nothing_waiting(channel: Channel) -> bool:
    """Whether ``channel`` can tell that no message waits to be received (only ZeroMQ's server can)."""
    waiting = getattr(channel, "waiting", None)
    return waiting is not None and not waiting()


def _stop_when_idle(batcher: Batcher, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not batcher.idle and time.monotonic() < deadline:
        time.sleep(0.05)
    batcher.stop()


def _check_feeds(tail: Tail, feeds: dict[str, Any]) -> tuple[str, str]:
    """Why ``feeds`` cannot run on ``tail`` (message, field), or ("", "")."""
    expected = {info.name: info for info in tail.executor.inputs}
    missing = sorted(set(expected) - set(feeds))
    if missing:
        return f"missing input tensor(s) {missing}; split {tail.split_id!r} takes {sorted(expected)}", "tensors"
    extra = sorted(set(feeds) - set(expected))
    if extra:
        return f"unexpected tensor(s) {extra}; split {tail.split_id!r} takes {sorted(expected)}", "tensors"
    rows = {array.shape[0] if array.ndim else None for array in feeds.values()}
    for name, array in feeds.items():
        why = expected[name].accepts(array)
        if why:
            return f"tensor {name!r} has {why}", f"tensors[{name!r}]"
    if len(rows) != 1:
        return "input tensors disagree on the batch size", "tensors"
    return "", ""


MAX_REPLY_PADDING = 256 << 10
"""The most a heartbeat may ask its answer to carry (``meta.reply_bytes``); a larger ask gets this much."""
_PADDING = np.zeros(MAX_REPLY_PADDING, np.uint8)


def reply_padding(heartbeat: Envelope) -> int:
    """The bytes a heartbeat's answer carries: its ``meta.reply_bytes`` when a positive integer, at most
    :data:`MAX_REPLY_PADDING`; 0 for anything else (a probe is a courtesy, not worth an error)."""
    asked = heartbeat.meta.get("reply_bytes")
    if not isinstance(asked, int) or isinstance(asked, bool) or asked <= 0:
        return 0
    return min(asked, MAX_REPLY_PADDING)
