"""The hub's /healthz and /readyz: 503 with the reason while plans load, 200 once channels listen, 503 draining.

The plan loader is held on an event, so "still loading" is a state the test
holds open, not a race it hopes to win on a fast machine.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tandem.cloud_hub.plans as plans_module
from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.runtime import HubRuntime
from tandem.executors import open_executor
from tests.fixtures.broker import free_port
from tests.integration.test_hub import activation, ask, client, tail_model


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_follow_the_hub_from_loading_to_serving_to_draining(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = tail_model(tmp_path / "cloud.onnx")
    release = threading.Event()

    def held_loader(plan_dir: Path, executor: Any) -> list[Tail]:
        assert release.wait(30)
        return [Tail("toy", 1, "s1", open_executor("onnxruntime", cloud))]

    monkeypatch.setattr(plans_module, "load_tails", held_loader)
    port = free_port()
    config = HubConfig(plans=[tmp_path], channels=[{"type": "zmq", "address": "tcp://127.0.0.1:*"}],
                       metrics={"port": port})  # fmt: skip
    built: list[HubRuntime] = []
    builder = threading.Thread(target=lambda: built.append(HubRuntime(config, probes_first=True)))
    builder.start()
    try:
        status, body = 0, ""
        for _ in range(500):  # the port opens first thing; poll until it answers
            try:
                status, body = get(port, "/readyz")
                break
            except OSError:
                threading.Event().wait(0.01)
        assert status == 503 and json.loads(body)["reason"] == "loading plans", body
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nope")[0] == 404
        release.set()
        builder.join(30)
        runtime = built[0]
        assert get(port, "/readyz")[0] == 503  # loaded, channels not open yet
        runtime.start()
        try:
            status, body = get(port, "/readyz")
            assert status == 200 and json.loads(body)["plans"] == {"toy": {"1": ["s1"]}}, body
            assert "tandem_hub_requests" in get(port, "/metrics")[1]
            with client(runtime.hub, "cam-1") as edge:
                assert ask(edge, activation(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))).meta.get(
                    "timing"
                )
            runtime.hub.drain(0.0)  # no grace: it only changes state here
            status, body = get(port, "/readyz")
            assert status == 503 and json.loads(body)["reason"].startswith("draining"), body
        finally:
            runtime.stop()
    finally:
        release.set()
        builder.join(30)


def test_a_busy_metrics_port_fails_before_the_plans_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tandem.cloud_hub.metrics import MetricsError

    def never(plan_dir: Path, executor: Any) -> list[Tail]:
        raise AssertionError("plans must not load when the metrics port cannot open")

    monkeypatch.setattr(plans_module, "load_tails", never)
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = HubConfig(plans=[tmp_path], metrics={"port": port})
        with pytest.raises(MetricsError, match=rf"metrics.port {port}: cannot listen on 127.0.0.1:{port}"):
            HubRuntime(config, probes_first=True)
