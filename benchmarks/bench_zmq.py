"""ZeroMQ channel overhead: a 1 MiB fp32 activation round trip, Tandem vs raw pyzmq.

Side by side, over TCP loopback: Tandem's :class:`~tandem.transport.zmq_channel.ZmqClient`
sends a raw-codec ACTIVATION envelope to a :class:`~tandem.transport.zmq_channel.ZmqServer`
that echoes the tensor back in a RESULT; the baseline sends the same bytes over
a plain REQ/REP pair (``copy=False`` both ways). Each echo server runs in its
own process, as a hub does, so the two ends never share a GIL. Both client
sides turn the reply back into a numpy array. Batches of the two alternate so
that drift in machine load hits both. Target: Tandem's median round trip
<= 1.2x the raw one.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from tqdm import tqdm

from tandem.transport.envelope import Envelope, Kind, decode, encode
from tandem.transport.errors import ChannelTimeout
from tandem.transport.zmq_channel import ZmqClient, ZmqServer

TARGET_RATIO = 1.2
SHAPE = (1, 256, 32, 32)  # 262144 fp32 values = 1 MiB


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def _summary(samples_s: list[float]) -> dict[str, float]:
    us = [s * 1e6 for s in samples_s]
    return {
        "median_us": round(statistics.median(us), 1),
        "p99_us": round(_percentile(us, 99), 1),
        "mean_us": round(statistics.fmean(us), 1),
        "min_us": round(min(us), 1),
        "iterations": len(us),
    }


def _tandem_echo(addresses: Any) -> None:
    """Child process: a ZmqServer answering every envelope with its own tensors."""
    server = ZmqServer(address="tcp://127.0.0.1:*")
    addresses.put(server.address)
    while True:
        try:
            envelope = server.recv(timeout=1.0)
        except ChannelTimeout:
            continue
        reply = Envelope(
            Kind.RESULT, envelope.request_id, envelope.device_id, tensors=envelope.tensors, frames=envelope.frames
        )
        server.send(reply, to=envelope.sender)


def _raw_echo(addresses: Any) -> None:
    """Child process: a REP socket sending every message straight back, zero-copy."""
    context = zmq.Context(io_threads=1)
    rep = context.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    addresses.put(f"tcp://127.0.0.1:{port}")
    while True:
        rep.send(rep.recv(copy=False), copy=False)


def _start(target: Callable[[Any], None]) -> tuple[BaseProcess, str]:
    context = multiprocessing.get_context("spawn")
    addresses = context.Queue()
    process = context.Process(target=target, args=(addresses,), name=target.__name__, daemon=True)
    process.start()
    return process, addresses.get(timeout=60)


class _TandemPair:
    """ZmqClient here -> ZmqServer echo in a child process -> ZmqClient."""

    def __init__(self, array: np.ndarray) -> None:
        self.process, address = _start(_tandem_echo)
        self.client = ZmqClient(address=address, device_id="bench")
        self.request = Envelope.with_arrays(Kind.ACTIVATION, {"x": array}, device_id="bench")

    def round_trip(self) -> np.ndarray:
        self.client.send(self.request)
        return self.client.recv(timeout=10.0).arrays()["x"]

    def close(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.join()


class _RawPair:
    """The baseline: REQ here -> REP echo in a child process -> REQ, the tensor's bytes zero-copy."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.payload = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        self.process, address = _start(_raw_echo)
        self._context = zmq.Context(io_threads=1)
        self.req = self._context.socket(zmq.REQ)
        self.req.connect(address)

    def round_trip(self) -> np.ndarray:
        self.req.send(self.payload, copy=False)
        frame = self.req.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=self._array.dtype).reshape(self._array.shape)

    def close(self) -> None:
        self.req.close(linger=0)
        self._context.term()
        self.process.kill()
        self.process.join()


def _timed(round_trip: Callable[[], np.ndarray], n: int, samples: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - start)


def _envelope_costs(array: np.ndarray, n: int) -> dict[str, float]:
    """Single-threaded cost of the Python work a Tandem round trip adds to the raw one (each runs twice)."""
    request = Envelope.with_arrays(Kind.ACTIVATION, {"x": array})
    frames = [memoryview(bytes(frame)) for frame in encode(request)]
    received = decode(frames)

    def per_call_us(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - start) / n * 1e6, 1)

    return {
        "encode_us": per_call_us(lambda: encode(request)),
        "decode_us": per_call_us(lambda: decode(frames)),
        "arrays_us": per_call_us(received.arrays),
    }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Measure both round trips side by side; return medians, p99s and the ratio."""
    iterations, warmup, batch = (400, 100, 50) if quick else (4000, 300, 100)
    array = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    tandem = _TandemPair(array)
    raw: _RawPair | None = None
    try:
        raw = _RawPair(array)
        if not np.array_equal(tandem.round_trip(), array) or not np.array_equal(raw.round_trip(), array):
            raise RuntimeError("the echo returned different bytes")
        _timed(tandem.round_trip, warmup, [])
        _timed(raw.round_trip, warmup, [])
        tandem_s: list[float] = []
        raw_s: list[float] = []
        with tqdm(total=2 * iterations, desc="zmq round trips", unit="msg") as progress:
            for _ in range(iterations // batch):
                _timed(tandem.round_trip, batch, tandem_s)
                _timed(raw.round_trip, batch, raw_s)
                progress.update(2 * batch)
    finally:
        tandem.close()
        if raw is not None:
            raw.close()
    costs = _envelope_costs(array, 500 if quick else 5000)
    ours, baseline = _summary(tandem_s), _summary(raw_s)
    ratio = ours["median_us"] / baseline["median_us"]
    return {
        "benchmark": "zmq_round_trip",
        "payload_bytes": int(array.nbytes),
        "shape": list(SHAPE),
        "dtype": "float32",
        "codec": "raw",
        "topology": "client in this process, each echo server in its own process, TCP loopback",
        "quick": quick,
        "tandem_zmq": ours,
        "raw_pyzmq_req_rep": baseline,
        "ratio_median": round(ratio, 3),
        "ratio_p99": round(ours["p99_us"] / baseline["p99_us"], 3),
        "envelope_costs": costs,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.quick), indent=2))
