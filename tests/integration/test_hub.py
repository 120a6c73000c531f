"""The cloud hub on real ZeroMQ sockets with real ONNX Runtime sessions."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnx
import pytest
import zmq
from onnx import TensorProto, helper, numpy_helper

from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import BatchingConfig, HubConfig, MetricsConfig
from tandem.cloud_hub.server import Hub
from tandem.executors import open_executor
from tandem.transport.codec import CodecSpec
from tandem.transport.config import ZmqConfig
from tandem.transport.envelope import Envelope, Kind, Limits, decode
from tandem.transport.zmq_channel import ZmqClient

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def tail_model(path: Path, batch: str | int = "N") -> Path:
    """logits = (feat + skip) @ W, with a dynamic or fixed batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["feat", "skip"], ["sum"]), helper.make_node("MatMul", ["sum", "W"], ["logits"])],
        "tail",
        [
            helper.make_tensor_value_info("feat", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, [batch, 4]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(WEIGHTS, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def expected(feat: np.ndarray, skip: np.ndarray) -> np.ndarray:
    return (feat + skip) @ WEIGHTS


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    executor = open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx"))
    config = HubConfig(
        plans=[tmp_path],
        channels=[ZmqConfig(address="tcp://127.0.0.1:*")],
        batching=BatchingConfig(max_batch_size=8, max_queue_delay_ms=20),
        metrics=MetricsConfig(port=0),
        limits={"max_message_bytes": 1 << 20},
    )
    with Hub(config, [Tail("toy", 1, "s1", executor)]) as running:
        yield running


def client(hub: Hub, device: str) -> ZmqClient:
    return ZmqClient(address=hub.addresses[0], device_id=device)


def activation(feat: np.ndarray, skip: np.ndarray, **fields: object) -> Envelope:
    ids = {"device_id": "cam-1", "plan_id": "toy", "plan_version": 1, "split_id": "s1", **fields}
    return Envelope.with_arrays(Kind.ACTIVATION, {"feat": feat, "skip": skip}, CodecSpec(), **ids)


def ask(channel: ZmqClient, envelope: Envelope) -> Envelope:
    channel.send(envelope)
    reply = channel.recv(timeout=10)
    assert reply.request_id == envelope.request_id
    return reply


def test_result_equals_the_model_and_carries_a_timing_breakdown(hub: Hub) -> None:
    rng = np.random.default_rng(0)
    feat, skip = rng.normal(size=(1, 4)).astype(np.float32), rng.normal(size=(1, 4)).astype(np.float32)
    with client(hub, "cam-1") as edge:
        reply = ask(edge, activation(feat, skip))
    assert reply.kind is Kind.RESULT
    np.testing.assert_allclose(reply.arrays()["logits"], expected(feat, skip), rtol=1e-6)
    assert set(reply.meta["timing"]) == {"queue_ms", "decode_ms", "compute_ms", "encode_ms", "batch_size"}
    assert all(v >= 0 for v in reply.meta["timing"].values())


class FirstRunWaits:
    """An executor whose first run waits until ``queued()`` says every request has reached the hub."""

    def __init__(self, inner: Any, queued: Callable[[], bool]) -> None:
        self.inner, self.queued, self.first = inner, queued, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.first:
            self.first = False
            deadline = time.monotonic() + 30
            while not self.queued() and time.monotonic() < deadline:
                time.sleep(0.005)
        return self.inner.run(feeds)


def test_requests_from_many_edges_are_batched_and_each_gets_its_own_result(tmp_path: Path) -> None:
    """Eight requests at once run as a batch of seven (the most) and one of one, on any host.

    The first run is held until all eight have reached the hub. If the first
    request found the hub idle it ran alone and the seven behind it form the
    next batch; if others were already queued, the first batch fills to seven
    and the last request follows alone after the queue delay. Either way: 1 + 7.
    """
    executor = FirstRunWaits(open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx")), lambda: False)
    config = HubConfig(
        plans=[tmp_path],
        channels=[ZmqConfig(address="tcp://127.0.0.1:*")],
        batching=BatchingConfig(max_batch_size=7, max_queue_delay_ms=2_000),
        metrics=MetricsConfig(port=0),
    )
    hub = Hub(config, [Tail("toy", 1, "s1", executor)])  # type: ignore[arg-type]
    batcher = hub._batchers[("toy", 1, "s1", "")]
    received, submit = [0], batcher.submit

    def counting(pending: Any) -> None:
        received[0] += 1
        submit(pending)

    batcher.submit = counting  # type: ignore[method-assign]
    executor.queued = lambda: received[0] == 8
    hub.start()
    rng = np.random.default_rng(1)
    results: dict[str, tuple[np.ndarray, Envelope]] = {}
    barrier = threading.Barrier(8)

    def edge(i: int) -> None:
        feat, skip = rng.normal(size=(1, 4)).astype(np.float32), np.full((1, 4), i, np.float32)
        with client(hub, f"cam-{i}") as channel:
            barrier.wait()
            results[f"cam-{i}"] = (expected(feat, skip), ask(channel, activation(feat, skip, device_id=f"cam-{i}")))

    threads = [threading.Thread(target=edge, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for want, reply in results.values():
        np.testing.assert_allclose(reply.arrays()["logits"], want, rtol=1e-5)
    hub.stop()
    assert sorted(reply.meta["timing"]["batch_size"] for _, reply in results.values()) == [1] + [7] * 7


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"plan_id": "nope"}, "unknown_plan", "plan 'nope' is not loaded; loaded: toy"),
        ({"plan_version": 9}, "unknown_plan_version", "plan 'toy' version 9 is not loaded; loaded: 1"),
        ({"split_id": "s7"}, "unknown_split", "plan 'toy' has no split 's7'; its splits: s1"),
    ],
)
def test_unknown_plan_version_or_split_gets_a_named_error(
    hub: Hub, fields: dict[str, object], code: str, message: str
) -> None:
    with client(hub, "cam-1") as edge:
        reply = ask(edge, activation(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), **fields))
    assert reply.kind is Kind.ERROR
    assert (reply.meta["code"], reply.meta["message"]) == (code, message)


@pytest.mark.parametrize(
    ("arrays", "message", "field"),
    [
        ({"feat": np.zeros((1, 4), np.float32)}, "missing input tensor(s) ['skip']", "tensors"),
        (
            {"feat": np.zeros((1, 5), np.float32), "skip": np.zeros((1, 4), np.float32)},
            "tensor 'feat' has shape [1, 5], expected ['?', 4]",
            "tensors['feat']",
        ),
        (
            {"feat": np.zeros((1, 4), np.float64), "skip": np.zeros((1, 4), np.float32)},
            "tensor 'feat' has dtype float64, expected float32",
            "tensors['feat']",
        ),
    ],
)
def test_wrong_tensors_get_bad_input_naming_the_tensor(
    hub: Hub, arrays: dict[str, np.ndarray], message: str, field: str
) -> None:
    request = Envelope.with_arrays(Kind.ACTIVATION, arrays, plan_id="toy", plan_version=1, split_id="s1")
    with client(hub, "cam-1") as edge:
        reply = ask(edge, request)
    assert (reply.meta["code"], reply.meta["field"]) == ("bad_input", field)
    assert message in reply.meta["message"]


def test_malformed_and_oversized_messages_get_errors_and_the_hub_keeps_serving(hub: Hub) -> None:
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.connect(hub.addresses[0])
    try:
        raw.send_multipart([msgpack.packb([1, 2, 3])])
        assert raw.poll(10_000)
        error = decode(raw.recv_multipart())
        assert (error.meta["code"], error.meta["field"]) == ("malformed_header", "header")
        assert error.meta["message"] == "header is a list, expected a map"
    finally:
        raw.close(linger=0)
        context.term()
    big = np.zeros((1, 4 * 80_000), np.float32)  # 1.28 MB > the 1 MiB limit
    with client(hub, "cam-2") as edge:
        edge.send(Envelope.with_arrays(Kind.ACTIVATION, {"feat": big}, plan_id="toy", plan_version=1, split_id="s1"))
        reply = edge.recv(timeout=10)
        assert reply.meta["code"] == "message_too_large"
        good = ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32)))
    assert good.kind is Kind.RESULT


