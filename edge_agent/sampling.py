"""What goes into the outbox per inference: a record always, the input tensors when the policy picks them.

:class:`InferenceRecorder` is the agent's ``on_result`` hook. For each answer
it writes an inference record (request id, time, plan, split, source, degraded,
latency, top output) and, when :class:`SamplingPolicy` says so, a sample: the
request's input tensors packed as a ``sample`` envelope. Anything the outbox
refuses is counted and logged: an entry too large at WARNING each time; a full
outbox (``stop_sampling``) by the outbox itself, at WARNING at once and then
once a minute, and here at DEBUG per entry. Inference is never held up by it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgpack
import numpy as np

from tandem.edge_agent.outbox import Outbox, OutboxError, OutboxStorageError, RecordTooLarge
from tandem.edge_agent.sync_config import SamplingConfig
from tandem.throttled_log import ThrottledWarning
from tandem.transport.envelope import Envelope, Kind, pack

__all__ = ["InferenceRecorder", "SamplingPolicy", "TopPrediction", "top_prediction"]

logger = logging.getLogger("tandem.edge.sampling")


class _Result(Protocol):
    """What the recorder reads from an :class:`tandem.edge_agent.agent.InferenceResult`."""

    outputs: dict[str, np.ndarray]
    request_id: str
    split_id: str
    source: str
    degraded: bool
    latency_ms: float
    reason: str


class TopPrediction:
    """The top class of one output: its index and confidence (max softmax probability; None if not scores)."""

    def __init__(self, output: str, index: int | None, confidence: float | None) -> None:
        self.output = output
        self.index = index
        self.confidence = confidence

    def as_dict(self) -> dict[str, Any]:
        """The record's ``top`` field."""
        return {"output": self.output, "index": self.index, "confidence": self.confidence}


def top_prediction(outputs: Mapping[str, np.ndarray], output: str | None = None) -> TopPrediction | None:
    """The top class of ``output`` (default: the first); for a batch, the least confident row.

    Scores that already are probabilities (in [0, 1], rows summing to 1) are
    used as they are; anything else is treated as logits and softmaxed.
    """
    if not outputs:
        return None
    name = output or next(iter(outputs))
    if name not in outputs:
        raise KeyError(f"sampling.output {name!r} is not an output of the model; outputs: {sorted(outputs)}")
    scores = np.asarray(outputs[name])
    if scores.size == 0 or scores.ndim == 0 or not np.issubdtype(scores.dtype, np.floating):
        return TopPrediction(name, None, None)
    rows = scores.reshape(-1, scores.shape[-1]).astype(np.float64)
    is_probability = bool(np.all((rows >= 0) & (rows <= 1))) and bool(np.allclose(rows.sum(axis=1), 1, atol=1e-3))
    if not is_probability:
        shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
        rows = shifted / shifted.sum(axis=1, keepdims=True)
    confidence = rows.max(axis=1)
    hardest = int(np.argmin(confidence))
    return TopPrediction(name, int(np.argmax(rows[hardest])), float(confidence[hardest]))


class SamplingPolicy:
    """Decides which inputs become samples: every Nth, hard ones (low confidence), all, or none."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self._seen = 0
        self._lock = threading.Lock()

    def choose(self, confidence: float | None) -> str | None:
        """Why this input is sampled (``every_nth``, ``hard``, ``all``), or None."""
        mode = self.config.mode
        with self._lock:
            self._seen += 1
            seen = self._seen
        if mode == "all":
            return "all"
        if mode == "every_nth":
            return "every_nth" if seen % self.config.every_n == 0 else None
        if mode == "hard":
            return "hard" if confidence is not None and confidence < self.config.confidence_below else None
        return None


class InferenceRecorder:
    """The agent's ``on_result`` hook: write a record and, when chosen, a sample to the outbox."""

    def __init__(
        self,
        outbox: Outbox,
        config: SamplingConfig,
        *,
        device_id: str,
        plan_in_use: Callable[[], tuple[str, int]] = lambda: ("", 0),
    ) -> None:
        self.outbox = outbox
        self.config = config
        self.device_id = device_id
        self.plan_in_use = plan_in_use
        self.policy = SamplingPolicy(config)
        self.counts = {"records": 0, "samples": 0, "refused": 0, "too_large": 0, "storage_failed": 0}
        self._storage_failures = ThrottledWarning(logger)  # while the disk stays full, every answer would log
        self.last_feeds: dict[str, np.ndarray] | None = None  # a real input, for a new plan's self-check

    def __call__(self, result: _Result, feeds: Mapping[str, np.ndarray]) -> None:
        """Record one answer; never raises for what the outbox refuses."""
        try:
            top = top_prediction(result.outputs, self.config.output)
        except KeyError as exc:
            logger.warning("not recorded: %s", exc.args[0])
            return
        self.last_feeds = dict(feeds)
        plan_id, version = self.plan_in_use()
        now = time.time()
        if self.config.records:
            body = {
                "request_id": result.request_id,
                "time": now,
                "plan_id": plan_id,
                "plan_version": version,
                "split": result.split_id,
                "source": result.source,
                "degraded": result.degraded,
                "latency_ms": round(float(result.latency_ms), 3),
                "reason": result.reason,
                "top": top.as_dict() if top else None,
            }
            self._store("record", msgpack.packb(body, use_bin_type=True), now)
        if self.outbox.full and self.outbox.when_full == "stop_sampling":
            return  # the outbox would refuse it: do not spend time encoding the sample
        why = self.policy.choose(top.confidence if top else None)
        if why is None:
            return
        sample = Envelope.with_arrays(
            Kind.SAMPLE,
            {name: np.ascontiguousarray(array) for name, array in feeds.items()},
            request_id=result.request_id,
            device_id=self.device_id,
            plan_id=plan_id,
            plan_version=version,
            split_id=result.split_id,
            meta={"why": why, "time": now, "source": result.source, "top": top.as_dict() if top else None},
        )
        self._store("sample", pack(sample), now)

    def _store(self, kind: str, body: bytes, created: float) -> None:
        try:
            stored = self.outbox.put(kind, body, created=created)
        except OutboxStorageError as exc:
            self.counts["storage_failed"] += 1
            self._storage_failures.warn(f"{kind} not stored, serving goes on (free disk space for the outbox): {exc}")
            return
        except OutboxError as exc:
            self.counts["too_large" if isinstance(exc, RecordTooLarge) else "refused"] += 1
            logger.warning("%s not stored: %s", kind, exc)
            return
        if stored is None:
            self.counts["refused"] += 1
            # The outbox warns (rate-limited) with the bound hit; one line per refusal would flood the log.
            logger.debug("%s not stored: the outbox is full (when_full: stop_sampling)", kind)
            return
        self.counts["records" if kind == "record" else "samples"] += 1
