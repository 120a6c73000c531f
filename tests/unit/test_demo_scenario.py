"""The demo's world: links derived from the plan so that cloud-only, a cut and edge-only each win, on any host speed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tandem.commands.demo import DEMO_MIN_GAIN, DemoConfig, DemoError, resolve_phases
from tandem.commands.demo_world import SAFETY, NoWorldError, derive_world, kind_of, link_for, predict
from tandem.config import ConfigError, parse_config
from tandem.edge_agent.config import HysteresisConfig, ObjectiveConfig
from tandem.edge_agent.link_estimator import LinkEstimate
from tandem.edge_agent.plan_view import AgentPlan, SplitOption
from tandem.edge_agent.selector import SplitSelector

# EfficientNet-Lite1 as partitioned on a 2-core x86 host with int8+zstd (edge emulated x8.46), rounded.
SPLITS = (
    SplitOption("cloud-only", None, ("input",), edge_ms=0, cloud_ms=10.3, wire_bytes=149_142, codec_ms=1.45,
                result_bytes=4000),
    SplitOption("cut-01", Path("c1.onnx"), ("a",), edge_ms=14.7, cloud_ms=8.5, wire_bytes=71_504, codec_ms=0.38,
                result_bytes=4000),
    SplitOption("cut-02", Path("c2.onnx"), ("b",), edge_ms=29.3, cloud_ms=6.8, wire_bytes=30_020, codec_ms=0.14,
                result_bytes=4000),
    SplitOption("cut-03", Path("c3.onnx"), ("c",), edge_ms=39.5, cloud_ms=5.6, wire_bytes=15_500, codec_ms=0.09,
                result_bytes=4000),
    SplitOption("edge-only", None, (), edge_ms=86.8, cloud_ms=0, wire_bytes=0, edge_only=True),
)  # fmt: skip
REQUIRED = DEMO_MIN_GAIN + SAFETY


def scaled(splits: tuple[SplitOption, ...], factor: float) -> tuple[SplitOption, ...]:
    """The same plan profiled on a host ``factor`` times slower (compute scales, bytes do not)."""
    return tuple(
        dataclasses.replace(s, edge_ms=s.edge_ms * factor, cloud_ms=s.cloud_ms * factor, codec_ms=s.codec_ms * factor)
        for s in splits
    )


@pytest.mark.parametrize("host_slowness", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_the_agents_walk_through_all_three_winners_on_any_host_speed(host_slowness: float) -> None:
    """Derived for this host's plan, each phase's link moves an agent with the demo's hysteresis to its winner."""
    splits = scaled(SPLITS, host_slowness)
    world = derive_world(splits, DEMO_MIN_GAIN)
    assert len({link.rtt_ms for link in world.values()}) == 1  # one RTT for the whole story

    plan = AgentPlan("lite1", 1, ("input",), ("logits",), Path("model.onnx"), splits)
    now = [0.0]
    hysteresis = HysteresisConfig(min_gain=DEMO_MIN_GAIN, min_dwell_s=2)
    selector = SplitSelector(plan, ObjectiveConfig(), hysteresis, clock=lambda: now[0])
    for step, winner in enumerate(("cloud-only", "cut", "edge-only", "cut")):
        link = world[winner]  # type: ignore[index]
        now[0] = 10.0 * (step + 1)
        chosen = selector.choose(LinkEstimate(link.rtt_ms, link.bandwidth_mbps))
        assert kind_of(chosen) == winner, (step, link.describe(), chosen.split_id)
        assert chosen.split_id == link.split_id
        # The lead the world claims is the plan's own prediction, and it clears the hysteresis with room to spare.
        rivals = [s for s in splits if s is not chosen and not (winner == "cut" and kind_of(s) == "cut")]
        fastest_rival = min(s.predicted_ms(link.bandwidth_mbps, link.rtt_ms) for s in rivals)
        assert link.gain == pytest.approx(1 - chosen.predicted_ms(link.bandwidth_mbps, link.rtt_ms) / fastest_rival)
        assert link.gain >= REQUIRED


