"""Admission control on a running hub: bounded queues, ``overloaded`` at once, expired work never computed.

The tail's executor is a real ONNX Runtime session behind a gate: its runs
wait until the test opens the gate, so the queue fills deterministically
whatever this host's speed, and every count below is exact or derived from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import BatchingConfig, HubConfig, MetricsConfig
from tandem.cloud_hub.server import Hub
from tandem.executors import open_executor
from tandem.transport.config import ZmqConfig
from tandem.transport.envelope import Envelope, Kind
from tests.integration.test_hub import activation, client, expected, tail_model

ONES = np.ones((1, 4), np.float32)


class GatedExecutor:
    """A real executor whose runs wait for ``gate``; counts the rows it computed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.running = threading.Event()
        self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.running.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.rows += int(next(iter(feeds.values())).shape[0])
        return dict(self.inner.run(feeds))


@pytest.fixture
def gated(tmp_path: Path) -> GatedExecutor:
    return GatedExecutor(open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx")))


def start_hub(tmp_path: Path, executor: GatedExecutor, **batching: Any) -> Hub:
    config = HubConfig(
        plans=[tmp_path],
        channels=[ZmqConfig(address="tcp://127.0.0.1:*")],
        batching=BatchingConfig(**{"max_batch_size": 1, **batching}),
        metrics=MetricsConfig(port=None),
    )
    hub = Hub(config, [Tail("toy", 1, "s1", executor)])
    hub.start()
    return hub


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Hub] = []

    def make(executor: GatedExecutor, **batching: Any) -> Hub:
        started.append(start_hub(tmp_path, executor, **batching))
        return started[-1]

    yield make
    for hub in started:
        hub.stop()


def answers(edge: Any, count: int) -> dict[str, Envelope]:
    replies = [edge.recv(timeout=30) for _ in range(count)]
    by_id = {reply.request_id: reply for reply in replies}
    assert len(by_id) == count, "a request was answered twice"
    return by_id


def test_a_full_queue_answers_overloaded_at_once_and_serves_what_it_admitted(
    hub_factory: Any, gated: GatedExecutor
) -> None:
    hub = hub_factory(gated, max_queue=4)
    rng = np.random.default_rng(3)
    with client(hub, "cam-1") as edge:
        first = activation(ONES, ONES)
        edge.send(first)
        assert gated.running.wait(10)  # the worker holds the first request: the queue is empty now
        requests = [activation(rng.normal(size=(1, 4)).astype(np.float32), ONES) for _ in range(10)]
        for request in requests:
            edge.send(request)
        refused = answers(edge, 6)  # 4 fit the queue; 6 are refused before the gate opens
        gated.gate.set()
        served = answers(edge, 5)
    assert {r.meta["code"] for r in refused.values()} == {"overloaded"}
    assert all("batching.max_queue" in r.meta["message"] for r in refused.values())
    assert set(refused) == {r.request_id for r in requests[4:]}
    assert set(served) == {first.request_id} | {r.request_id for r in requests[:4]}
    for request in requests[:4]:
        feeds = request.arrays()
        np.testing.assert_allclose(served[request.request_id].arrays()["logits"], expected(feeds["feat"], ONES),
                                   rtol=1e-6)  # fmt: skip
    assert gated.rows == 5


def test_one_flooding_device_cannot_take_the_queue_from_another(hub_factory: Any, gated: GatedExecutor) -> None:
    hub = hub_factory(gated, max_queue=100, max_queue_per_device=3)
    with client(hub, "flood") as flood, client(hub, "good") as good:
        flood.send(activation(ONES, ONES, device_id="flood"))
        assert gated.running.wait(10)
        for _ in range(20):
            flood.send(activation(ONES, ONES, device_id="flood"))
        refused = answers(flood, 17)
        mine = activation(ONES, ONES, device_id="good")
        good.send(mine)
        gated.gate.set()
        reply = good.recv(timeout=30)
        answers(flood, 4)
    assert {r.meta["code"] for r in refused.values()} == {"overloaded"}
    assert all("max_queue_per_device" in r.meta["message"] for r in refused.values())
    assert reply.request_id == mine.request_id and reply.kind is Kind.RESULT


def test_requests_that_expire_while_waiting_are_answered_and_never_computed(
    hub_factory: Any, gated: GatedExecutor
) -> None:
    hub = hub_factory(gated, max_queue=100)
    with client(hub, "cam-1") as edge:
        first = activation(ONES, ONES)
        edge.send(first)
        assert gated.running.wait(10)
        soon = time.time() + 0.3
        expiring = [activation(ONES, ONES, deadline=soon) for _ in range(5)]
        lasting = [activation(ONES, ONES, deadline=time.time() + 600) for _ in range(3)]
        for request in expiring + lasting:
            edge.send(request)
        late = activation(ONES, ONES, deadline=time.time() - 1)  # already past: refused on arrival
        edge.send(late)
        refused_now = edge.recv(timeout=30)
        while time.time() <= soon:
            time.sleep(0.05)
        gated.gate.set()
        replies = answers(edge, 9)
    assert (refused_now.request_id, refused_now.meta["code"]) == (late.request_id, "deadline_exceeded")
    assert "had passed when it reached the hub" in refused_now.meta["message"]
    for request in expiring:
        reply = replies[request.request_id]
        assert (reply.meta["code"], reply.meta["field"]) == ("deadline_exceeded", "deadline")
        assert "it was not run" in reply.meta["message"]
    assert all(replies[r.request_id].kind is Kind.RESULT for r in [first, *lasting])
    assert gated.rows == 1 + len(lasting)  # the expired five never reached the model
