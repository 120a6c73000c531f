"""Activations over MQTT through Mosquitto, with data sync beside them on the same broker.

The agent and the hub switch to MQTT in config (``channel: {type: mqtt}``);
split inference then goes through the broker. Each answer is recorded by the
agent's ``on_result`` hook into the outbox, and EdgeSync/HubSync carry the
records on topics of their own, so the two kinds of traffic never mix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import HubConfig, MetricsConfig
from tandem.cloud_hub.server import Hub
from tandem.cloud_hub.store import SqliteStore
from tandem.edge_agent.agent import EdgeAgent
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.sampling import InferenceRecorder
from tandem.edge_agent.sync_config import SamplingConfig
from tandem.executors import open_executor
from tandem.transport.config import MqttConfig
from tandem.transport.factory import open_client
from tandem.transport.link import EmulatedLink
from tests.fixtures.broker import Mosquitto, free_port
from tests.integration.sync_support import (
    closing_all,
    edge_config,
    hub_config,
    start_edge_sync,
    start_hub_sync,
    wait_until,
)
from tests.integration.test_edge_agent import reference, toy_plan  # noqa: F401  (the fixture)

pytestmark = pytest.mark.broker


def start_toy_hub(channel_config: MqttConfig, tail_path: Path) -> Hub:
    """A started hub serving the toy plan's tail over MQTT."""
    hub = Hub(
        HubConfig(plans=[tail_path.parent], channels=[channel_config], metrics=MetricsConfig(port=None)),
        [Tail("toy", 1, "s1", open_executor("onnxruntime", tail_path))],
    )
    hub.start()
    return hub


def test_edge_agent_against_the_hub_over_mqtt_with_sync_beside_it(
    mosquitto: Mosquitto,
    tmp_path: Path,
    toy_plan: tuple,  # noqa: F811
) -> None:
    plan, tail_path = toy_plan
    channel_config = MqttConfig(port=mosquitto.port)
    hub = start_toy_hub(channel_config, tail_path)
    config = EdgeConfig(device_id="cam-1", plan=plan.full_model.parent, codec="fp16", channel=channel_config,
                        deadline_ms=2000, probe_interval_s=0.2)  # fmt: skip
    agent = EdgeAgent(config, plan, open_client(channel_config, device_id="cam-1"))
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    agent.on_result = InferenceRecorder(outbox, SamplingConfig(mode="all"), device_id="cam-1",
                                        plan_in_use=lambda: (agent.plan.plan_id, agent.plan.version))  # fmt: skip
    hub_sync = start_hub_sync(hub_config(mosquitto.port), store)
    edge_sync = start_edge_sync(edge_config(mosquitto.port, tmp_path, telemetry_interval_s=60), outbox, "cam-1")
    agent.start()
    with closing_all(store, outbox, hub, hub_sync, edge_sync, agent):
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(20)]
        results = [agent.infer(x) for x in inputs]
        assert [r.source for r in results] == ["hub"] * 20
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_allclose(result.outputs["logits"], reference(x), rtol=2e-3, atol=2e-3)
            assert result.outputs["logits"].flags.writeable  # copied out of paho's read-only payload
        assert hub.metrics.requests.labels("cam-1", "toy", "s1", "ok")._value.get() == 20
        wait_until(lambda: store.count(kind="sample") == 20 and store.count(kind="record") == 20, 20, "all synced")
        recorded = {store.record(i)["body"]["request_id"] for i in store.record_ids(kind="record")}  # type: ignore[index]
        assert recorded == {r.request_id for r in results}
        sample = store.record(next(iter(store.record_ids(kind="sample"))))
        assert sample is not None and sample["body"]["split"] == "s1" and sample["body"]["meta"]["source"] == "hub"
        assert hub.metrics.errors.collect()[0].samples == []  # the hub never saw a sync message


def test_probes_through_a_default_mosquitto_measure_the_link(
    mosquitto: Mosquitto,
    toy_plan: tuple,  # noqa: F811
) -> None:
    """The broker runs Mosquitto's default ``set_tcp_nodelay false``; the probe trains still measure the link.

    The agent sits behind an emulated 4 Mbit/s uplink, so the second 32 KB
    probe of a train is answered 66 ms after the first whatever this host's
    speed. Whatever the broker path adds (a held delayed ACK would add 40 ms)
    shows in the gap between the two answers and in the estimate, the median of
    the last three trains.
    """
    plan, tail_path = toy_plan
    channel_config = MqttConfig(port=mosquitto.port)
    hub = start_toy_hub(channel_config, tail_path)
    config = EdgeConfig(device_id="cam-1", plan=plan.full_model.parent, codec="raw", channel=channel_config,
                        probe_interval_s=0.5, probe_bytes=32_768)  # fmt: skip
    uplink_mbps = 4.0
    channel = EmulatedLink(open_client(channel_config, device_id="cam-1"), bandwidth_mbps=uplink_mbps, rtt_ms=0)
    agent = EdgeAgent(config, plan, channel)
    trains: list[tuple[int, float]] = []
    observe = agent.estimator.observe_train

    def record(nbytes: int, dispersion_ms: float) -> None:
        trains.append((nbytes, dispersion_ms))
        observe(nbytes, dispersion_ms)

    agent.estimator.observe_train = record  # type: ignore[method-assign]
    agent.start()
    with closing_all(hub, agent):
        wait_until(lambda: len(trains) >= 4, 30, "4 probe trains answered")
    on_the_wire_ms = min(nbytes for nbytes, _ in trains) * 8 / (uplink_mbps * 1000)
    gaps = sorted(ms for _, ms in trains)
    assert on_the_wire_ms - 5 <= gaps[len(gaps) // 2] < on_the_wire_ms + 40, (
        f"gaps between a train's answers (ms): {[round(ms, 1) for _, ms in trains]}"
    )
    bandwidth = agent.estimator.snapshot().bandwidth_mbps
    # The host's scheduling jitter (a few ms out of 66) moves each gap either way, hence the band.
    assert bandwidth is not None and 0.6 * uplink_mbps <= bandwidth <= 1.2 * uplink_mbps


def test_an_edge_agent_started_before_the_broker_answers_locally_then_uses_the_hub(
    mosquitto_factory: Callable[..., Mosquitto],
    toy_plan: tuple,  # noqa: F811
) -> None:
    """`tandem edge` opens its MQTT channel without waiting: a broker that is down costs answers, not the agent."""
    plan, tail_path = toy_plan
    port = free_port()
    channel_config = MqttConfig(port=port)
    config = EdgeConfig(device_id="cam-1", plan=plan.full_model.parent, codec="raw", channel=channel_config,
                        deadline_ms=2000, probe_interval_s=0.2, retry={"initial_s": 0.1, "max_s": 0.5})  # fmt: skip
    agent = EdgeAgent(config, plan, open_client(channel_config, device_id="cam-1", wait=False))
    agent.start()
    with closing_all(agent):
        x = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
        wait_until(lambda: not agent.hub_up, 5, "hub marked down")
        local = agent.infer(x)
        assert (local.source, local.degraded) == ("fallback", True)
        np.testing.assert_allclose(local.outputs["logits"], reference(x), rtol=1e-4, atol=1e-5)
        mosquitto_factory(port=port)
        hub = start_toy_hub(channel_config, tail_path)
        with closing_all(hub):
            wait_until(lambda: agent.hub_up, 20, "hub reachable through the late broker")
            answer = agent.infer(x)
            assert answer.source == "hub", answer.reason
            np.testing.assert_allclose(answer.outputs["logits"], reference(x), rtol=2e-3, atol=2e-3)