def test_a_cut_that_only_moves_the_input_padding_tells_cloud_only_s_story() -> None:
    """Seen on a real plan: the partitioner kept a one-node cut after the input's Pad, 0.2 % off cloud-only.

    Cloud-only can never beat it by the hysteresis, and the agents never tell
    the two apart, so it counts as cloud-only: the world still exists, and an
    agent on it shows the cloud-only phase.
    """
    pad = SplitOption("cut-00", Path("pad.onnx"), ("padded",), edge_ms=0.21, cloud_ms=10.27, wire_bytes=149_700,
                      codec_ms=1.45, result_bytes=4000)  # fmt: skip
    splits = (SPLITS[0], pad, *SPLITS[1:])
    assert kind_of(pad) == "cut" and kind_of(pad, splits) == "cloud-only"
    assert kind_of(SPLITS[2], splits) == "cut"
    world = derive_world(splits, DEMO_MIN_GAIN)
    assert kind_of(next(s for s in splits if s.split_id == world["cloud-only"].split_id), splits) == "cloud-only"
    assert "cut-00" not in world["cloud-only"].gains and world["cloud-only"].gain >= REQUIRED
    assert world["cut"].split_id.startswith("cut-0") and world["cut"].split_id != "cut-00"


def test_a_fixed_link_shows_nothing_on_a_fast_host_which_is_why_the_world_is_derived() -> None:
    """The old demo's 50 Mbit/s / 20 ms: on a host 4x faster than the one the plan above came from, edge-only wins."""
    fast = scaled(SPLITS, 0.25)
    assert predict(fast, 50, 20).split_id == "edge-only"
    assert predict(fast, 3, 20).split_id == "edge-only"


def test_describe_says_who_wins_by_how_much_where() -> None:
    link = predict(SPLITS, 17, 2)
    times = {s.split_id: s.predicted_ms(17, 2) for s in SPLITS}
    lead = 1 - times["cut-02"] / times["edge-only"]
    assert link.split_id == "cut-02" and set(link.gains) == {"cloud-only", "edge-only"}  # other cuts are no rivals
    assert f"edge-only by {lead:.0%}" in link.describe()
    assert link.describe().startswith("cut-02 beats ") and link.describe().endswith("at 17 Mbit/s, 2 ms")


def test_a_host_so_fast_that_compute_vanishes_behind_the_link_has_no_world() -> None:
    """10x this host: the whole model takes 1 ms here, so even at 1000 Mbit/s and 2 ms cloud-only cannot win clearly."""
    with pytest.raises(NoWorldError, match=r"cloud-only at best: cloud-only beats cut-01 by \d+%"):
        derive_world(scaled(SPLITS, 0.1), DEMO_MIN_GAIN)


def test_no_cut_worth_showing_is_an_error_that_says_which_winner_fell_short() -> None:
    slow_cuts = tuple(dataclasses.replace(s, edge_ms=60.0) if kind_of(s) == "cut" else s for s in SPLITS)
    with pytest.raises(NoWorldError) as caught:
        derive_world(slow_cuts, DEMO_MIN_GAIN)
    message = str(caught.value)
    assert f"hysteresis plus {SAFETY:.0%} ({REQUIRED:.0%})" in message
    assert "cut at best: cut-03 beats edge-only by 11%" in message and "cloud-only at best" not in message
    slower = tuple(dataclasses.replace(s, edge_ms=80.0) if kind_of(s) == "cut" else s for s in SPLITS)
    with pytest.raises(NoWorldError, match="cut is never the fastest split at any bandwidth and RTT"):
        derive_world(slower, DEMO_MIN_GAIN)
    no_cuts = tuple(s for s in SPLITS if kind_of(s) != "cut")
    with pytest.raises(NoWorldError, match="keeps no mid-network cut"):
        derive_world(no_cuts, DEMO_MIN_GAIN)


def test_an_explicit_rtt_gets_a_bandwidth_for_it_or_none() -> None:
    link = link_for(SPLITS, "cut", 10.0, REQUIRED)
    assert link is not None and link.rtt_ms == 10.0 and kind_of(SPLITS[2]) == "cut"
    assert link.gain >= REQUIRED and link.split_id.startswith("cut-")
    assert link_for(SPLITS, "cut", 80.0, REQUIRED) is None  # behind 80 ms no cut beats the 87 ms edge-only


