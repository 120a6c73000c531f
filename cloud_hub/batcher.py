"""Admission and dynamic batching of requests for one cloud part (one plan split).

:meth:`Batcher.submit` admits a request only while the queue holds fewer than
``max_queue`` requests and its device fewer than ``max_queue_per_device``;
otherwise it says why (``overloaded``), and a request already past its
deadline is refused there too (``deadline_exceeded``). Requests whose deadline
passes while they wait are dropped before compute, not computed and thrown
away.

A worker thread takes the first waiting request and, when others are
queueing (the last batch had company, or more requests are already waiting),
waits up to ``max_queue_delay_ms`` for more (up to ``max_batch_size``); under
light load it runs at once. It concatenates the batch's
inputs along the batch axis, runs the executor once and hands each request
its own slice of the outputs. A model with a static batch dimension is run one
request at a time.

Without batching (``max_batch_size`` 1), :meth:`Batcher.run_inline` lets the
receive thread run a request itself when that delays nobody: nothing waits or
runs here, no other message waits on the channel, and the tail's last run took
under :data:`INLINE_MAX_S`. Handing the request to the worker thread and the
reply back costs two thread wake-ups, and on a busy 2-core host each costs
tens of microseconds (an Identity tail's 16 KB round trip: 0.46 ms through the
worker, 0.28 ms inline). Under load, or for a slow tail, requests queue as
before, so admission control and deadlines work as described above.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.executors import Executor, ExecutorError
from tandem.transport.codec import TensorSpec
from tandem.transport.envelope import Envelope

__all__ = ["INLINE_MAX_S", "Batcher", "Pending", "Refusal", "Tail", "WireForm"]

logger = logging.getLogger("tandem.hub.batcher")

INLINE_MAX_S = 0.001
"""A tail whose last run took longer is never run in the receive thread: the channel would go unread meanwhile."""


@dataclass(frozen=True)
class WireForm:
    """How one input of a cloud part with the codec inside must arrive: float16, or int8 with exactly these scales."""

    codec: str
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None

    def matches(self, spec: TensorSpec) -> bool:
        """Whether a tensor sent as ``spec`` can go into the part as it is."""
        if spec.codec != self.codec:
            return False
        sent = (spec.scale, spec.zero_point, spec.axis)
        return self.codec != "int8" or sent == (self.scale, self.zero_point, self.axis)


@dataclass(frozen=True)
class Tail:
    """A loaded cloud part: which plan version and split it serves, and its executor.

    A split's cloud part with the codec inside (partitioner/in_graph.py) is a tail of its own, ``variant`` set
    and ``as_sent`` naming the inputs it takes in their wire form; the hub routes a request to it when every
    such input arrived in exactly that form, to the plain part otherwise.
    """

    plan_id: str
    plan_version: int
    split_id: str
    executor: Executor
    variant: str = ""
    as_sent: Mapping[str, WireForm] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, int, str]:
        """The (plan, version, split) an activation must name to reach this tail."""
        return (self.plan_id, self.plan_version, self.split_id)

    @property
    def batch_key(self) -> tuple[str, int, str, str]:
        """The key of the batcher serving this tail: the plain part and each variant batch apart."""
        return (*self.key, self.variant)

    def takes(self, envelope: Envelope) -> bool:
        """Whether every input this variant takes as sent arrived in its wire form."""
        specs = {spec.name: spec for spec in envelope.tensors}
        return all(name in specs and form.matches(specs[name]) for name, form in self.as_sent.items())


@dataclass
class Pending:
    """A validated request waiting for its batch."""

    envelope: Envelope
    feeds: dict[str, np.ndarray]
    received: float
    decode_s: float
    channel: Any = None
    batch_size: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str = ""
    expired: bool = False

    @property
    def device(self) -> str:
        """Whom the request counts against in the per-device queue bound."""
        return self.envelope.device_id or str(self.envelope.sender)


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted: an error code, a message, the header field at fault."""

    code: str
    message: str
    field: str = ""


Finish = Callable[[Pending], None]


