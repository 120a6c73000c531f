"""Edge agent against a real hub over ZeroMQ: split inference, fallback, recovery."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import HubConfig, MetricsConfig
from tandem.cloud_hub.server import Hub
from tandem.edge_agent.agent import EdgeAgent
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.plan_view import AgentPlan, SplitOption
from tandem.executors import open_executor
from tandem.transport.config import ZmqConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.zmq_channel import ZmqClient

A = (np.arange(16, dtype=np.float32).reshape(4, 4) - 8) / 10
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def _model(path: Path, nodes: list, inputs: list[str], outputs: list[str], weights: dict[str, np.ndarray]) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4 if n != "logits" else 3]) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


HEAD = [helper.make_node("MatMul", ["x", "A"], ["xa"]), helper.make_node("Relu", ["xa"], ["feat"])]
TAIL = [helper.make_node("Add", ["feat", "x"], ["sum"]), helper.make_node("MatMul", ["sum", "W"], ["logits"])]


def reference(x: np.ndarray) -> np.ndarray:
    return (np.maximum(x @ A, 0) + x) @ W


@pytest.fixture
def toy_plan(tmp_path: Path) -> tuple[AgentPlan, Path]:
    """A two-split plan: cloud-only (x goes up) and s1 (feat and the skip x go up)."""
    full = _model(tmp_path / "model.onnx", HEAD + TAIL, ["x"], ["logits"], {"A": A, "W": W})
    head = _model(tmp_path / "edge.onnx", HEAD, ["x"], ["feat"], {"A": A})
    tail = _model(tmp_path / "cloud.onnx", TAIL, ["feat", "x"], ["logits"], {"W": W})
    splits = (
        SplitOption("s1", head, ("feat", "x"), edge_ms=1, cloud_ms=1, wire_bytes=32),
        SplitOption("edge_only", None, (), edge_ms=500, cloud_ms=0, wire_bytes=0, edge_only=True),
    )
    return AgentPlan("toy", 1, ("x",), ("logits",), full, splits), tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_hub(tail_path: Path, port: int) -> Hub:
    config = HubConfig(
        plans=[tail_path.parent],
        channels=[ZmqConfig(address=f"tcp://127.0.0.1:{port}")],
        metrics=MetricsConfig(port=None),
    )
    hub = Hub(config, [Tail("toy", 1, "s1", open_executor("onnxruntime", tail_path))])
    hub.start()
    return hub


def agent_for(plan: AgentPlan, port: int, **overrides: object) -> EdgeAgent:
    config = EdgeConfig(
        device_id="cam-1",
        plan=plan.full_model.parent,
        codec="raw",
        channel=ZmqConfig(address=f"tcp://127.0.0.1:{port}"),
        retry={"initial_s": 0.1, "max_s": 0.4, "failures_to_mark_down": 1},
        # A stall of this host must not turn a hub answer into a fallback: only the hub-down tests wait it out.
        **{"probe_interval_s": 0.2, "deadline_ms": 10_000, **overrides},
    )
    channel = ZmqClient(address=config.channel.address, device_id=config.device_id, connect_timeout_s=None)
    return EdgeAgent(config, plan, channel)


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def running(toy_plan: tuple[AgentPlan, Path]) -> Iterator[tuple[EdgeAgent, Hub, int]]:
    plan, tail = toy_plan
    port = free_port()
    hub = start_hub(tail, port)
    agent = agent_for(plan, port)
    agent.start()
    wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)  # connected: a heartbeat came back
    yield agent, hub, port
    agent.stop()
    hub.stop()


def test_split_inference_equals_the_full_model(running: tuple[EdgeAgent, Hub, int]) -> None:
    agent, _, _ = running
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    result = agent.infer(x)
    assert (result.source, result.degraded, result.split_id) == ("hub", False, "s1")
    np.testing.assert_allclose(result.outputs["logits"], reference(x), rtol=1e-5, atol=1e-6)
    assert {"edge_ms", "encode_ms", "round_trip_ms", "hub_compute_ms"} <= set(result.timing)

    logits = result.outputs["logits"]
    assert logits.flags.writeable  # the caller's to keep and change (a view of its own received frame)
    logits += 100.0
    np.testing.assert_allclose(agent.infer(x).outputs["logits"], reference(x), rtol=1e-5, atol=1e-6)


@pytest.fixture
def running_short_deadline(toy_plan: tuple[AgentPlan, Path]) -> Iterator[tuple[EdgeAgent, Hub, int]]:
    """As ``running``, with a 500 ms deadline: the hub-down tests wait it out once before the hub counts as down."""
    plan, tail = toy_plan
    port = free_port()
    hub = start_hub(tail, port)
    agent = agent_for(plan, port, deadline_ms=500)
    agent.start()
    wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)
    yield agent, hub, port
    agent.stop()
    hub.stop()


def test_hub_down_means_local_degraded_answers_then_recovery(
    toy_plan: tuple[AgentPlan, Path], running_short_deadline: tuple[EdgeAgent, Hub, int]
) -> None:
    agent, hub, port = running_short_deadline
    x = np.ones((1, 4), np.float32)
    assert agent.infer(x).source == "hub"
    hub.stop()
    answers = [agent.infer(x) for _ in range(5)]
    assert all(a.source == "fallback" and a.degraded for a in answers[1:])
    # The answer names what ran (the full model here, edge-only) and the split it stood in for.
    assert all(a.split_id == "edge_only" and a.planned_split == "s1" for a in answers[1:])
    for answer in answers:
        np.testing.assert_allclose(answer.outputs["logits"], reference(x), rtol=1e-5)
    assert not agent.hub_up
    restarted = start_hub(toy_plan[1], port)
    try:
        wait_until(lambda: agent.hub_up)
        assert agent.infer(x).source == "hub"
    finally:
        restarted.stop()


def test_hub_refusal_falls_back_and_names_the_reason(toy_plan: tuple[AgentPlan, Path]) -> None:
    plan, tail = toy_plan
    port = free_port()
    hub = start_hub(tail, port)
    wrong = AgentPlan("other-plan", 1, plan.input_names, plan.output_names, plan.full_model, plan.splits)
    agent = agent_for(wrong, port)
    with agent:
        wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)
        result = agent.infer(np.ones((1, 4), np.float32))
    hub.stop()
    assert result.source == "fallback" and result.degraded
    assert "unknown_plan" in result.reason and "'other-plan' is not loaded" in result.reason


def test_link_estimates_come_from_heartbeats_and_probes(toy_plan: tuple[AgentPlan, Path]) -> None:
    plan, tail = toy_plan
    port = free_port()
    hub = start_hub(tail, port)
    agent = agent_for(plan, port)
    started = time.monotonic()
    agent.start()
    try:
        wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)
        waited_ms = 1000 * (time.monotonic() - started)
        rtt_ms = agent.estimator.snapshot().rtt_ms
        assert rtt_ms is not None and 0 < rtt_ms <= waited_ms  # a heartbeat's own round trip, inside the wait
    finally:
        agent.stop()
        hub.stop()


def test_a_probe_goes_once_the_plain_heartbeat_is_answered(toy_plan: tuple[AgentPlan, Path]) -> None:
    """Not right behind it: two answers back to back through a broker with Nagle on hold the second ~40 ms.

    Nor half a period later (the fallback when no answer comes): the link is measured soon after start.
    """
    plan, tail = toy_plan
    port = free_port()
    hub = start_hub(tail, port)
    agent = agent_for(plan, port, probe_interval_s=20.0)  # the fallback would wait half of it: 10 s
    events: list[tuple[float, str]] = []
    send, on_heartbeat = agent.channel.send, agent._on_heartbeat

    def recording_send(envelope: Envelope, **kwargs: object) -> None:
        if envelope.kind is Kind.HEARTBEAT:
            events.append((time.monotonic(), "probe" if envelope.meta.get("probe_bytes") else "beat"))
        send(envelope, **kwargs)  # type: ignore[arg-type]

    def recording_answer(envelope: Envelope) -> None:
        on_heartbeat(envelope)
        events.append((time.monotonic(), "probe answered" if envelope.meta.get("probe_bytes") else "answered"))

    agent.channel.send = recording_send  # type: ignore[method-assign]
    agent._on_heartbeat = recording_answer  # type: ignore[method-assign]
    agent.start()
    try:
        wait_until(lambda: sum(what == "probe" for _, what in events) >= 1, timeout=5.0)
    finally:
        agent.stop()
        hub.stop()
    for i, (at, what) in enumerate(events):
        if what != "probe":
            continue
        beat_at = max(t for t, w in events[:i] if w == "beat")
        answers = [t for t, w in events[:i] if w == "answered" and t >= beat_at]
        assert answers, events  # the probe waited for the plain beat's answer
        assert at - beat_at < 5.0, events  # and did not wait for the half-period fallback (10 s)


def test_bad_inputs_name_what_the_model_takes(running: tuple[EdgeAgent, Hub, int]) -> None:
    agent, _, _ = running
    with pytest.raises(ValueError, match=r"missing model input\(s\) \['x'\]; the model takes \['x'\]"):
        agent.infer({"y": np.ones((1, 4), np.float32)})
    with pytest.raises(ValueError, match=r"unknown model input\(s\) \['mask'\]; the model takes \['x'\]"):
        agent.infer({"x": np.ones((1, 4), np.float32), "mask": np.ones((1, 4), np.float32)})
    # Checked against the full model before anything runs: the agent must be able to answer locally too.
    with pytest.raises(ValueError, match=r"model input 'x' has shape \[1, 5\], expected \['\?', 4\]"):
        agent.infer(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"model input 'x' has dtype float64, expected float32"):
        agent.infer(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"model input 'x' has type list, not an array"):
        agent.infer([[1.0, 2.0, 3.0, 4.0]])  # type: ignore[arg-type]
    assert agent.counters == {
        "hub": 0, "edge": 0, "fallback": 0, "late_replies": 0, "hub_errors": 0, "emulation_overrun": 0
    }  # fmt: skip  # none ran
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(agent.infer(x).outputs["logits"], reference(x), rtol=2e-3, atol=2e-3)  # still serving


def test_the_emulated_edge_takes_the_plans_profiled_time_and_counts_overruns(
    toy_plan: tuple[AgentPlan, Path],
) -> None:
    """emulation.edge_slowdown: each edge run lasts its profiled time x the factor, not the contended elapsed time.

    The plan's figures (s1: 60 ms, the whole model: 90 ms) carry its own factor
    of 3, so this host's profiled times are 20 and 30 ms, and a slowdown of 2
    makes the emulated runs 40 and 60 ms. A run whose profiled time is below
    what this host really took is not stretched; it is counted.
    """
    plan, tail = toy_plan
    s1 = dataclasses.replace(plan.split("s1"), edge_ms=60.0)
    plan = dataclasses.replace(plan, splits=(s1,), full_edge_ms=90.0, edge_time_scale=3.0)
    assert plan.emulated_edge_s(60.0, 2.0) == pytest.approx(0.040)
    port = free_port()
    hub = start_hub(tail, port)
    agent = agent_for(plan, port, emulation={"edge_slowdown": 2.0}, deadline_ms=2000)
    agent.start()
    try:
        wait_until(lambda: agent.estimator.snapshot().rtt_ms is not None)
        x = np.ones((1, 4), np.float32)
        split = agent.infer(x)
        hub.stop()
        local = [agent.infer(x) for _ in range(3)]
        assert split.source == "hub" and all(r.source == "fallback" for r in local)
        # Each run lasted its emulated time, unless this host's own run took longer (then it says so).
        runs = [(split, "edge_ms", 40.0), *((r, "local_ms", 60.0) for r in local)]
        overruns = [r for r, _, _ in runs if "emulation_overrun_ms" in r.timing]
        assert agent.counters["emulation_overrun"] == len(overruns)
        assert all(r.timing[key] >= emulated for r, key, emulated in runs if r not in overruns)
        assert all(r.timing[key] >= r.timing["emulation_overrun_ms"] for r, key, _ in runs if r in overruns)
        counted = agent.counters["emulation_overrun"]

        # A profiled time of 1 ns: this host's run always takes longer; it is counted, not stretched.
        agent.swap_plan(dataclasses.replace(plan, full_edge_ms=1e-6))
        result = agent.infer(x)
        assert result.source == "fallback" and agent.counters["emulation_overrun"] == counted + 1
        assert result.timing["emulation_overrun_ms"] > 0
        assert result.timing["local_ms"] >= result.timing["emulation_overrun_ms"]
    finally:
        agent.stop()
        hub.stop()


def test_a_swapped_plan_keeps_the_configured_executor_options(toy_plan: tuple[AgentPlan, Path]) -> None:
    """swap_plan opens the new plan's parts as the start did: executor_threads included."""
    plan, _ = toy_plan
    agent = agent_for(plan, free_port(), executor_threads=1)
    try:
        assert agent.full.describe().endswith(", 1 intra-op thread(s)")
        agent.swap_plan(dataclasses.replace(plan, version=2))
        assert agent.plan.version == 2
        assert agent.full.describe().endswith(", 1 intra-op thread(s)")
        assert all(head.describe().endswith(", 1 intra-op thread(s)") for head in agent._heads.values())
        assert agent._heads  # the split's edge part was opened by the swap
    finally:
        agent.channel.close()
