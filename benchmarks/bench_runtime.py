"""Hub throughput vs concurrent edges (batching on/off), and the agent round trip vs raw pyzmq.

1. Throughput: a hub process serves a real cloud part (MobileNetV2 from
   features[11] to the classifier, dynamic batch) to 1, 4, 16 and 64 simulated
   edges, each a closed loop of activations over its own ZeroMQ connection, with
   batching off and on. Reports inferences/s and p50/p99 latency. At 64 edges
   the off/on pair runs three times and the batching gain is the median of the
   three pairs' gains (one pair swings by ±15 % on a busy 2-core machine).
   For scale, the same tail's throughput in ONNX Runtime alone, in this
   process, at batch 1 and at the hub's maximum batch: batching cannot gain
   more end to end than it gains there.
2. Round trip: ``EdgeAgent.infer`` of a 1 MiB (and a 16 KB) fp32 input through
   a cloud-only split to a hub whose tail is an Identity, against raw pyzmq
   REQ/REP echoing the same bytes, both against a separate server process. A third series, the
   floor, has no Tandem code: a raw DEALER sends the bytes, a raw ROUTER in
   another process runs the same Identity in ONNX Runtime and sends its output
   back; it is what the wire plus the model cost without any runtime around them.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

EDGE_COUNTS = (1, 4, 16, 64)
MAX_BATCH = 32
ONE_MIB = 1 << 20
SIXTEEN_KB = 16 << 10
TARGET_VS_FLOOR = 1.25  # agent round trip / the no-runtime floor (issue #18)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export_tail(path: Path) -> Path:
    """MobileNetV2 from features[11] through the classifier, dynamic batch, random weights."""
    import torch
    import torchvision

    class Tail(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.features = net.features[11:]
            self.classifier = net.classifier

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
            return self.classifier(x)

    torch.manual_seed(0)
    tail = Tail(torchvision.models.mobilenet_v2(weights=None)).eval()
    torch.onnx.export(
        tail, (torch.randn(1, 64, 14, 14),), str(path), input_names=["feat"], output_names=["logits"],
        dynamic_axes={"feat": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17,
    )  # fmt: skip
    return path


def export_identity(path: Path, nbytes: int = ONE_MIB) -> Path:
    """A tail that returns its ``nbytes`` fp32 input: the transport cost alone."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", nbytes // 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", nbytes // 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _serve_hub(tail: str, port: int, max_batch: int, delay_ms: float, ready: Any, stop: Any) -> None:
    from tandem.cloud_hub.batcher import Tail
    from tandem.cloud_hub.config import BatchingConfig, HubConfig, MetricsConfig
    from tandem.cloud_hub.server import Hub
    from tandem.executors import open_executor
    from tandem.transport.config import ZmqConfig

    config = HubConfig(
        plans=[Path(tail).parent],
        channels=[ZmqConfig(address=f"tcp://127.0.0.1:{port}", recv_hwm=10_000, send_hwm=10_000)],
        batching=BatchingConfig(enabled=max_batch > 1, max_batch_size=max_batch, max_queue_delay_ms=delay_ms),
        metrics=MetricsConfig(port=None),
    )
    with Hub(config, [Tail("bench", 1, "s1", open_executor("onnxruntime", tail))]):
        ready.set()
        stop.wait()


