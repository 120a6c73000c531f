"""A fuzz campaign against real processes, with a good client alongside (tests/e2e/test_fuzz.py, bench_fuzz.py).

:class:`Campaign` starts `tandem hub` (ZeroMQ and MQTT channels, metrics on)
and `tandem edge` (its local endpoint on) on a plan; :meth:`Campaign.run`
measures a good client's quiet latency, then runs tests/fixtures/fuzz.py in
its own process while the good client goes on, and returns what a judge of
the run needs: fuzz tallies, the good client's p50/p99 before and during,
its wrong answers, the hub's RSS before and after, metrics series, liveness.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tandem.contracts.plan import load_plan
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.zmq_channel import ZmqClient
from tests.e2e.conftest import free_port
from tests.fixtures.fuzz import hub_split

TANDEM = [sys.executable, "-m", "tandem.cli"]
# Series of a hub whose senders are all known, plus per device label (max_devices, "other", "unidentified"):
# telemetry gauges (at most 64 names), last-seen, error and request counters (one per hub error code).
_QUIET_SERIES = 150
_PER_DEVICE_SERIES = 64 + 1 + 2 * 22


class Campaign:
    """A hub and an edge as processes on ``plan``, MQTT through the broker on ``mqtt_port``."""

    def __init__(self, plan: Path, mqtt_port: int, workdir: Path, *, max_devices: int = 20) -> None:
        self.plan = plan
        self.mqtt_port = mqtt_port
        self.workdir = workdir
        self.max_devices = max_devices
        self.hub_address = f"tcp://127.0.0.1:{free_port()}"
        self.endpoint_address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_port = 0

    def __enter__(self) -> Campaign:
        hub_config = {
            "plans": [str(self.plan)],
            "channels": [{"type": "zmq", "address": self.hub_address}, {"type": "mqtt", "port": self.mqtt_port}],
            "metrics": {"port": 0, "max_devices": self.max_devices},
        }
        hub_log = self._start("hub", hub_config, "metrics on")
        self.metrics_port = int(re.findall(r"metrics on http://[^:]+:(\d+)/metrics", hub_log)[0])
        edge_config = {
            "device_id": "cam-fuzz",
            "plan": str(self.plan),
            "codec": "raw",
            "channel": {"type": "zmq", "address": self.hub_address},
            "endpoint": {"address": self.endpoint_address, "workers": 2},
            "executor": "onnxruntime",
        }
        self._start("edge", edge_config, "local endpoint listening on")
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def _start(self, name: str, config: dict[str, Any], ready: str) -> str:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            self.processes[name] = subprocess.Popen(
                [*TANDEM, "--log-format", "json", name, "--config", str(path)], stdout=handle, stderr=handle,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while ready not in log.read_text(errors="replace"):
            assert self.processes[name].poll() is None, f"{name} exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{name} not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        return log.read_text(errors="replace")

    def run(self, counts: dict[str, int], *, rate: float, seed: int, quiet_s: float = 10.0) -> dict[str, Any]:
        """Quiet phase, then the fuzz process with the good client alongside; the figures (module docstring)."""
        good = GoodClient(self.hub_address, self.plan)
        good.start()
        time.sleep(quiet_s)
        quiet = good.mark()
        rss_before, series_before = self._rss("hub"), self._series()
        out = self.workdir / "fuzz.json"
        command = [
            sys.executable, "-m", "tests.fixtures.fuzz", "--plan", str(self.plan), "--seed", str(seed),
            "--rate", str(rate), "--out", str(out),
            "--zmq", self.hub_address, "--zmq-count", str(counts.get("zmq", 0)),
            "--mqtt-port", str(self.mqtt_port), "--mqtt-count", str(counts.get("mqtt", 0)),
            "--endpoint", self.endpoint_address, "--endpoint-count", str(counts.get("endpoint", 0)),
        ]  # fmt: skip
        started = time.monotonic()
        fuzz = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        fuzz_s = time.monotonic() - started
        during = good.mark()
        good.stop()
        assert fuzz.returncode == 0, fuzz.stderr[-3000:]
        series_after = self._series()
        return {
            "fuzz": json.loads(out.read_text()),
            "fuzz_seconds": round(fuzz_s, 1),
            "good_client": {
                "quiet": quiet,
                "during": during,
                "wrong_answers": good.wrong,
                "errors": good.errors,
                "error_codes": sorted(good.error_codes),
            },
            "hub_rss_before": rss_before,
            "hub_rss_after": self._rss("hub"),
            "series_before": series_before,
            "series_after": series_after,
            "series_bound": _QUIET_SERIES + (self.max_devices + 2) * _PER_DEVICE_SERIES,
            "hub_alive": self.processes["hub"].poll() is None,
            "edge_alive": self.processes["edge"].poll() is None,
            "endpoint_answers_after": self._endpoint_answers(),
            "hub_log_bytes": (self.workdir / "hub.log").stat().st_size,
            "hub_log_lines_not_json": _not_json(self.workdir / "hub.log"),
            "edge_log_lines_not_json": _not_json(self.workdir / "edge.log"),
            "edge_log_bytes": (self.workdir / "edge.log").stat().st_size,
        }

    def _rss(self, name: str) -> int:
        status = Path(f"/proc/{self.processes[name].pid}/status").read_text()
        return int(re.findall(r"VmRSS:\s+(\d+) kB", status)[0]) * 1024

    def _series(self) -> int:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    def _endpoint_answers(self) -> bool:
        from tandem.edge_agent.endpoint import LocalClient

        plan = load_plan(self.plan, verify=False)
        inputs = {t.name: np.zeros(t.shape, t.dtype) for t in plan.model.inputs}
        client = LocalClient(self.endpoint_address, timeout_s=30)
        try:
            outputs, _meta = client.infer(inputs)
        finally:
            client.close()
        return bool(outputs) and all(np.isfinite(v).all() for v in outputs.values())


def _not_json(log: Path) -> list[str]:
    """Lines of a ``--log-format json`` log that are not one JSON object with a timestamp and a level."""
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            ok = isinstance(entry, dict) and {"ts", "level", "message"} <= set(entry)
        except ValueError:
            ok = False
        if not ok:
            bad.append(line[:200])
    return bad[:10]


class GoodClient:
    """Asks the hub for one split at a steady pace; keeps latencies per phase and checks every answer."""

    def __init__(self, address: str, plan_dir: Path, *, interval_s: float = 0.05) -> None:
        plan = load_plan(plan_dir, verify=False)
        split = hub_split(plan)
        rng = np.random.default_rng(5)
        self.crossing = {t.name: np.maximum(rng.normal(size=t.shape), 0).astype(t.dtype) for t in split.crossing}
        self.ids = {"device_id": "cam-good", "plan_id": plan.plan_id, "plan_version": plan.version,
                    "split_id": split.id}  # fmt: skip
        self.address = address
        self.interval_s = interval_s
        self.latencies: list[float] = []
        self.reference: dict[str, np.ndarray] | None = None
        self.wrong = 0
        self.errors = 0
        self.error_codes: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="good-client", daemon=True)

    def start(self) -> None:
        """Start asking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop asking."""
        self._stop.set()
        self._thread.join(timeout=60)

    def mark(self) -> dict[str, float]:
        """p50/p99/count of the latencies since the last mark, ms."""
        with self._lock:
            taken, self.latencies = self.latencies, []
        if not taken:
            return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0}
        values = np.array(taken) * 1000
        return {"count": len(taken), "p50_ms": round(float(np.percentile(values, 50)), 2),
                "p99_ms": round(float(np.percentile(values, 99)), 2)}  # fmt: skip

    def _loop(self) -> None:
        with ZmqClient(address=self.address, device_id="cam-good") as channel:
            next_at = time.monotonic()
            while not self._stop.is_set():
                request = Envelope.with_arrays(Kind.ACTIVATION, self.crossing, **self.ids)
                started = time.perf_counter()
                channel.send(request)
                reply = channel.recv(timeout=30)
                elapsed = time.perf_counter() - started
                self._check(request, reply, elapsed)
                next_at += self.interval_s
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _check(self, request: Envelope, reply: Envelope, elapsed: float) -> None:
        if reply.request_id != request.request_id or reply.kind is not Kind.RESULT:
            self.errors += 1
            self.error_codes.add(str(reply.meta.get("code", reply.kind.value)))
            return
        outputs = reply.arrays()
        if self.reference is None:
            self.reference = {k: v.copy() for k, v in outputs.items()}
        elif any(not np.allclose(outputs[k], v, rtol=1e-4, atol=1e-5) for k, v in self.reference.items()):
            self.wrong += 1
        with self._lock:
            self.latencies.append(elapsed)
