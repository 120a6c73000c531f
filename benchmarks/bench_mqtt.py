"""MQTT channel throughput against raw paho, side by side through one Mosquitto broker.

For QoS 0 and QoS 1, ``count`` messages of ~100 KB go from a publisher to a
subscriber on 127.0.0.1, both in this process:

- ``raw``: a paho client publishes 100,000-byte payloads; another paho client
  counts them in ``on_message``.
- ``raw_handoff_unpack``: the same with the packed envelope as payload, handed
  through a queue to a consumer thread that ``unpack`` it: what any raw-paho
  consumer that validates messages in its own thread does. ``tandem`` against
  this one is the cost of the channel itself.
- ``tandem``: an :class:`~tandem.transport.mqtt_channel.MqttClient` sends an
  ACTIVATION envelope holding a 100,000-byte raw float32 tensor; an
  :class:`~tandem.transport.mqtt_channel.MqttServer` validates it and hands it to a
  handler through :func:`~tandem.transport.serve.receive_forever`, as the hub and the
  agent receive (on paho's network thread: no hand-off).
- ``tandem_recv``: the same, consumed by a thread looping on ``recv()`` (one
  queue hand-off, as ``raw_handoff_unpack``).

Rate = messages received / (last receive - first publish). Each series runs
``repeats`` times, the three alternating, after one untimed warm-up; the
medians are reported with ``ratio = tandem / raw`` (target >= 0.9). Both ends
share this process, so the run is CPU-bound under the GIL; the process CPU
time per message is reported too (steadier than rates on a busy machine), with
the single-thread cost of ``pack`` and ``unpack`` (the envelope work the
channel adds on top of paho) for comparison. The broker runs with
``max_queued_messages 0`` so that a QoS 0 subscriber that falls behind is
queued for rather than dropped; losses would show in ``received_of_sent``.

    python -m benchmarks.bench_mqtt [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import statistics
import tempfile
import threading
import time
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tqdm import tqdm

from tandem.transport.envelope import Envelope, Kind, pack, unpack
from tandem.transport.errors import ChannelTimeout, ProtocolError
from tandem.transport.mqtt_channel import MqttClient, MqttServer
from tandem.transport.serve import receive_forever
from tests.fixtures.broker import Mosquitto, find_mosquitto

PAYLOAD_BYTES = 100_000
IDLE_TIMEOUT_S = 10.0
TARGET_RATIO = 0.9

_log = logging.getLogger("tandem.bench.mqtt")


@dataclass
class Measurement:
    """One timed run: how many arrived, and how fast."""

    sent: int
    received: int
    seconds: float
    cpu_seconds: float
    payload_bytes: int

    @property
    def msgs_per_s(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_seconds / self.received * 1e6 if self.received else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.msgs_per_s * self.payload_bytes / 1e6


def _paho_client(broker: Mosquitto, name: str) -> tuple[paho.Client, threading.Event]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"paho client {name} got no CONNACK from {broker}")
    return client, connected


def _stop(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


def measure_raw(broker: Mosquitto, qos: int, count: int, *, handoff: bool = False) -> Measurement:
    """Raw paho: publish ``count`` payloads, count them at a subscriber.

    Plain: 100,000-byte payloads counted in ``on_message``. With ``handoff``: the packed benchmark envelope,
    passed through a queue to a consumer thread that ``unpack`` it, as a validating raw-paho consumer would.
    """
    payload = pack(_bench_envelope()) if handoff else np.random.default_rng(0).bytes(PAYLOAD_BYTES)
    topic = f"bench/raw/qos{qos}"
    received = 0
    last = 0.0
    done = threading.Event()
    subscribed = threading.Event()
    inbox: queue.SimpleQueue[bytes | bytearray] = queue.SimpleQueue()

    def count_one() -> None:
        nonlocal received, last
        received += 1
        last = time.perf_counter()
        if received == count:
            done.set()

    def consume() -> None:
        while received < count:
            try:
                unpack(inbox.get(timeout=IDLE_TIMEOUT_S))
            except queue.Empty:
                return
            count_one()

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if handoff:
            inbox.put(message.payload)
        else:
            count_one()

    consumer = threading.Thread(target=consume, name="bench-raw-consumer", daemon=True)
    if handoff:
        consumer.start()
    subscriber, _ = _paho_client(broker, f"bench-raw-sub-{qos}")
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe(topic, qos=qos)
    publisher, _ = _paho_client(broker, f"bench-raw-pub-{qos}")
    try:
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {topic}")
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(count):
            publisher.publish(topic, payload, qos)
        _wait_for(done, lambda: received)
        cpu = time.process_time() - cpu
    finally:
        _stop(publisher)
        _stop(subscriber)
        if handoff:
            consumer.join(IDLE_TIMEOUT_S)
    return Measurement(count, received, last - start, cpu, len(payload))


def measure_tandem(broker: Mosquitto, qos: int, count: int, *, pull: bool = False) -> Measurement:
    """MqttClient.send -> MqttServer of ACTIVATION envelopes with a ~100 KB raw tensor.

    Received through ``receive_forever`` (pushed on paho's thread), or with ``pull`` by a thread looping on ``recv``.
    """
    envelope = _bench_envelope()
    received = 0
    last = 0.0
    done = threading.Event()
    stop = threading.Event()
    hub = MqttServer(port=broker.port, session_expiry_s=0)
    edge = MqttClient(device_id="bench-edge", port=broker.port, session_expiry_s=0, qos={Kind.ACTIVATION: qos})

    def count_one(_: Envelope) -> None:
        nonlocal received, last
        received += 1
        last = time.perf_counter()
        if received == count:
            done.set()

    def receive() -> None:
        if not pull:
            receive_forever(hub, stop, on_message=count_one, on_rejected=_refuse, logger=_log)
            return
        try:
            while received < count:
                count_one(hub.recv(timeout=IDLE_TIMEOUT_S))
        except ChannelTimeout:
            pass
        done.set()

    receiver = threading.Thread(target=receive, name="bench-hub-recv", daemon=True)
    receiver.start()
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        for _ in range(count):
            edge.send(envelope)
        _wait_for(done, lambda: received)
        cpu = time.process_time() - cpu
    finally:
        stop.set()
        edge.close()
        hub.close()
        receiver.join(IDLE_TIMEOUT_S)
    return Measurement(count, received, last - start, cpu, len(pack(envelope)))


def _refuse(exc: ProtocolError) -> None:
    raise RuntimeError(f"the benchmark's own message was refused: {exc}")


def _bench_envelope() -> Envelope:
    tensor = np.random.default_rng(0).standard_normal(PAYLOAD_BYTES // 4).astype(np.float32)
    return Envelope.with_arrays(Kind.ACTIVATION, {"x": tensor}, plan_id="bench", split_id="s1", device_id="bench-edge")


def envelope_costs_us() -> dict[str, float]:
    """Single-thread microseconds per call of pack and unpack on the benchmark's envelope (best of 5)."""
    envelope = _bench_envelope()
    packed = pack(envelope)
    number = 2000
    return {
        "pack": min(timeit.repeat(lambda: pack(envelope), number=number, repeat=5)) / number * 1e6,
        "unpack": min(timeit.repeat(lambda: unpack(packed), number=number, repeat=5)) / number * 1e6,
    }


def _wait_for(done: threading.Event, progress: Any) -> None:
    """Wait until ``done``, or until ``progress()`` stops moving for IDLE_TIMEOUT_S (messages were lost)."""
    seen = -1
    while not done.wait(IDLE_TIMEOUT_S):
        now = progress()
        if now == seen:
            return
        seen = now


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Measure raw paho and the Tandem MQTT channel at QoS 0 and 1; the JSON-ready results."""
    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("bench_mqtt needs a mosquitto binary (sudo apt-get install -y mosquitto)")
    count = 300 if quick else 2000
    repeats = 1 if quick else 5
    results: dict[str, Any] = {
        "benchmark": "mqtt",
        "payload_bytes": PAYLOAD_BYTES,
        "messages_per_run": count,
        "repeats": repeats,
        "target_ratio": TARGET_RATIO,
        "qos": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as workdir:
        broker = Mosquitto(Path(workdir), binary=binary, max_queued_messages=0)
        with broker:
            print(f"bench_mqtt: broker {broker}; {count} x {PAYLOAD_BYTES} B per run, {repeats} run(s) each")
            steps = tqdm(total=2 * 4 * repeats, desc="bench_mqtt", unit="run")
            for qos in (0, 1):
                measure_raw(broker, qos, count // 10)  # warm-up: imports, first-call costs, broker buffers
                measure_tandem(broker, qos, count // 10)
                runs: dict[str, list[Measurement]] = {
                    name: [] for name in ("raw", "raw_handoff_unpack", "tandem", "tandem_recv")
                }
                for _ in range(repeats):
                    runs["raw"].append(measure_raw(broker, qos, count))
                    steps.update()
                    runs["raw_handoff_unpack"].append(measure_raw(broker, qos, count, handoff=True))
                    steps.update()
                    runs["tandem"].append(measure_tandem(broker, qos, count))
                    steps.update()
                    runs["tandem_recv"].append(measure_tandem(broker, qos, count, pull=True))
                    steps.update()
                results["qos"][str(qos)] = _summarise(runs)
            steps.close()
    results["envelope_costs_us"] = envelope_costs_us()
    for qos, summary in results["qos"].items():
        print(
            f"bench_mqtt QoS {qos}: raw paho {summary['raw']['msgs_per_s']:.0f} msg/s "
            f"({summary['raw']['cpu_us_per_msg']:.0f} us CPU/msg), tandem {summary['tandem']['msgs_per_s']:.0f} msg/s "
            f"({summary['tandem']['cpu_us_per_msg']:.0f} us CPU/msg), ratio {summary['ratio']:.2f} "
            f"(target >= {TARGET_RATIO}: {'met' if summary['meets_target'] else 'NOT met'}); raw paho + queue + "
            f"unpack {summary['raw_handoff_unpack']['msgs_per_s']:.0f} msg/s "
            f"({summary['raw_handoff_unpack']['cpu_us_per_msg']:.0f} us CPU/msg), tandem/that "
            f"{summary['ratio_vs_raw_handoff_unpack']:.2f}; tandem through recv() "
            f"{summary['tandem_recv']['msgs_per_s']:.0f} msg/s, ratio {summary['ratio_recv']:.2f}"
        )
    costs = results["envelope_costs_us"]
    print(f"bench_mqtt: envelope work per message, one thread: pack {costs['pack']:.0f} us, "
          f"unpack {costs['unpack']:.0f} us")  # fmt: skip
    return results


def _summarise(runs: dict[str, list[Measurement]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, measurements in runs.items():
        summary[name] = {
            "msgs_per_s": statistics.median(m.msgs_per_s for m in measurements),
            "best_msgs_per_s": max(m.msgs_per_s for m in measurements),
            "mb_per_s": statistics.median(m.mb_per_s for m in measurements),
            "cpu_us_per_msg": statistics.median(m.cpu_us_per_msg for m in measurements),
            "received_of_sent": [f"{m.received}/{m.sent}" for m in measurements],
            "runs": [asdict(m) | {"msgs_per_s": m.msgs_per_s} for m in measurements],
        }
    summary["ratio"] = summary["tandem"]["msgs_per_s"] / summary["raw"]["msgs_per_s"]
    summary["cpu_ratio"] = summary["raw"]["cpu_us_per_msg"] / summary["tandem"]["cpu_us_per_msg"]
    summary["ratio_vs_raw_handoff_unpack"] = (
        summary["tandem"]["msgs_per_s"] / summary["raw_handoff_unpack"]["msgs_per_s"]
    )
    summary["ratio_recv"] = summary["tandem_recv"]["msgs_per_s"] / summary["raw"]["msgs_per_s"]
    summary["meets_target"] = summary["ratio"] >= TARGET_RATIO
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, one run each")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(json.dumps(run(args.out_dir, args.quick), indent=2))