class _HubProcess:
    def __init__(self, tail: Path, *, max_batch: int, delay_ms: float) -> None:
        ctx = mp.get_context("spawn")
        self.port = _free_port()
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.process = ctx.Process(
            target=_serve_hub, args=(str(tail), self.port, max_batch, delay_ms, self.ready, self.stop), daemon=True
        )

    def __enter__(self) -> _HubProcess:
        self.process.start()
        if not self.ready.wait(120):
            raise RuntimeError("hub process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def _edge_loop(port: int, name: str, until: float, latencies: list[float], errors: list[str]) -> None:
    from tandem.transport.envelope import Envelope, Kind
    from tandem.transport.zmq_channel import ZmqClient

    feat = np.random.default_rng(abs(hash(name)) % 1000).normal(size=(1, 64, 14, 14)).astype(np.float32)
    with ZmqClient(address=f"tcp://127.0.0.1:{port}", device_id=name) as channel:
        while time.perf_counter() < until:
            request = Envelope.with_arrays(
                Kind.ACTIVATION, {"feat": feat}, device_id=name, plan_id="bench", plan_version=1, split_id="s1"
            )
            started = time.perf_counter()
            channel.send(request)
            reply = channel.recv(timeout=60)
            if reply.kind is not Kind.RESULT:
                errors.append(str(reply.meta))
                continue
            latencies.append(time.perf_counter() - started)


def throughput(tail: Path, edges: int, batching: bool, seconds: float, *, delay_ms: float = 5.0) -> dict[str, Any]:
    """Closed-loop inferences/s and latency percentiles for ``edges`` concurrent edges."""
    with _HubProcess(tail, max_batch=MAX_BATCH if batching else 1, delay_ms=delay_ms) as hub:
        latencies: list[float] = []
        errors: list[str] = []
        warm = time.perf_counter() + 1.0
        _edge_loop(hub.port, "warmup", warm, [], errors)
        until = time.perf_counter() + seconds
        threads = [
            threading.Thread(target=_edge_loop, args=(hub.port, f"edge-{i}", until, latencies, errors))
            for i in range(edges)
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "edges": edges,
        "batching": batching,
        "inferences": len(latencies),
        "errors": len(errors),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2) if ordered else None,
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2) if ordered else None,
    }


def onnxruntime_alone(tail: Path, seconds: float) -> dict[str, Any]:
    """The tail's inferences/s in ONNX Runtime alone, at batch 1 and at MAX_BATCH: batching's ceiling here."""
    from tandem.executors import open_executor

    executor = open_executor("onnxruntime", tail)
    rates = {}
    for batch in (1, MAX_BATCH):
        feeds = {"feat": np.random.default_rng(0).normal(size=(batch, 64, 14, 14)).astype(np.float32)}
        executor.run(feeds)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            executor.run(feeds)
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - started)
    return {
        "batch_1_per_s": round(rates[1], 1),
        f"batch_{MAX_BATCH}_per_s": round(rates[MAX_BATCH], 1),
        "gain": round(rates[MAX_BATCH] / rates[1], 2),
    }


def _serve_raw(port: int, ready: Any, stop: Any) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            sock.send(sock.recv(copy=False), copy=False)
    sock.close(linger=0)
    context.term()