def test_resolve_phases_fills_auto_keeps_numbers_and_reports_what_the_plan_predicts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = DemoConfig.model_validate(
        {
            "phases": [
                {"at_s": 0, "bandwidth_mbps": 500, "rtt_ms": 1, "name": "mine"},
                {"at_s": 10, "winner": "cut", "name": "drop"},
                {"at_s": 20, "winner": "edge-only", "bandwidth_mbps": 0.5, "rtt_ms": 1, "name": "slow"},
            ],
            "outage": {"at_s": 12, "duration_s": 3},
        }
    )
    resolved, links = resolve_phases(config, SPLITS)
    world = derive_world(SPLITS, DEMO_MIN_GAIN)
    assert [(p.bandwidth_mbps, p.rtt_ms) for p in resolved.phases] == [
        (500.0, 1.0),
        (world["cut"].bandwidth_mbps, world["cut"].rtt_ms),
        (0.5, 1.0),
    ]
    assert [link.split_id for link in links] == [predict(SPLITS, 500, 1).split_id, world["cut"].split_id, "edge-only"]
    out = capsys.readouterr().out
    assert "mine" in out and "(from demo.yaml)" in out and "(derived from the plan)" in out


def test_an_outage_where_nothing_uses_the_hub_is_refused() -> None:
    config = DemoConfig.model_validate({"outage": {"at_s": 35, "duration_s": 5}})  # the default edge-only phase
    with pytest.raises(DemoError, match=r"outage at 35 s falls in phase 'deep drop'.*predicts edge-only"):
        resolve_phases(config, SPLITS)


def test_a_plan_without_a_world_stops_the_demo_with_what_to_change() -> None:
    slow_cuts = tuple(dataclasses.replace(s, edge_ms=80.0) if kind_of(s) == "cut" else s for s in SPLITS)
    with pytest.raises(DemoError) as caught:
        resolve_phases(DemoConfig(), slow_cuts)
    message = str(caught.value)
    assert "would show nothing" in message and "edge.emulation_factor" in message and "`codec`" in message


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ({"at_s": 0, "bandwidth_mbps": 0, "rtt_ms": 2}, "phases.0.bandwidth_mbps: value 0 is not valid: expected a"),
        ({"at_s": 0, "bandwidth_mbps": 5, "rtt_ms": -1}, "phases.0.rtt_ms: value -1 is not valid: expected a round"),
        ({"at_s": 0, "rtt_ms": 2}, "an auto bandwidth_mbps or rtt_ms is derived for the phase's winner: set winner"),
        ({"at_s": 0, "winner": "middle"}, "phases.0.winner: value 'middle' is not valid"),
    ],
)  # fmt: skip
def test_a_bad_phase_names_its_key(phase: dict[str, object], expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"phases": [phase]}, DemoConfig, source=str(tmp_path / "demo.yaml"))
    message = str(caught.value)
    assert "demo.yaml" in message and expected in message


def test_the_default_story_is_cloud_only_a_cut_edge_only_and_a_cut_with_the_outage() -> None:
    config = DemoConfig()
    assert [p.winner for p in config.phases] == ["cloud-only", "cut", "edge-only", "cut"]
    assert all(p.bandwidth_mbps == "auto" and p.rtt_ms == "auto" for p in config.phases)
    assert config.outage is not None and config.outage.at_s >= config.phases[-1].at_s
    assert config.outage.at_s + config.outage.duration_s < config.duration_s


@pytest.mark.parametrize("model", ["digits_cnn", "mobilenet_v2", "resnet51"])
def test_the_demo_model_must_have_real_weights_and_class_names(model: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"model": model}, DemoConfig, source=str(tmp_path / "demo.yaml"))
    message = str(caught.value)
    assert "demo.yaml" in message and "model" in message and repr(model) in message
    assert "runs a model with real weights: one of efficientnet_lite1" in message


def test_a_process_is_ready_only_when_this_start_says_so(tmp_path: Path) -> None:
    """A log left by an earlier run, or by the hub's first start, must not pass for a start that has not happened."""
    from tandem import __version__
    from tandem.commands.demo import _Processes

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