def test_a_vanished_edge_does_not_block_the_others(hub: Hub) -> None:
    gone = client(hub, "cam-gone")
    gone.send(activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32), device_id="cam-gone"))
    gone.close()
    with client(hub, "cam-3") as edge:
        for _ in range(5):
            assert ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))).kind is Kind.RESULT


def test_heartbeat_is_echoed_and_metrics_are_served(hub: Hub) -> None:
    with client(hub, "cam-1") as edge:
        beat = ask(edge, Envelope(kind=Kind.HEARTBEAT, device_id="cam-1"))
        ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32)))
    assert beat.kind is Kind.HEARTBEAT and beat.meta["hub_time"] > 0
    text = urllib.request.urlopen(f"http://127.0.0.1:{hub.metrics_port}/metrics", timeout=5).read().decode()
    assert 'tandem_hub_requests_total{device="cam-1",outcome="ok",plan="toy",split="s1"} 1.0' in text
    assert "tandem_hub_batch_size_bucket" in text


def test_garbage_from_many_senders_neither_breaks_the_metrics_nor_grows_them(hub: Hub) -> None:
    context = zmq.Context()
    try:
        for i in range(40):
            raw = context.socket(zmq.DEALER)
            if i % 2:
                raw.setsockopt(zmq.ROUTING_ID, b"\xffjunk-%d" % i)  # not UTF-8: a non-Python client may send that
            raw.connect(hub.addresses[0])
            header = {"v": 1, "kind": "activation", "id": f"r{i}", "device": f"claimed-{i}", "tensors": "nope"}
            raw.send_multipart([msgpack.packb(header)])
            assert raw.poll(10_000)
            assert decode(raw.recv_multipart()).kind is Kind.ERROR
            raw.close(linger=0)
    finally:
        context.term()
    with client(hub, "cam-1") as edge:
        assert ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))).kind is Kind.RESULT
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.metrics_port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    devices = {line.split('device="')[1].split('"')[0] for line in text.splitlines() if 'device="' in line}
    assert devices == {"cam-1", "unidentified"}, devices  # 40 bad senders, one label
    assert 'tandem_hub_errors_total{code="malformed_header",device="unidentified"} 40.0' in text


