"""The receive loop keeps a server serving whatever one message or one receive does."""

from __future__ import annotations

import logging
import threading

import pytest

from tandem.transport.envelope import Envelope, Kind
from tandem.transport.inproc import InProcServer
from tandem.transport.serve import receive_forever


def test_an_unexpected_error_in_receiving_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    server = InProcServer()
    client = server.connect("cam-1")
    real_recv = server.recv
    failures = iter([RecursionError("maximum recursion depth exceeded")])

    def recv(timeout: float | None = None) -> Envelope:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_recv(timeout)

    server.recv = recv  # type: ignore[method-assign]
    heard: list[str] = []
    stop = threading.Event()
    logger = logging.getLogger("test.serve")

    def on_message(envelope: Envelope) -> None:
        heard.append(envelope.request_id)
        stop.set()

    loop = threading.Thread(
        target=receive_forever,
        args=(server, stop),
        kwargs={"on_message": on_message, "on_rejected": lambda exc: None, "logger": logger, "poll_s": 0.05},
    )
    with caplog.at_level(logging.ERROR, logger="test.serve"):
        loop.start()
        message = Envelope(Kind.HEARTBEAT, device_id="cam-1")
        client.send(message)
        loop.join(timeout=5)
    assert not loop.is_alive() and heard == [message.request_id]
    assert [r.message for r in caplog.records] == ["receive failed unexpectedly; receiving goes on"]
    server.close()