class Batcher:
    """One worker thread batching requests for one :class:`Tail`."""

    def __init__(
        self,
        tail: Tail,
        *,
        max_batch_size: int,
        max_delay_s: float,
        finish: Finish,
        max_queue: int = 256,
        max_queue_per_device: int = 64,
    ) -> None:
        self.tail = tail
        self.max_batch_size = max_batch_size if tail.executor.batchable else 1
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.max_queue_per_device = max_queue_per_device
        self._finish = finish
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()  # in C: a cheaper hand-off than Queue
        self._waiting: dict[str, int] = {}  # per device, under _admission
        self._running = 0  # requests taken from the queue and not finished yet, under _admission
        self._admission = threading.Lock()
        self._last_batch_size = 0
        self._last_run_s = math.inf  # the latest run's compute time; none yet: unknown, so not inline
        self._compute = threading.Lock()  # one executor run at a time, inline or batched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{tail.split_id}", daemon=True)
        if max_batch_size > 1 and not tail.executor.batchable:
            logger.warning("%s: static batch dimension, requests run one at a time", tail.executor.describe())

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, pending: Pending) -> Refusal | None:
        """Queue a request (its ``finish`` callback runs on the worker thread), or say why not."""
        deadline = pending.envelope.deadline
        if deadline is not None and time.time() > deadline:
            return Refusal("deadline_exceeded", "the request's deadline had passed when it reached the hub", "deadline")
        device = pending.device
        with self._admission:
            mine = self._waiting.get(device, 0)
            if self._queue.qsize() >= self.max_queue:
                return Refusal(
                    "overloaded",
                    f"split {self.tail.split_id!r} has {self.max_queue} requests waiting (batching.max_queue); "
                    "retry later or answer locally",
                )
            if mine >= self.max_queue_per_device:
                return Refusal(
                    "overloaded",
                    f"this device has {mine} requests waiting for split {self.tail.split_id!r} "
                    "(batching.max_queue_per_device); retry later or answer locally",
                )
            self._waiting[device] = mine + 1
            self._queue.put(pending)
        return None

    def run_inline(self, pending: Pending) -> bool:
        """Run ``pending`` in the calling thread if that delays nobody (see the module docstring); False if not.

        The caller must know that no other message waits to be received. A
        request not run here goes through :meth:`submit` as usual.
        """
        deadline = pending.envelope.deadline
        if self.max_batch_size != 1 or self._last_run_s >= INLINE_MAX_S:
            return False
        if deadline is not None and time.time() > deadline:
            return False  # submit refuses it with the usual message
        with self._admission:
            if self._waiting or self._running:
                return False
            self._running = 1
        try:
            self._run([pending])
            self._finish(pending)
        finally:
            with self._admission:
                self._running -= 1
        return True

    def stop(self) -> None:
        """Stop after the batch in progress."""
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def depth(self) -> int:
        """Requests waiting."""
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Nothing waiting and no batch in progress."""
        with self._admission:
            return not self._waiting and not self._running

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = self._gather(first)
            self._release(batch)
            now = time.time()
            live = []
            for pending in batch:
                deadline = pending.envelope.deadline
                if deadline is not None and now > deadline:
                    pending.expired = True  # dropped before compute: running it would only delay the others
                    self._finish(pending)
                else:
                    live.append(pending)
            if live:
                self._run(live)
            for pending in live:
                self._finish(pending)
            with self._admission:
                self._running -= len(batch)

    def _release(self, batch: list[Pending]) -> None:
        with self._admission:
            self._running += len(batch)
            for pending in batch:
                left = self._waiting.get(pending.device, 1) - 1
                if left > 0:
                    self._waiting[pending.device] = left
                else:
                    self._waiting.pop(pending.device, None)

    def _gather(self, first: Pending) -> list[Pending]:
        batch = [first]
        if self._last_batch_size <= 1 and self._queue.empty():
            # Light load: nobody else is waiting, so waiting for company only adds latency.
            self._last_batch_size = 1
            return batch
        until = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch_size:
            remaining = until - time.perf_counter()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        self._last_batch_size = len(batch)
        return batch

    def _run(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        for pending in batch:
            pending.queue_s = started - pending.received
            pending.batch_size = len(batch)
        try:
            with self._compute:
                outputs = self.tail.executor.run(_concat([p.feeds for p in batch]))
        except ExecutorError as exc:
            logger.error("batch of %d failed: %s", len(batch), exc)
            for pending in batch:
                pending.error = str(exc)
            return
        elapsed = time.perf_counter() - started
        self._last_run_s = elapsed
        if len(batch) == 1:
            batch[0].compute_s, batch[0].outputs = elapsed, outputs
            return
        offsets = np.cumsum([0] + [_rows(p.feeds) for p in batch])
        for i, pending in enumerate(batch):
            pending.compute_s = elapsed
            pending.outputs = {name: value[offsets[i] : offsets[i + 1]] for name, value in outputs.items()}


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _concat(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}
