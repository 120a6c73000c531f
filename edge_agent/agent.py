"""The edge agent: run the head, ship the cut, take the hub's answer or answer locally.

``EdgeAgent.infer(inputs)`` always returns exactly one result:

- ``source="hub"``: the edge part ran here, the hub ran the rest in time;
- ``source="edge"``: the chosen split is edge-only (the link makes that fastest);
- ``source="fallback"``, ``degraded=True``: the hub was down, late, or refused,
  so the full model ran here. A hub answer arriving after that is dropped.

A maintenance thread sends heartbeats (RTT), bandwidth probes when no
activation has gone up lately, telemetry, and, while the hub is down, retries
with exponential backoff; the first answer marks the hub up again.

Given ``reopen``, it also bounds how long a returned link goes unnoticed: when
something sent has waited for an answer longer than the silence allowance
(:data:`_SILENCE_S` plus the time its bytes need at the estimated rate), it
opens a fresh connection, giving each attempt :data:`_REOPEN_WAIT_S` to
connect, until one does or the hub speaks. A connection that crossed an
outage waits for TCP's own retransmission, whose backoff doubles (1.6 s after
a 1.5 s cut, seconds after longer ones); a fresh handshake goes through as soon
as the link is back (docs/link-estimation.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.link_estimator import LinkEstimate, LinkEstimator
from tandem.edge_agent.plan_gate import PlanGate
from tandem.edge_agent.plan_view import AgentPlan, SplitOption, WireBytes
from tandem.edge_agent.selector import SplitSelector
from tandem.edge_agent.telemetry import system_telemetry
from tandem.executors import Executor, open_executor
from tandem.transport.channel import Channel
from tandem.transport.codec import CodecSpec
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelError
from tandem.transport.serve import receive_forever

__all__ = ["EdgeAgent", "InferenceResult"]

logger = logging.getLogger("tandem.edge")

_RETRY_UNSENT_S = 0.1  # the next beat after one that could not leave at all
_MAX_PROBE_BYTES = 512 << 10  # 50 ms at 80 Mbit/s; past that the gap stands well above noise anyway
_TRAIN_EVERY = 2  # while activations go up, a probe train every this many probe intervals
_DOWN_TRAIN = "down-"  # id prefix of a probe pair that measures the downlink
_MAX_REPLY_PROBE_BYTES = 64 << 10  # a downlink probe answer: 100 ms at 5 Mbit/s (a hub pads at most 256 kB)
_SILENCE_S = 0.5  # an answer this much later than its bytes need: try a fresh connection
_REOPEN_WAIT_S = 0.25  # how long each fresh connection may take to connect before the next attempt


@dataclass
class InferenceResult:
    """One answer: outputs, where they came from, and how long each part took."""

    outputs: dict[str, np.ndarray]
    request_id: str
    split_id: str
    source: str
    degraded: bool
    latency_ms: float
    timing: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    planned_split: str = ""
    """For a fallback: the split chosen for the link, which could not be served (``split_id`` is what ran)."""


def _owned(array: np.ndarray) -> np.ndarray:
    """``array`` as the caller may keep and modify it.

    A writeable view already is: it views the reply's own received frame (ZeroMQ
    hands each frame over as private memory), or a decoded array. A read-only
    one views a shared buffer (an MQTT payload) and is copied.
    """
    return array if array.flags.writeable else array.copy()


class _Waiter:
    """One request waiting for its reply: a lock held until the receiver releases it (cheaper than an Event)."""

    def __init__(self) -> None:
        self._arrived = threading.Lock()
        self._arrived.acquire()
        self.reply: Envelope | None = None

    def deliver(self, reply: Envelope) -> None:
        self.reply = reply
        self._arrived.release()

    def wait(self, timeout: float | None) -> bool:
        return self._arrived.acquire(timeout=-1 if timeout is None else timeout)


class EdgeAgent:
    """Serves ``infer`` with the plan's splits over ``channel`` (see module docstring).

    ``on_result(result, feeds)``, if set, is called after every answer (the sync
    outbox's recorder); its failures are logged and never reach the caller.
    ``swap_plan`` changes the plan between requests. ``reopen(connect_s)``, if
    set, opens a fresh channel to the hub that is connected within
    ``connect_s`` seconds or raises ``ChannelError``; the agent calls it when
    the hub has gone silent (see the module docstring).
    """

    def __init__(
        self,
        config: EdgeConfig,
        plan: AgentPlan,
        channel: Channel,
        *,
        on_result: Callable[[InferenceResult, dict[str, np.ndarray]], None] | None = None,
        reopen: Callable[[float], Channel] | None = None,
    ) -> None:
        self.config = config
        self.on_result = on_result
        self._reopen = reopen
        self._gate = PlanGate()
        self.plan = plan
        self.channel = channel
        self.codec = CodecSpec.parse(config.codec)
        self.estimator = LinkEstimator()
        self.wire = WireBytes(config.codec)
        self.selector = SplitSelector(plan, config.objective, config.hysteresis, wire=self.wire)
        self._started = time.monotonic()
        self.full = self._open(plan.full_model)
        self._heads: dict[str, Executor] = {}
        self._waiters: dict[str, _Waiter] = {}
        self._waiters_lock = threading.Lock()
        self._hub_up = True
        self._failures = 0
        self._last_upload = 0.0
        self._beat_answered = threading.Event()  # the hub answered the latest plain heartbeat
        self._recovered = threading.Event()  # the hub answered after an outage: beat and probe at once
        self.recovered_at: float | None = None  # when the hub's first message after the latest outage came
        self._silent_since: float | None = None  # a request timed out and the hub has said nothing since
        self._awaiting: tuple[float, int] | None = None  # (since, bytes): sent since the hub last spoke, unanswered
        self._probes: dict[str, tuple[str, int, int]] = {}  # probes in flight: id -> (train, 0 or 1, bytes)
        self._train_first: dict[str, float] = {}  # train id -> when its first probe was answered
        self._train_open_until = 0.0  # a train may still hold the uplink until then (perf_counter)
        self._behind_train: dict[str, None] = {}  # requests sent while a train held the uplink: no link samples
        self._overdue: dict[str, tuple[float, int]] = {}  # timed-out requests: id -> (sent, bytes up)
        self._recent: deque[tuple[float, float]] = deque(maxlen=256)  # (time, latency_ms)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counters = {
            "hub": 0, "edge": 0, "fallback": 0, "late_replies": 0, "hub_errors": 0, "emulation_overrun": 0
        }  # fmt: skip
        logger.info(
            "plan %s v%d: %d splits, fallback %s", plan.plan_id, plan.version, len(plan.splits), self.full.describe()
        )

    def start(self) -> None:
        """Start the receiver and maintenance threads."""
        self._started = time.monotonic()
        for target, name in ((self._receive, "edge-recv"), (self._maintain, "edge-maintain")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the threads and close the channel."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.channel.close()

    def __enter__(self) -> EdgeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def hub_up(self) -> bool:
        """Whether the agent currently believes the hub answers."""
        return self._hub_up

    def infer(self, inputs: np.ndarray | dict[str, np.ndarray]) -> InferenceResult:
        """Answer one request; see the module docstring for where the answer comes from."""
        started = time.perf_counter()
        with self._gate.serving():
            feeds = self._feeds(inputs)
            result = self._infer(feeds, started)
        if self.on_result is not None:
            try:
                self.on_result(result, feeds)
            except Exception:  # recording must never cost an answer
                logger.exception("on_result hook failed for %s; serving goes on", result.request_id)
        return result

    def swap_plan(self, plan: AgentPlan) -> None:
        """Serve ``plan`` from the next request on.

        Its models are loaded first, outside the gate: a plan that does not load
        raises here and changes nothing. The swap itself waits for the requests
        in progress and holds new ones back for the moment it takes.
        """
        full = self._open(plan.full_model)
        heads = {
            split.split_id: self._open(split.edge_path)
            for split in plan.splits
            if split.edge_path is not None and not split.edge_only
        }
        selector = SplitSelector(plan, self.config.objective, self.config.hysteresis, wire=self.wire)
        with self._gate.swapping():
            self.plan, self.selector, self.full, self._heads = plan, selector, full, heads
        logger.info("now serving plan %s v%d: %d splits", plan.plan_id, plan.version, len(plan.splits))

    def _infer(self, feeds: dict[str, np.ndarray], started: float) -> InferenceResult:
        split = self.selector.choose(self._link(), self._request_rate())
        if split.edge_only and self._silent_since is not None:
            # Chosen because a request went unanswered; until the hub says anything, it may be the hub that died.
            return self._local(feeds, split, started, source="fallback", reason="no hub message since a timeout")
        if split.edge_only:
            return self._local(feeds, split, started, source="edge", reason="")
        if not self._hub_up:
            return self._local(feeds, split, started, source="fallback", reason="hub unreachable")
        timing: dict[str, float] = {}
        head = self._run_timed(self._head(split), feeds, timing, "edge_ms", split.edge_ms) if split.edge_path else {}
        available = {**feeds, **head}  # model inputs used past the cut (masks, skips) cross it too
        request = self._activation(split, {name: available[name] for name in split.crossing}, timing)
        reply, reason = self._exchange(request)
        if reply is None or reply.kind is not Kind.RESULT:
            return self._local(feeds, split, started, source="fallback", reason=reason, timing=timing)
        return self._from_hub(request, reply, split, started, timing, {k: head[k] for k in split.edge_outputs})

    def _link(self) -> LinkEstimate:
        """The measured link, with the configured assumptions standing in until measurements arrive.

        The first choice waits up to ``link_wait_s`` after start for a measured
        rate; an estimate built on the assumptions says so (``assumed``).
        """
        measured = self.estimator.snapshot()
        if self.selector.current is None and self._hub_up:
            give_up = self._started + self.config.link_wait_s
            while measured.bandwidth_mbps is None and time.monotonic() < give_up and not self._stop.is_set():
                time.sleep(0.02)
                measured = self.estimator.snapshot()
        if measured.rtt_ms is not None and measured.bandwidth_mbps is not None:
            return measured
        return LinkEstimate(
            measured.rtt_ms if measured.rtt_ms is not None else self.config.initial_rtt_ms,
            measured.bandwidth_mbps if measured.bandwidth_mbps is not None else self.config.initial_bandwidth_mbps,
            measured.downlink_mbps,
            assumed=True,
        )

    def _activation(self, split: SplitOption, tensors: dict[str, np.ndarray], timing: dict[str, float]) -> Envelope:
        t0 = time.perf_counter()
        request = Envelope.with_arrays(
            Kind.ACTIVATION,
            tensors,
            self.codec,
            split.scales,
            split.prequantised,
            device_id=self.config.device_id,
            plan_id=self.plan.plan_id,
            plan_version=self.plan.version,
            split_id=split.split_id,
            deadline=time.time() + self.config.deadline_ms / 1000,
        )
        timing["encode_ms"] = 1000 * (time.perf_counter() - t0)
        return request

    def _exchange(self, request: Envelope) -> tuple[Envelope | None, str]:
        """Send and wait until the deadline; (reply, "") or (None / error reply, reason)."""
        waiter = _Waiter()
        with self._waiters_lock:
            self._waiters[request.request_id] = waiter
        request.timestamps["edge_sent"] = time.time()
        sent = time.perf_counter()
        if sent < self._train_open_until:  # it queues behind the probes: its time says nothing of the link
            with self._waiters_lock:
                self._behind_train[request.request_id] = None
                while len(self._behind_train) > 256:
                    self._behind_train.pop(next(iter(self._behind_train)))
        try:
            self.channel.send(request)
        except ChannelError as exc:
            self._forget(request.request_id)
            self._mark_down(f"send failed: {exc}")
            return None, f"hub unreachable: {exc}"
        self._last_upload = time.monotonic()
        self._await_answer(request.wire_bytes)
        if request.split_id:
            self.wire.observe(request.split_id, request.wire_bytes)
        arrived = waiter.wait(max(0.0, request.deadline - time.time()) if request.deadline else None)
        self._forget(request.request_id)
        if not arrived or waiter.reply is None:
            self._count_failure()
            self._silent_since = self._silent_since or time.monotonic()
            self.estimator.observe_timeout(request.wire_bytes, 1000 * (time.perf_counter() - sent))
            self._remember_overdue(request.request_id, sent, request.wire_bytes)
            return None, f"no hub answer within {self.config.deadline_ms:.0f} ms"
        reply = waiter.reply
        reply.timestamps["edge_round_trip_ms"] = 1000 * (time.perf_counter() - sent)
        self._failures = 0
        if reply.kind is Kind.ERROR:
            self.counters["hub_errors"] += 1
            logger.warning(
                "hub refused %s: %s (%s)", request.request_id, reply.meta.get("message"), reply.meta.get("code")
            )
            return reply, f"hub error {reply.meta.get('code')}: {reply.meta.get('message')}"
        return reply, ""

    def _from_hub(
        self,
        request: Envelope,
        reply: Envelope,
        split: SplitOption,
        started: float,
        timing: dict[str, float],
        edge_outputs: dict[str, np.ndarray],
    ) -> InferenceResult:
        t0 = time.perf_counter()
        outputs = {**edge_outputs, **{name: _owned(value) for name, value in reply.arrays().items()}}
        timing["decode_ms"] = 1000 * (time.perf_counter() - t0)
        hub = reply.meta.get("timing", {})
        hub_ms = _hub_ms(reply)
        self.wire.observe_hub(split.split_id, float(hub.get("queue_ms", 0.0)) + float(hub.get("compute_ms", 0.0)))
        round_trip = reply.timestamps["edge_round_trip_ms"]
        with self._waiters_lock:
            behind_train = request.request_id in self._behind_train
            self._behind_train.pop(request.request_id, None)
        if not behind_train:
            self.estimator.observe_transfer(request.wire_bytes, round_trip, hub_ms, reply_bytes=reply.wire_bytes)
        timing.update({f"hub_{k}": float(v) for k, v in hub.items()}, round_trip_ms=round_trip)
        self.counters["hub"] += 1
        result = self._result(outputs, request.request_id, split, "hub", False, started, timing)
        self.selector.observe(split.split_id, result.latency_ms)
        return result

    def _local(
        self,
        feeds: dict[str, np.ndarray],
        split: SplitOption,
        started: float,
        *,
        source: str,
        reason: str,
        timing: dict[str, float] | None = None,
    ) -> InferenceResult:
        timing = dict(timing or {})
        outputs = self._run_timed(self.full, feeds, timing, "local_ms", self.plan.full_edge_ms)
        self.counters[source] += 1
        request_id = f"local-{time.monotonic_ns()}"
        if source != "fallback":
            return self._result(outputs, request_id, split, source, False, started, timing, reason)
        # The whole model ran here: the answer names that, and the split it stood in for.
        ran = self._edge_only()
        result = self._result(outputs, request_id, ran, source, True, started, timing, reason)
        result.planned_split = split.split_id
        self.selector.observe(split.split_id, result.latency_ms)
        return result

    def _edge_only(self) -> SplitOption:
        """The plan's edge-only split, or one standing for the full model run here."""
        for option in self.plan.splits:
            if option.edge_only:
                return option
        return SplitOption("edge-only", None, (), self.plan.full_edge_ms, 0.0, 0, edge_only=True)

    def _result(
        self,
        outputs: dict[str, np.ndarray],
        request_id: str,
        split: SplitOption,
        source: str,
        degraded: bool,
        started: float,
        timing: dict[str, float],
        reason: str = "",
    ) -> InferenceResult:
        latency = 1000 * (time.perf_counter() - started)
        self._recent.append((time.monotonic(), latency))
        return InferenceResult(outputs, request_id, split.split_id, source, degraded, latency, timing, reason)

    def _run_timed(
        self, executor: Executor, feeds: dict[str, np.ndarray], timing: dict[str, float], key: str, profiled_ms: float
    ) -> dict[str, np.ndarray]:
        """Run ``executor``; when emulating a slower edge, take the emulated time the plan profiled for it.

        The emulated run ends ``plan.emulated_edge_s(profiled_ms)`` after it
        started, however long this host's run took: stretching the elapsed time
        instead would multiply this host's CPU contention too. A real run longer
        than that is not stretched; it is counted (``emulation_overrun``).
        """
        t0 = time.perf_counter()
        outputs = executor.run(feeds)
        slowdown = self.config.emulation.edge_slowdown
        if slowdown > 1:
            remaining = self.plan.emulated_edge_s(profiled_ms, slowdown) - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)
            else:
                self.counters["emulation_overrun"] += 1
                timing["emulation_overrun_ms"] = -1000 * remaining
        timing[key] = 1000 * (time.perf_counter() - t0)
        return outputs

    def _head(self, split: SplitOption) -> Executor:
        if split.split_id not in self._heads:
            if split.edge_path is None:
                raise ValueError(f"split {split.split_id} has no edge part")
            self._heads[split.split_id] = self._open(split.edge_path)
            logger.info("loaded edge part of split %s: %s", split.split_id, self._heads[split.split_id].describe())
        return self._heads[split.split_id]

    def _open(self, path: Path) -> Executor:
        return open_executor(self.config.executor, path, threads=self.config.executor_threads)

    def _feeds(self, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from ``inputs``, checked against the full model, which must be able to answer them."""
        names = list(self.plan.input_names)
        if isinstance(inputs, dict):
            missing = set(names) - set(inputs)
            if missing:
                raise ValueError(f"missing model input(s) {sorted(missing)}; the model takes {names}")
            unknown = set(inputs) - set(names)
            if unknown:
                raise ValueError(f"unknown model input(s) {sorted(unknown)}; the model takes {names}")
            feeds = {name: inputs[name] for name in names}
        elif len(names) != 1:
            raise ValueError(f"the model takes {names}: pass a dict of arrays")
        else:
            feeds = {names[0]: inputs}
        for info in self.full.inputs:
            array = feeds.get(info.name)
            why = info.accepts(array) if isinstance(array, np.ndarray) else f"type {type(array).__name__}, not an array"
            if why:
                raise ValueError(f"model input {info.name!r} has {why}")
        return feeds

    def _request_rate(self) -> float | None:
        if len(self._recent) < 2:
            return None
        span = self._recent[-1][0] - self._recent[0][0]
        return (len(self._recent) - 1) / span if span > 0 else None

    def _forget(self, request_id: str) -> None:
        with self._waiters_lock:
            self._waiters.pop(request_id, None)

    def _count_failure(self) -> None:
        self._failures += 1
        if self._failures >= self.config.retry.failures_to_mark_down:
            self._mark_down(f"{self._failures} requests without an answer")

    def _mark_down(self, why: str) -> None:
        if self._hub_up:
            logger.warning("hub marked down (%s); answering locally, retrying in the background", why)
        self._hub_up = False
        self.estimator.forget_timeouts()  # an outage, not a slow link: answers are degraded, not re-planned

    def _mark_up(self) -> None:
        if not self._hub_up:
            logger.info("hub reachable again; back to split inference")
            self.recovered_at = time.monotonic()
            self._recovered.set()
        self._hub_up = True
        self._failures = 0

    def _remember_overdue(self, request_id: str, sent: float, nbytes: int) -> None:
        """Keep a timed-out request's send time: its late reply still measures the link."""
        with self._waiters_lock:
            self._overdue[request_id] = (sent, nbytes)
            while len(self._overdue) > 64:
                self._overdue.pop(next(iter(self._overdue)))

    def _on_late(self, envelope: Envelope) -> None:
        """A reply after its request was answered locally: dropped, but its round trip is a sample."""
        self.counters["late_replies"] += 1
        with self._waiters_lock:
            overdue = self._overdue.pop(envelope.request_id, None)
        if overdue is not None and envelope.kind is Kind.RESULT:
            round_trip = 1000 * (time.perf_counter() - overdue[0])
            self.estimator.observe_transfer(overdue[1], round_trip, _hub_ms(envelope), reply_bytes=envelope.wire_bytes)

    def _receive(self) -> None:
        while not self._stop.is_set():
            channel = self.channel
            receive_forever(
                channel,
                self._stop,
                on_message=self._dispatch,
                on_rejected=lambda exc: logger.warning("dropped a message from the hub: %s", exc),
                logger=logger,
            )
            if channel is self.channel:  # closed, not replaced by a fresh connection: nothing more to hear
                return

    def _dispatch(self, envelope: Envelope) -> None:
        self._mark_up()  # any message from the hub means it is reachable
        self._silent_since = self._awaiting = None
        if envelope.kind is Kind.HEARTBEAT:
            self._on_heartbeat(envelope)
            return
        with self._waiters_lock:
            waiter = self._waiters.pop(envelope.request_id, None)
        if waiter is None:
            self._on_late(envelope)  # already answered locally
            return
        waiter.deliver(envelope)

    def _on_heartbeat(self, envelope: Envelope) -> None:
        sent = envelope.timestamps.get("edge_sent")
        if sent is not None:
            round_trip_ms = 1000 * (time.time() - sent)
            with self._waiters_lock:
                probe = self._probes.pop(envelope.request_id, None)
            if probe is not None:
                self._on_probe(*probe, reply_bytes=envelope.wire_bytes)
            else:
                self.estimator.observe_rtt(round_trip_ms)
                self._beat_answered.set()

    def _on_probe(self, train: str, seq: int, nbytes: int, *, reply_bytes: int = 0) -> None:
        """A probe's answer: the first of a train marks the time, the second measures the rate (of the uplink,
        or of the downlink for a pair whose answers carry the bytes)."""
        now = time.perf_counter()
        down = train.startswith(_DOWN_TRAIN)
        if seq == 0:
            self._train_first[train] = now
            while len(self._train_first) > 8:
                self._train_first.pop(next(iter(self._train_first)))
        elif not down:
            self._train_open_until = 0.0
        if seq == 1 and (first := self._train_first.pop(train, None)) is not None:
            if down:
                self.estimator.observe_down_train(reply_bytes, 1000 * (now - first))
            else:
                self.estimator.observe_train(nbytes, 1000 * (now - first))

    def _maintain(self) -> None:
        next_beat = next_telemetry = time.monotonic()
        backoff = self.config.retry.initial_s
        next_probe: float | None = None
        while not self._stop.wait(0.02):
            now = time.monotonic()
            if self._silent_too_long(now) and self._reconnect():
                backoff, next_beat, now = self.config.retry.initial_s, time.monotonic(), time.monotonic()
            if self._recovered.is_set():  # the hub is back: measure the link now, not a backoff later
                self._recovered.clear()
                backoff, next_beat = self.config.retry.initial_s, now
            if now >= next_telemetry and self._hub_up:
                self._send_quietly(self._telemetry())
                next_telemetry = now + self.config.telemetry_interval_s
            if next_probe is not None and (self._beat_answered.is_set() or now >= next_probe):
                next_probe = None
                idle = now - self._last_upload > self.config.probe_interval_s
                if self._hub_up and (idle or self.estimator.wants_probe(_TRAIN_EVERY * self.config.probe_interval_s)):
                    self._send_train()
            if now < next_beat:
                continue
            self._beat_answered.clear()
            left = self._send_quietly(self._heartbeat())
            if self._hub_up:
                backoff = self.config.retry.initial_s
                if self.config.probe_bytes:
                    # Once the plain beat is answered (or half a period on), not right behind it: through
                    # an MQTT broker with Nagle on (Mosquitto's default), the second of two answers back to
                    # back waits for the edge's ACK of the first. The MQTT channel ACKs at once on Linux,
                    # not elsewhere; a delayed ACK (~40 ms) would pass for a slow uplink.
                    next_probe = now + self.config.probe_interval_s / 2
                next_beat = now + self.config.probe_interval_s
            elif not left:
                next_beat = now + _RETRY_UNSENT_S  # nothing left (no connection): trying again costs nothing
            else:
                next_beat = now + backoff
                backoff = min(backoff * 2, self.config.retry.max_s)

    def _await_answer(self, nbytes: int) -> None:
        """Something the hub answers has left: the silence allowance runs from the first such since it spoke."""
        since, pending = self._awaiting or (time.monotonic(), 0)
        self._awaiting = (since, pending + nbytes)

    def _silent_too_long(self, now: float) -> bool:
        """Whether what was sent has waited longer than its bytes need at the estimated rate, plus _SILENCE_S."""
        awaiting = self._awaiting
        if self._reopen is None or awaiting is None or now - awaiting[0] <= _SILENCE_S:
            return False
        rate = self.estimator.measured_mbps() or self.config.initial_bandwidth_mbps
        return now - awaiting[0] > _SILENCE_S + awaiting[1] * 8 / (rate * 1e6)

    def _reconnect(self) -> bool:
        """One attempt at a fresh connection to the hub; True when it is up and in use (the old one closed)."""
        if self._reopen is None:
            return False
        try:
            fresh = self._reopen(_REOPEN_WAIT_S)
        except ChannelError:
            return False
        except Exception:  # the maintenance thread must outlive a broken factory
            logger.exception("opening a fresh connection to the hub failed")
            return False
        if self._stop.is_set():
            fresh.close()
            return False
        old, self.channel = self.channel, fresh
        self._awaiting = None  # the heartbeat sent next on the fresh connection starts the allowance again
        old.close()
        logger.info("the hub was silent: a fresh connection is up and in use, the old one closed")
        return True

    def _heartbeat(self) -> Envelope:
        return Envelope(kind=Kind.HEARTBEAT, device_id=self.config.device_id, timestamps={"edge_sent": time.time()})

    def _send_train(self) -> None:
        """Two probes back to back: the gap between their answers is the second's time on the uplink.

        Each carries ``probe_bytes``, or 50 ms at the slowest recent rate
        evidence if more (``LinkEstimator.probe_rate``), so that the first
        empties a token bucket's burst and the gap stands above the host's
        scheduling noise without flooding a link that just dropped
        (docs/link-estimation.md).
        """
        rate = self.estimator.probe_rate() or 0.0
        nbytes = min(max(self.config.probe_bytes, int(rate * 1e6 / 8 * 0.05)), _MAX_PROBE_BYTES)
        train = f"train-{time.monotonic_ns()}"
        # Until the second answer (or, if it never comes, four times the train's expected time and a second).
        expected_s = 2 * nbytes * 8 / (rate * 1e6) if rate else 1.0
        self._train_open_until = time.perf_counter() + 4 * expected_s + 1.0
        probe = np.zeros(nbytes, np.uint8)
        if not self._send_pair(train, lambda beat: beat.add_arrays({"probe": probe}), probe_bytes=nbytes):
            return
        if self.estimator.wants_down_probe():
            self._send_down_pair(nbytes)

    def _send_down_pair(self, nbytes: int) -> None:
        """Two small probes whose answers each carry ``nbytes`` (``meta.reply_bytes``): the gap between the answers
        is the second's time on the downlink. Answers to requests are the other downlink samples, but only those
        of 16 kB and more say anything, so a plan with small results would leave the downlink unmeasured and
        priced at the uplink's rate."""
        self._send_pair(f"{_DOWN_TRAIN}{time.monotonic_ns()}", lambda beat: None,
                        reply_bytes=min(nbytes, _MAX_REPLY_PROBE_BYTES))  # fmt: skip

    def _send_pair(self, train: str, fill: Callable[[Envelope], None], **meta: int) -> bool:
        """Two heartbeats back to back, each ``fill``-ed and carrying ``meta``, remembered as probes of ``train``;
        False if one could not be sent."""
        for seq in (0, 1):
            beat = self._heartbeat()
            fill(beat)
            beat.meta.update(meta)
            with self._waiters_lock:
                self._probes[beat.request_id] = (train, seq, beat.wire_bytes)
                while len(self._probes) > 16:
                    self._probes.pop(next(iter(self._probes)))
            if not self._send_quietly(beat):
                return False
        return True

    def _telemetry(self) -> Envelope:
        latencies = sorted(latency for _, latency in self._recent)
        meta: dict[str, Any] = dict(system_telemetry())
        if latencies:
            meta["latency_p50_ms"] = latencies[len(latencies) // 2]
            meta["latency_p99_ms"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        link = self.estimator.snapshot()
        meta.update({k: v for k, v in (("rtt_ms", link.rtt_ms), ("bandwidth_mbps", link.bandwidth_mbps)) if v})
        meta["split"] = self.selector.current.split_id if self.selector.current else ""
        meta.update({f"count_{k}": v for k, v in self.counters.items()})
        return Envelope(kind=Kind.TELEMETRY, device_id=self.config.device_id, meta=meta)

    def _send_quietly(self, envelope: Envelope) -> bool:
        """Send ``envelope``; False (and the hub marked down) when it could not leave."""
        try:
            self.channel.send(envelope)
        except ChannelError as exc:
            self._mark_down(f"send failed: {exc}")
            return False
        if envelope.kind is Kind.HEARTBEAT:  # telemetry goes unanswered
            self._await_answer(envelope.wire_bytes)
        return True


def _hub_ms(reply: Envelope) -> float:
    """The time the hub says it spent on a request (queue, decode, compute, encode)."""
    hub = reply.meta.get("timing", {})
    return sum(float(hub.get(k, 0.0)) for k in ("queue_ms", "decode_ms", "compute_ms", "encode_ms"))
