"""Data sync throughput: records/s from the edge outbox to the hub store through Mosquitto at QoS 1; the outbox on disk.

End to end (``end_to_end``): inference records (~200 bytes of msgpack each; in
the ``mixed`` series every 10th answer also stores its input, a 3x32x32 float32
sample) go into an :class:`~tandem.edge_agent.outbox.Outbox`, and
:class:`~tandem.edge_agent.sync.EdgeSync` drains it through a local Mosquitto at QoS 1
to a :class:`~tandem.cloud_hub.sync.HubSync` in another process (its own GIL, as in a
deployment), which stores them (``synchronous=full``: every acknowledged batch
is fsynced). ``live``: a producer writes as fast as it can while the sync runs;
rate = entries / (first outbox write -> last entry committed in the hub's
store). ``backlog``: the outbox is filled first (a link that was down), then
the sync starts; rate = entries / (start -> last entry committed). Each series runs on the broker as
shipped and with ``set_tcp_nodelay true`` (what docs/scaling.md recommends),
side by side. The baseline is raw paho at QoS 1 moving the same bytes (200-record
messages) from one client to another on the same broker, with no outbox,
acknowledgement or store: the ceiling the transport sets.

Outbox (``outbox``): single-entry ``put`` (one transaction each), batched
``put_many`` (100 per transaction) and drains (``peek`` 200 + ``ack``) per
second, with ``synchronous=normal`` (the default) and ``full``, beside plain
sqlite3 inserting the same rows into a bare WAL table (one commit each).

    python -m benchmarks.bench_sync [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from tqdm import tqdm

from tests.fixtures.broker import Mosquitto, find_mosquitto

RECORD = {"request_id": "0" * 32, "time": 1.7e9, "plan_id": "resnet18-3f2a", "plan_version": 7, "split": "layer2",
          "source": "hub", "degraded": False, "latency_ms": 23.512, "reason": "",
          "top": {"output": "logits", "index": 281, "confidence": 0.8731}}  # fmt: skip


class _NoDelayMosquitto(Mosquitto):
    """The broker with ``set_tcp_nodelay true``."""

    def config_text(self) -> str:
        return super().config_text() + "set_tcp_nodelay true\n"


def _record(i: int) -> bytes:
    return msgpack.packb({**RECORD, "request_id": f"{i:032d}"}, use_bin_type=True)


# -- outbox on disk ---------------------------------------------------------------------------------------------------


def _outbox_rates(folder: Path, synchronous: str, count: int) -> dict[str, float]:
    from tandem.edge_agent.outbox import Outbox

    bodies = [_record(i) for i in range(count)]
    with Outbox(folder / f"single-{synchronous}.sqlite", device_id="bench", synchronous=synchronous) as outbox:  # type: ignore[arg-type]
        started = time.perf_counter()
        for body in bodies:
            outbox.put("record", body)
        single = count / (time.perf_counter() - started)
        started = time.perf_counter()
        drained = 0
        while entries := outbox.peek(limit=200):
            outbox.ack([e.record_id for e in entries])
            drained += len(entries)
        drains = drained / (time.perf_counter() - started)
    with Outbox(folder / f"batch-{synchronous}.sqlite", device_id="bench", synchronous=synchronous) as outbox:  # type: ignore[arg-type]
        started = time.perf_counter()
        for start in range(0, count, 100):
            outbox.put_many([("record", body) for body in bodies[start : start + 100]])
        batched = count / (time.perf_counter() - started)
    return {"put_per_s": round(single), "put_many_100_per_s": round(batched), "drain_per_s": round(drains)}


def _sqlite_baseline(folder: Path, count: int) -> float:
    bodies = [_record(i) for i in range(count)]
    db = sqlite3.connect(folder / "baseline.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, created REAL, size INT, b BLOB)")
        started = time.perf_counter()
        for body in bodies:
            db.execute("BEGIN")
            db.execute("INSERT INTO t (kind, created, size, b) VALUES (?, ?, ?, ?)", ("record", 0.0, len(body), body))
            db.execute("COMMIT")
        return count / (time.perf_counter() - started)
    finally:
        db.close()


# -- end to end -------------------------------------------------------------------------------------------------------


def _hub_process(port: int, store_path: str, ready: Any, stop: Any) -> None:
    import logging

    from tandem.cloud_hub.store import SqliteStore
    from tandem.cloud_hub.sync import HubSync, open_hub_sync_channel
    from tandem.cloud_hub.sync_config import HubSyncConfig
    from tandem.transport.config import MqttConfig

    logging.basicConfig(level=logging.WARNING)
    config = HubSyncConfig(replica_id="bench", mqtt=MqttConfig(port=port))
    store = SqliteStore(store_path, synchronous="full")
    hub = HubSync(config, store, channel=open_hub_sync_channel(config))
    hub.start()
    ready.set()
    stop.wait()
    hub.stop()
    store.close()


def _end_to_end(broker: Mosquitto, folder: Path, count: int, *, mixed: bool, backlog: bool) -> dict[str, float]:
    from tandem.cloud_hub.store import SqliteStore
    from tandem.edge_agent.outbox import Outbox
    from tandem.edge_agent.sync import EdgeSync, open_sync_channel
    from tandem.edge_agent.sync_config import EdgeSyncConfig
    from tandem.transport.config import MqttConfig
    from tandem.transport.envelope import Envelope, Kind, pack

    folder.mkdir(parents=True)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    hub = context.Process(target=_hub_process, args=(broker.port, str(folder / "store"), ready, stop), daemon=True)
    hub.start()
    if not ready.wait(60):
        raise RuntimeError("the hub process did not start")
    config = EdgeSyncConfig(mqtt=MqttConfig(port=broker.port), model="bench", plans_dir=folder / "plans",
                            telemetry_interval_s=3600, status_interval_s=3600)  # fmt: skip
    outbox = Outbox(folder / "outbox.sqlite", device_id="bench")
    sample = pack(Envelope.with_arrays(Kind.SAMPLE, {"x": np.ones((1, 3, 32, 32), np.float32)}, device_id="bench"))
    entries = count + (count // 10 if mixed else 0)
    store = None
    sync = EdgeSync(config, outbox, open_sync_channel(config, "bench"), device_id="bench")
    try:
        if not backlog:
            sync.start()
        started = time.perf_counter()
        for i in range(count):
            outbox.put("record", _record(i))
            if mixed and i % 10 == 9:
                outbox.put("sample", sample)
        written = time.perf_counter() - started
        if backlog:
            started = time.perf_counter()
            sync.start()
        while store is None:
            try:
                store = SqliteStore(folder / "store", readonly=True)
            except Exception:  # the hub has not created its tables yet
                time.sleep(0.01)
        deadline = time.monotonic() + 300
        while store.count() < entries:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {store.count()} of {entries} entries arrived")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        sync.stop()
        outbox.close()
        if store is not None:
            store.close()
        stop.set()
        hub.join(30)
    return {"entries": entries, "seconds": round(elapsed, 3), "entries_per_s": round(entries / elapsed),
            "outbox_write_per_s": round(entries / written), "batches": sync.counters["batches_sent"],
            "resent": sync.counters["batches_resent"]}  # fmt: skip


def _raw_paho(broker: Mosquitto, count: int) -> float:
    """Records/s when paho moves 200-record messages at QoS 1 from one client to another, nothing else."""
    payload = b"".join(_record(i) for i in range(200))
    messages = max(1, count // 200)
    got = threading.Event()
    received = [0]

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        received[0] += 1
        if received[0] == messages:
            got.set()

    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *args: subscribed.set()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    for client in (sub, pub):
        client.connect(broker.host, broker.port)
        client.loop_start()
    try:
        sub.subscribe("bench/raw", qos=1)
        subscribed.wait(10)
        started = time.perf_counter()
        for _ in range(messages):
            pub.publish("bench/raw", payload, qos=1)
        got.wait(120)
        return messages * 200 / (time.perf_counter() - started)
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Measure; see the module docstring. Returns the figures (the runner writes them as JSON)."""
    if find_mosquitto() is None:
        raise RuntimeError("bench_sync needs the mosquitto binary (sudo apt-get install -y mosquitto)")
    count = 3000 if quick else 20000
    repeats = 1 if quick else 3
    results: dict[str, Any] = {"records": count, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        root = Path(tmp)
        outbox: dict[str, Any] = {}
        for synchronous, n in (("normal", count), ("full", min(count, 1000 if quick else 3000))):
            runs = [_outbox_rates(_fresh(root / f"ob-{synchronous}-{r}"), synchronous, n) for r in range(repeats)]
            outbox[synchronous] = {key: round(statistics.median(run[key] for run in runs)) for key in runs[0]}
        outbox["sqlite_baseline_insert_per_s"] = round(
            statistics.median(_sqlite_baseline(_fresh(root / f"base-{r}"), count) for r in range(repeats))
        )
        baseline = outbox["sqlite_baseline_insert_per_s"]
        outbox["put_vs_sqlite_baseline"] = round(outbox["normal"]["put_per_s"] / baseline, 3)
        results["outbox"] = outbox
        print(f"outbox: {json.dumps(outbox)}", flush=True)
        end_to_end: dict[str, Any] = {}
        brokers = (("default_broker", Mosquitto), ("nodelay_broker", _NoDelayMosquitto))
        series = [(name, cls, mode, mixed) for name, cls in brokers for mode in ("live", "backlog")
                  for mixed in (False, True)]  # fmt: skip
        for name, broker_cls, mode, mixed in tqdm(series, desc="end to end", unit="series"):
            key = f"{name}_{mode}_{'mixed' if mixed else 'records'}"
            with broker_cls(root / f"broker-{key}") as broker:
                runs = [_end_to_end(broker, root / f"e2e-{key}-{r}", count, mixed=mixed, backlog=mode == "backlog")
                        for r in range(repeats)]  # fmt: skip
                best = sorted(runs, key=lambda run: run["entries_per_s"])[len(runs) // 2]
                if not mixed and mode == "live":
                    best["raw_paho_qos1_records_per_s"] = round(_raw_paho(broker, count))
                    best["ratio_to_raw_paho"] = round(best["entries_per_s"] / best["raw_paho_qos1_records_per_s"], 3)
                end_to_end[key] = best
                print(f"{key}: {json.dumps(best)}", flush=True)
        results["end_to_end"] = end_to_end
    return results


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def main() -> None:
    """Run standalone and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(Path("benchmarks/results"), args.quick), indent=2))


if __name__ == "__main__":
    main()
