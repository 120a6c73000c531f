"""Dynamic batching of requests for one cloud part (one plan split).

A worker thread takes the first waiting request and, when others are
queueing (the last batch had company, or more requests are already waiting),
waits up to ``max_queue_delay_ms`` for more (up to ``max_batch_size``); under
light load it runs at once. It concatenates the batch's
inputs along the batch axis, runs the executor once and hands each request
its own slice of the outputs. A model with a static batch dimension is run one
request at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.executors import Executor, ExecutorError
from tandem.transport.envelope import Envelope

__all__ = ["Batcher", "Pending", "Tail"]

logger = logging.getLogger("tandem.hub.batcher")


@dataclass(frozen=True)
class Tail:
    """A loaded cloud part: which plan version and split it serves, and its executor."""

    plan_id: str
    plan_version: int
    split_id: str
    executor: Executor

    @property
    def key(self) -> tuple[str, int, str]:
        """The (plan, version, split) an activation must name to reach this tail."""
        return (self.plan_id, self.plan_version, self.split_id)


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


Finish = Callable[[Pending], None]


class Batcher:
    """One worker thread batching requests for one :class:`Tail`."""

    def __init__(self, tail: Tail, *, max_batch_size: int, max_delay_s: float, finish: Finish) -> None:
        self.tail = tail
        self.max_batch_size = max_batch_size if tail.executor.batchable else 1
        self.max_delay_s = max_delay_s
        self._finish = finish
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()  # in C: a cheaper hand-off than Queue
        self._last_batch_size = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{tail.split_id}", daemon=True)
        if max_batch_size > 1 and not tail.executor.batchable:
            logger.warning("%s: static batch dimension, requests run one at a time", tail.executor.describe())

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, pending: Pending) -> None:
        """Queue a request; its ``finish`` callback runs on the worker thread."""
        self._queue.put(pending)

    def stop(self) -> None:
        """Stop after the batch in progress."""
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def depth(self) -> int:
        """Requests waiting."""
        return self._queue.qsize()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = self._gather(first)
            self._run(batch)
            for pending in batch:
                self._finish(pending)

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
            outputs = self.tail.executor.run(_concat([p.feeds for p in batch]))
        except ExecutorError as exc:
            logger.error("batch of %d failed: %s", len(batch), exc)
            for pending in batch:
                pending.error = str(exc)
            return
        elapsed = time.perf_counter() - started
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
