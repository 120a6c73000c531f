"""Helpers for the sync tests: edge and hub sync ends on a real broker, a record producer, a cuttable TCP link."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tandem.cloud_hub.store import SqliteStore
from tandem.cloud_hub.sync import HubSync, open_hub_sync_channel
from tandem.cloud_hub.sync_config import HubSyncConfig
from tandem.edge_agent.agent import InferenceResult
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.sampling import InferenceRecorder
from tandem.edge_agent.sync import EdgeSync, open_sync_channel
from tandem.edge_agent.sync_config import EdgeSyncConfig
from tandem.transport.config import MqttConfig

FAST_RECONNECT = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def edge_config(port: int, tmp: Path, **overrides: Any) -> EdgeSyncConfig:
    """A sync config for tests: short timeouts, frequent status."""
    values: dict[str, Any] = {
        "mqtt": MqttConfig(port=port, keepalive_s=5),
        "ack_timeout_s": 2.0,
        "max_ack_timeout_s": 4.0,
        "status_interval_s": 0.3,
        "telemetry_interval_s": 0.5,
        "plans_dir": tmp / "plans",
        "artifact_timeout_s": 2.0,
        "model": "toy",
    }
    values.update(overrides)
    return EdgeSyncConfig(**values)


def hub_config(port: int, **overrides: Any) -> HubSyncConfig:
    """A hub sync config for tests."""
    values: dict[str, Any] = {"replica_id": "test", "mqtt": MqttConfig(port=port, keepalive_s=5), "reoffer_s": 1.0}
    values.update(overrides)
    return HubSyncConfig(**values)


def start_edge_sync(config: EdgeSyncConfig, outbox: Outbox, device: str, **kwargs: Any) -> EdgeSync:
    """An EdgeSync with fast reconnects, started."""
    sync = EdgeSync(
        config,
        outbox,
        lambda: open_sync_channel(config, device, **FAST_RECONNECT),
        device_id=device,
        telemetry=lambda: {"cpu_percent": 1.0},
        **kwargs,
    )
    sync.start()
    return sync


def start_hub_sync(config: HubSyncConfig, store: SqliteStore) -> HubSync:
    """A HubSync with fast reconnects, started."""
    hub = HubSync(config, store, channel=open_hub_sync_channel(config, **FAST_RECONNECT))
    hub.start()
    return hub


class Producer:
    """Answers to fake requests, recorded by the real :class:`InferenceRecorder` at a steady rate, on a thread."""

    def __init__(self, recorder: InferenceRecorder, count: int, rate: float, *, pause_after: int | None = None) -> None:
        self.recorder = recorder
        self.count = count
        self.rate = rate
        self.done = 0
        self.pause_after = pause_after
        """After this many answers the producer waits for :meth:`resume`: a test acts mid-stream on any host."""
        self.paused = threading.Event()
        self._resume = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"producer still running after {timeout} s ({self.done} of {self.count})")

    def stop(self) -> None:
        self._stop.set()
        self._resume.set()
        self._thread.join()

    def wait_paused(self, timeout: float = 60) -> None:
        """Until the producer reached ``pause_after`` and waits."""
        if not self.paused.wait(timeout):
            raise AssertionError(f"producer did not reach {self.pause_after} in {timeout} s ({self.done} done)")

    def resume(self) -> None:
        """Go on past ``pause_after``."""
        self._resume.set()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        started = time.monotonic()
        for i in range(self.count):
            if self._stop.is_set():
                return
            feeds = {"x": rng.normal(size=(1, 4)).astype(np.float32)}
            logits = rng.normal(size=(1, 3)).astype(np.float32) * 3
            result = InferenceResult({"logits": logits}, f"req-{i}", "s1", "hub", False, 1.5)
            self.recorder(result, feeds)
            self.done = i + 1
            if self.done == self.pause_after:
                self.paused.set()
                self._resume.wait()
                started = time.monotonic() - self.done / self.rate  # the pause is not made up for in a rush
            ahead = started + (i + 1) / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def written_ids(outbox: Outbox) -> set[str]:
    """Every id the outbox ever handed out (nothing was dropped in these tests)."""
    return {outbox.record_id(seq) for seq in range(1, outbox.last_seq + 1)}


def assert_exactly_once(store: SqliteStore, outbox: Outbox, device: str, timeout: float = 45.0) -> None:
    """Every entry written to the outbox is in the store once: same count, same ids, outbox empty.

    The sync keeps running (telemetry entries keep coming), so the two sides are
    compared until a moment where they agree; a failure shows the difference.
    """

    def agree() -> bool:
        expected = written_ids(outbox)
        return (
            outbox.backlog == 0
            and store.count(device=device) == len(expected)
            and store.record_ids(device=device) == expected
        )

    deadline = time.monotonic() + timeout
    while not agree():
        if time.monotonic() > deadline:
            expected, held = written_ids(outbox), store.record_ids(device=device)
            raise AssertionError(
                f"outbox wrote {len(expected)} entries ({outbox.backlog} still waiting), the store holds "
                f"{store.count(device=device)}; missing {sorted(expected - held)[:5]}, unexpected "
                f"{sorted(held - expected)[:5]}"
            )
        time.sleep(0.1)
    assert outbox.counters()["dropped"] == 0


class TcpCutter:
    """A TCP forwarder to the broker whose link can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self._server.settimeout(0.05)
        self.port = int(self._server.getsockname()[1])
        self._up = True
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="tcp-cutter", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        with self._lock:
            self._up = False
            doomed, self._sockets = self._sockets, []
        for sock in doomed:
            _close(sock)
        logging.getLogger("tests.sync").info("link cut")

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._up = True
        logging.getLogger("tests.sync").info("link restored")

    def close(self) -> None:
        """Stop forwarding and close every socket."""
        self._closed = True
        self.cut()
        self._acceptor.join()
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                up = self._up and not self._closed
            if not up:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=_pump, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextlib.contextmanager
def closing_all(*things: Any) -> Iterator[None]:
    """Stop/close everything given, last first, even when the test fails."""
    try:
        yield
    finally:
        for thing in reversed(things):
            (getattr(thing, "stop", None) or thing.close)()


# -- toy plans ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyPlan:
    """A plan folder whose full model is y = x @ W (4 -> 3), with a plan.yaml naming plan and model."""

    folder: Path
    weights: np.ndarray


def write_toy_plan(
    folder: Path, *, plan_id: str, scale: float, model: str = "toy", extra_bytes: int = 0, version: int | None = None
) -> ToyPlan:
    """A plan folder: model.onnx (x @ W with W scaled by ``scale``), plan.yaml, and optional padding bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) * scale
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    numbered = f"version: {version}\n" if version is not None else ""
    (folder / "plan.yaml").write_text(f"plan_id: {plan_id}\n{numbered}model: {{name: {model}}}\n", encoding="utf-8")
    if extra_bytes:
        (folder / "extra.bin").write_bytes(np.random.default_rng(1).integers(0, 255, extra_bytes, np.uint8).tobytes())
    return ToyPlan(folder, weights)