class _RawPeer:
    """A raw pyzmq socket here, its server (``serve(*args, port, ready, stop)``) in another process.

    ``round_trip`` sends the ``nbytes`` payload and copies the reply out.
    """

    def __init__(
        self, serve: Callable[..., None], args: tuple[Any, ...], socket_type: int, what: str, nbytes: int
    ) -> None:
        import zmq

        ctx = mp.get_context("spawn")
        self.port, self.ready, self.stop = _free_port(), ctx.Event(), ctx.Event()
        self.process = ctx.Process(target=serve, args=(*args, self.port, self.ready, self.stop), daemon=True)
        self.process.start()
        if not self.ready.wait(60):
            raise RuntimeError(f"{what} process did not start")
        self.context = zmq.Context()
        self.sock = self.context.socket(socket_type)
        self.sock.connect(f"tcp://127.0.0.1:{self.port}")
        self.payload = np.random.default_rng(0).normal(size=nbytes // 4).astype(np.float32)

    def round_trip(self) -> None:
        self.sock.send(self.payload.data, copy=False)
        np.frombuffer(self.sock.recv(copy=False).buffer, np.float32).copy()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()
        self.stop.set()
        self.process.join(10)


def _raw_echo(nbytes: int) -> _RawPeer:
    """The baseline: raw pyzmq REQ here, REP echo in another process, ``nbytes`` each way, result copied out."""
    import zmq

    return _RawPeer(_serve_raw, (), zmq.REQ, "raw echo", nbytes)


def _serve_floor(identity: str, port: int, ready: Any, stop: Any) -> None:
    import onnxruntime as ort
    import zmq

    session = ort.InferenceSession(identity, providers=["CPUExecutionProvider"])
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            peer, payload = sock.recv_multipart(copy=False)
            x = np.frombuffer(payload.buffer, np.float32).reshape(1, -1)
            (y,) = session.run(None, {"x": x})
            sock.send_multipart([peer, y], copy=False)
    sock.close(linger=0)
    context.term()


def _floor(identity: Path, nbytes: int) -> _RawPeer:
    """No Tandem code: raw DEALER here, raw ROUTER running the Identity in ONNX Runtime in another process."""
    import zmq

    return _RawPeer(_serve_floor, (str(identity),), zmq.DEALER, "floor server", nbytes)


def round_trips(
    identity: Path, iterations: int, batch: int = 50, *, nbytes: int = ONE_MIB
) -> tuple[list[float], list[float], list[float]]:
    """``EdgeAgent.infer`` through a cloud-only split to an Identity tail (batching off), and raw REQ/REP.

    Batches of the three alternate, so that drift in machine load hits them alike.
    Returns (agent seconds, raw seconds, floor seconds).
    """
    from tandem.edge_agent.agent import EdgeAgent
    from tandem.edge_agent.config import EdgeConfig
    from tandem.edge_agent.plan_view import AgentPlan, SplitOption
    from tandem.transport.config import ZmqConfig
    from tandem.transport.zmq_channel import ZmqClient

    with _HubProcess(identity, max_batch=1, delay_ms=0.0) as hub:
        split = SplitOption("s1", None, ("x",), edge_ms=0, cloud_ms=0, wire_bytes=nbytes)
        plan = AgentPlan("bench", 1, ("x",), ("y",), identity, (split,))
        hub_channel = ZmqConfig(address=f"tcp://127.0.0.1:{hub.port}")
        config = EdgeConfig(
            device_id="bench-edge",
            plan=identity.parent,
            codec="raw",
            channel=hub_channel,
            executor="onnxruntime",
            telemetry_interval_s=3600,
            probe_interval_s=3600,
            endpoint={"address": None},
        )
        channel = ZmqClient(address=hub_channel.address, device_id=config.device_id)
        x = np.random.default_rng(0).normal(size=(1, nbytes // 4)).astype(np.float32)
        raw, floor = _raw_echo(nbytes), _floor(identity, nbytes)
        agent_s: list[float] = []
        raw_s: list[float] = []
        floor_s: list[float] = []

        try:
            with EdgeAgent(config, plan, channel) as agent:

                def agent_round_trip() -> None:
                    result = agent.infer(x)
                    if result.source != "hub":
                        raise RuntimeError(f"round trip fell back: {result.reason}")

                series = ((agent_round_trip, agent_s), (raw.round_trip, raw_s), (floor.round_trip, floor_s))
                for fn, _ in series:
                    for _ in range(20):  # warm-up
                        fn()
                for _ in range(max(1, iterations // batch)):
                    for fn, times in series:
                        for _ in range(batch):
                            started = time.perf_counter()
                            fn()
                            times.append(time.perf_counter() - started)
        finally:
            raw.close()
            floor.close()
    return agent_s, raw_s, floor_s


def round_trip_row(work: Path, nbytes: int, iterations: int) -> dict[str, Any]:
    """Agent, raw REQ/REP and the floor at ``nbytes``, alternated in one run; p50s and the ratios."""
    identity = export_identity(work / f"identity-{nbytes}.onnx", nbytes)
    agent, raw, floor = round_trips(identity, iterations, nbytes=nbytes)
    raw_ms, agent_ms = 1000 * statistics.median(raw), 1000 * statistics.median(agent)
    floor_ms = 1000 * statistics.median(floor)
    print(f"   {_size(nbytes)} round trip: agent {agent_ms:.3f} ms vs raw REQ/REP {raw_ms:.3f} ms = "
          f"{agent_ms / raw_ms:.2f}x; floor (raw sockets + Identity in ONNX Runtime) {floor_ms:.3f} ms; "
          f"agent / floor = {agent_ms / floor_ms:.2f}x")  # fmt: skip
    return {
        "bytes": nbytes,
        "agent_p50_ms": round(agent_ms, 3),
        "agent_p99_ms": round(1000 * sorted(agent)[int(0.99 * len(agent))], 3),
        "raw_reqrep_p50_ms": round(raw_ms, 3),
        "ratio": round(agent_ms / raw_ms, 3),
        "floor_p50_ms": round(floor_ms, 3),
        "floor_ratio": round(floor_ms / raw_ms, 3),
        "agent_vs_floor": round(agent_ms / floor_ms, 3),
        "target_agent_vs_floor": TARGET_VS_FLOOR,
    }


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= ONE_MIB else f"{nbytes >> 10} KB"


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Both measurements, side by side with their baselines."""
    work = out_dir / "runtime-models"
    work.mkdir(parents=True, exist_ok=True)
    tail = export_tail(work / "tail.onnx")
    seconds = 3.0 if quick else 10.0
    rows = []
    gains = []  # at the most edges, off/on pairs repeat: the gain is their median
    for edges in EDGE_COUNTS:
        pairs = 3 if edges == EDGE_COUNTS[-1] and not quick else 1
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(pairs):
            for batching in (False, True):
                row = throughput(tail, edges, batching, seconds)
                runs[batching].append(row)
                print(f"   edges {edges:3d} batching {'on ' if batching else 'off'}: {row['throughput_per_s']:7.1f}/s "
                      f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms errors {row['errors']}")  # fmt: skip
            if edges == EDGE_COUNTS[-1]:
                gains.append(runs[True][-1]["throughput_per_s"] / runs[False][-1]["throughput_per_s"])
        for batching in (False, True):
            ordered = sorted(runs[batching], key=lambda r: r["throughput_per_s"])
            rows.append(ordered[len(ordered) // 2])  # the median run
    alone = onnxruntime_alone(tail, seconds)
    print(f"   the tail in ONNX Runtime alone: {alone['batch_1_per_s']}/s at batch 1, "
          f"{alone[f'batch_{MAX_BATCH}_per_s']}/s at batch {MAX_BATCH} ({alone['gain']}x)")  # fmt: skip
    iterations = 200 if quick else 2000
    _plot(rows, out_dir / "runtime_throughput.png")
    return {
        "throughput": rows,
        "batching_gain_at_64_edges": round(statistics.median(gains), 2),
        "batching_gain_at_64_edges_per_pair": [round(g, 2) for g in gains],
        "target_batching_gain": 1.3,
        "tail_in_onnxruntime_alone": alone,
        "round_trip_1mib": round_trip_row(work, ONE_MIB, iterations),
        "round_trip_16kb": round_trip_row(work, SIXTEEN_KB, iterations),
    }


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batching in (False, True):
        mine = [r for r in rows if r["batching"] == batching]
        ax.plot([r["edges"] for r in mine], [r["throughput_per_s"] for r in mine], marker="o",
                label="batching on" if batching else "batching off")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent edges")
    ax.set_ylabel("inferences / s")
    ax.set_title("Hub throughput (MobileNetV2 tail, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="hub throughput and the agent round trip against the floor")
    parser.add_argument("--round-trip", action="store_true", help="only the round trips (1 MiB and 16 KB)")
    parser.add_argument("--iterations", type=int, default=400)
    args = parser.parse_args()
    if args.round_trip:
        out = Path("build/bench_runtime")
        out.mkdir(parents=True, exist_ok=True)
        print(json.dumps([round_trip_row(out, n, args.iterations) for n in (ONE_MIB, SIXTEEN_KB)], indent=2))
    else:
        print(json.dumps(run(Path("benchmarks/results"), quick=True), indent=2))
