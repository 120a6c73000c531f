"""The agent's local endpoint: other processes on the box call ``infer`` over ZeroMQ.

Same envelope protocol as the hub link: send an ``activation`` carrying the
model's inputs, get a ``result`` with its outputs and, in ``meta``, the split
used, the source (hub, edge, fallback), ``degraded`` and the timings; or an
``error`` naming what was wrong with the request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tandem.edge_agent.agent import EdgeAgent
from tandem.executors import ExecutorError
from tandem.transport.envelope import Envelope, Kind, Limits, rejection_reply
from tandem.transport.errors import ChannelError, ProtocolError
from tandem.transport.serve import receive_forever
from tandem.transport.zmq_channel import ZmqClient, ZmqServer

__all__ = ["LocalClient", "LocalEndpoint"]

_DRAIN_LINGER_S = 0.3
logger = logging.getLogger("tandem.edge.endpoint")


class LocalEndpoint:
    """Serve ``agent.infer`` on ``address`` with ``workers`` requests in parallel."""

    def __init__(self, agent: EdgeAgent, *, address: str, workers: int = 4, limits: Limits = Limits()) -> None:
        self.agent = agent
        self.server = ZmqServer(address=address, limits=limits)
        self.address = self.server.address
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-endpoint")
        self._stop = threading.Event()
        self._draining = False
        self._in_flight = 0  # requests accepted and not answered yet, under _lock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="edge-endpoint", daemon=True)

    def start(self) -> None:
        """Start answering."""
        self._thread.start()
        logger.info("local endpoint listening on %s", self.address)

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        self.server.close()

    def _serve(self) -> None:
        receive_forever(
            self.server,
            self._stop,
            on_message=self._submit,
            on_rejected=self._reject,
            logger=logger,
        )

    def drain(self, grace_s: float) -> bool:
        """Answer every request already accepted, refuse new ones with ``shutting_down``, for up to ``grace_s``;
        True if every accepted request was answered in time. Call :meth:`stop` after."""
        self._draining = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    break
            time.sleep(0.01)
        else:
            return False
        time.sleep(min(_DRAIN_LINGER_S, max(0.0, deadline - time.monotonic())))  # callers asking again learn why
        return True

    def _submit(self, request: Envelope) -> None:
        if self._draining:
            self._reply(request, request.sender, code="shutting_down", field="",
                        message="the edge agent is shutting down; retry once it is back")  # fmt: skip
            return
        with self._lock:
            self._in_flight += 1
        self._pool.submit(self._answer_counted, request)

    def _answer_counted(self, request: Envelope) -> None:
        try:
            self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _reject(self, exc: ProtocolError) -> None:
        if exc.sender:
            self._send(rejection_reply(exc), exc.sender)

    def _answer(self, request: Envelope) -> None:
        if request.kind is not Kind.ACTIVATION:
            self._reply(request, request.sender, code="unsupported_kind", message="send an 'activation'", field="kind")
            return
        try:
            result = self.agent.infer(request.arrays())
        except (ValueError, ExecutorError, ProtocolError) as exc:
            self._reply(request, request.sender, code="bad_input", message=str(exc), field="tensors")
            return
        reply = request.reply(Kind.RESULT)
        reply.add_arrays(result.outputs)
        reply.meta = {
            "split": result.split_id,
            "planned_split": result.planned_split,
            "source": result.source,
            "degraded": result.degraded,
            "latency_ms": result.latency_ms,
            "timing": result.timing,
            "reason": result.reason,
            "hub_request_id": result.request_id,
        }
        self._send(reply, request.sender)

    def _reply(self, request: Envelope, to: str | None, *, code: str, message: str, field: str) -> None:
        self._send(request.error_reply(code, message, field_name=field), to)

    def _send(self, envelope: Envelope, to: str | None) -> None:
        try:
            self.server.send(envelope, to=to)
        except ChannelError as exc:
            logger.info("caller %s went away before its answer: %s", to, exc)


class LocalClient:
    """Call a running agent's local endpoint from another process."""

    def __init__(self, address: str, *, name: str = "app", timeout_s: float = 30.0) -> None:
        self.channel = ZmqClient(address=address, device_id=name)
        self.timeout_s = timeout_s

    def infer(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Outputs and the result's meta (split, source, degraded, timing); raises on an error reply."""
        request = Envelope.with_arrays(Kind.ACTIVATION, inputs)
        self.channel.send(request)
        while True:
            reply = self.channel.recv(timeout=self.timeout_s)
            if reply.request_id == request.request_id:
                break
        if reply.kind is Kind.ERROR:
            raise ValueError(f"agent refused the request: {reply.meta.get('message')} ({reply.meta.get('code')})")
        return reply.arrays(), reply.meta

    def close(self) -> None:
        """Close the connection."""
        self.channel.close()
