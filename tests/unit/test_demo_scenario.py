"""The demo's `bandwidth_mbps: auto`: the uplink at which the plan shows a mid-network cut, on any machine speed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent.config import HysteresisConfig, ObjectiveConfig
from edge_agent.link_estimator import LinkEstimate
from edge_agent.plan_view import AgentPlan, SplitOption
from edge_agent.selector import SplitSelector
from tandem.commands.demo import DEMO_MIN_GAIN, DemoConfig, showcase_bandwidth
from tandem.config import ConfigError, parse_config

# MobileNetV2 as partitioned here with int8+zstd (edge emulated x7.5), rounded.
SPLITS = (
    SplitOption("cloud-only", None, ("input",), edge_ms=0, cloud_ms=10.3, wire_bytes=108_399, codec_ms=1.8),
    SplitOption("cut-01", Path("c1.onnx"), ("a",), edge_ms=18.8, cloud_ms=7.8, wire_bytes=53_587, codec_ms=0.8),
    SplitOption("cut-02", Path("c2.onnx"), ("b",), edge_ms=30.8, cloud_ms=6.2, wire_bytes=19_699, codec_ms=0.3),
    SplitOption("cut-03", Path("c3.onnx"), ("c",), edge_ms=38.5, cloud_ms=5.1, wire_bytes=9_917, codec_ms=0.3),
    SplitOption("edge-only", None, (), edge_ms=76.9, cloud_ms=0, wire_bytes=0, edge_only=True),
)


def scaled(splits: tuple[SplitOption, ...], factor: float) -> tuple[SplitOption, ...]:
    """The same plan profiled on a machine ``factor`` times slower (compute scales, bytes do not)."""
    return tuple(
        dataclasses.replace(s, edge_ms=s.edge_ms * factor, cloud_ms=s.cloud_ms * factor, codec_ms=s.codec_ms * factor)
        for s in splits
    )


@pytest.mark.parametrize("machine_slowness", [1.0, 2.4, 6.0])
def test_auto_bandwidth_moves_the_agent_from_cloud_only_to_a_cut_whatever_the_machine_speed(
    machine_slowness: float,
) -> None:
    splits = scaled(SPLITS, machine_slowness)
    plan = AgentPlan("mnv2", 1, ("input",), ("logits",), Path("model.onnx"), splits)
    now = [0.0]
    selector = SplitSelector(
        plan, ObjectiveConfig(), HysteresisConfig(min_gain=DEMO_MIN_GAIN, min_dwell_s=2), clock=lambda: now[0]
    )
    assert selector.choose(LinkEstimate(20, 100)).split_id == "cloud-only"  # the demo's good link

    bandwidth, margin = showcase_bandwidth(splits, selector.current or splits[0], rtt_ms=20)

    assert margin > 0.05
    now[0] = 10.0
    chosen = selector.choose(LinkEstimate(20, bandwidth))
    assert chosen.split_id.startswith("cut-"), (bandwidth, chosen.split_id)
    edge_only_ms = splits[-1].predicted_ms(bandwidth, 20)
    assert chosen.predicted_ms(bandwidth, 20) * (1 + margin) <= edge_only_ms * 1.001


def test_a_fixed_slow_link_would_not_show_a_cut_on_a_fast_machine() -> None:
    """Why `auto` exists: at 3 Mbit/s this machine's fast CPU makes edge-only the best answer."""
    best = min(SPLITS, key=lambda s: s.predicted_ms(3, 20))
    assert best.split_id == "edge-only"


def test_no_cut_worth_showing_gives_a_margin_of_zero_or_less() -> None:
    slow_cuts = tuple(dataclasses.replace(s, edge_ms=500.0) if s.split_id.startswith("cut-") else s for s in SPLITS)
    assert showcase_bandwidth(slow_cuts, slow_cuts[0], rtt_ms=20)[1] <= 0
    # A machine twice this fast: edge-only (38 ms) beats any cut behind a 20 ms RTT.
    assert showcase_bandwidth(scaled(SPLITS, 0.5), SPLITS[0], rtt_ms=20)[1] <= 0
    assert showcase_bandwidth(scaled(SPLITS, 0.5), SPLITS[0], rtt_ms=5)[1] > 0


@pytest.mark.parametrize("bad", [0, -3, "fast"])
def test_a_phase_bandwidth_must_be_positive_or_auto(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"phases": [{"at_s": 0, "bandwidth_mbps": bad}]}, DemoConfig, source=str(tmp_path / "demo.yaml"))
    message = str(caught.value)
    assert "demo.yaml" in message and "phases.0.bandwidth_mbps" in message
    assert "auto" in message


def test_auto_is_the_default_drop() -> None:
    assert [p.bandwidth_mbps for p in DemoConfig().phases] == [50, "auto"]


@pytest.mark.parametrize("model", ["digits_cnn", "minilm", "resnet51"])
def test_the_demo_model_must_be_one_it_can_feed_photos(model: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": model}, DemoConfig, source=str(tmp_path / "demo.yaml"))
    message = str(caught.value)
    assert "demo.yaml" in message and "model" in message and repr(model) in message
    assert "224x224 photo crops" in message and "mobilenet_v2, resnet50, vgg16" in message
    assert DemoConfig.model_validate({"model": "resnet50"}).model == "resnet50"


def test_a_process_is_ready_only_when_this_start_says_so(tmp_path: Path) -> None:
    """A log left by an earlier run, or by the hub's first start, must not pass for a start that has not happened."""
    from tandem import __version__
    from tandem.commands.demo import DemoError, _Processes

    (tmp_path / "hub.log").write_text("... listening on tcp://127.0.0.1:5755\n")  # an earlier demo run
    processes = _Processes(tmp_path)
    with pytest.raises(DemoError, match="hub did not start"):
        processes._spawn("hub", ["--version"], "listening on")  # prints its version and exits, never listens
    assert "listening on" not in (tmp_path / "hub.log").read_text()  # this run's log starts afresh

    version = f"tandem {__version__}"
    processes._spawn("edge-0", ["--version"], version).wait(timeout=30)
    with pytest.raises(DemoError, match="edge-0 did not start"):
        processes._spawn("edge-0", ["check-config", str(tmp_path / "missing.yaml")], version)
    log = (tmp_path / "edge-0.log").read_text()
    assert log.startswith(version) and "missing.yaml" in log  # a restart appends to the same log