def test_device_labels_are_bounded_and_valid_utf8() -> None:
    from tandem.cloud_hub.metrics import OTHER_DEVICES, UNIDENTIFIED, HubMetrics

    metrics = HubMetrics(max_devices=3)
    labels = [metrics.device_label(f"cam-{i}") for i in range(5)]
    assert labels == ["cam-0", "cam-1", "cam-2", OTHER_DEVICES, OTHER_DEVICES]
    assert metrics.device_label("cam-1", identified=False) == "cam-1"  # known: keeps its name
    assert metrics.device_label("cam-9", identified=False) == UNIDENTIFIED
    assert HubMetrics().device_label("\udcffjunk") == "\\xffjunk"  # a surrogate-escaped routing id
    assert HubMetrics().device_label("") == UNIDENTIFIED


def test_static_batch_model_is_served_one_request_at_a_time(tmp_path: Path) -> None:
    executor = open_executor("onnxruntime", tail_model(tmp_path / "static.onnx", batch=1))
    assert not executor.batchable
    config = HubConfig(
        plans=[tmp_path], channels=[ZmqConfig(address="tcp://127.0.0.1:*")], metrics=MetricsConfig(port=None)
    )
    with Hub(config, [Tail("toy", 1, "s1", executor)]) as hub, client(hub, "cam-1") as edge:
        reply = ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32)))
    assert reply.meta["timing"]["batch_size"] == 1


def test_limits_come_from_config() -> None:
    assert HubConfig(plans=["x"], limits={"max_message_bytes": 10}).limits.to_limits() == Limits(max_message_bytes=10)
