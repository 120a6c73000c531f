"""Split choice: objective, constraints, hysteresis (the estimator: test_link_estimator.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.edge_agent.config import HysteresisConfig, ObjectiveConfig
from tandem.edge_agent.link_estimator import LinkEstimate
from tandem.edge_agent.plan_view import AgentPlan, SplitOption, WireBytes
from tandem.edge_agent.selector import SplitSelector

# A ResNet-like cost table: the deeper the cut, the more edge time and the fewer bytes.
SPLITS = (
    SplitOption("cloud_only", None, ("input",), edge_ms=0, cloud_ms=5, wire_bytes=600_000),
    SplitOption("s1", Path("s1.onnx"), ("a",), edge_ms=20, cloud_ms=4, wire_bytes=200_000),
    SplitOption("s2", Path("s2.onnx"), ("b", "skip"), edge_ms=60, cloud_ms=2, wire_bytes=40_000),
    SplitOption("edge_only", None, (), edge_ms=150, cloud_ms=0, wire_bytes=0, edge_only=True),
)
PLAN = AgentPlan("toy", 1, ("input",), ("logits",), Path("model.onnx"), SPLITS)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def selector(objective: ObjectiveConfig | None = None, **hysteresis: float) -> tuple[SplitSelector, Clock]:
    clock = Clock()
    return SplitSelector(PLAN, objective or ObjectiveConfig(), HysteresisConfig(**hysteresis), clock=clock), clock


def brute_force_best(bandwidth: float, rtt: float) -> str:
    return min(SPLITS, key=lambda s: s.predicted_ms(bandwidth, rtt)).split_id


@pytest.mark.parametrize("bandwidth", [0.5, 2, 5, 20, 100, 1000])
def test_min_latency_picks_the_fastest_predicted_split(bandwidth: float) -> None:
    chosen, _ = selector()
    assert chosen.choose(LinkEstimate(20, bandwidth)).split_id == brute_force_best(bandwidth, 20)


def test_split_moves_deeper_when_bandwidth_drops_and_back_when_it_recovers() -> None:
    chosen, clock = selector(min_dwell_s=2, min_gain=0.1)
    assert chosen.choose(LinkEstimate(20, 1000)).split_id == "cloud_only"
    clock.now = 1.0  # within the dwell time: stay, even though s2 is now far better
    assert chosen.choose(LinkEstimate(20, 5)).split_id == "cloud_only"
    clock.now = 3.0
    assert chosen.choose(LinkEstimate(20, 5)).split_id == "s2"
    clock.now = 10.0
    assert chosen.choose(LinkEstimate(20, 1000)).split_id == "cloud_only"
    assert chosen.switches == 2


def test_hysteresis_ignores_small_gains() -> None:
    chosen, clock = selector(min_dwell_s=0, min_gain=0.5)
    first = chosen.choose(LinkEstimate(20, 12)).split_id
    clock.now = 5
    # At 10 Mbit/s another split may be slightly better, but not 50 % better.
    assert chosen.choose(LinkEstimate(20, 10)).split_id == first
    assert chosen.switches == 0


def test_bandwidth_cap_excludes_splits_that_would_exceed_it() -> None:
    objective = ObjectiveConfig(mode="bandwidth_cap", bandwidth_cap_mbps=2.0)
    chosen, _ = selector(objective)
    # 10 requests/s: cloud_only needs 48 Mbit/s, s1 16, s2 3.2: only edge_only fits under 2 Mbit/s.
    assert chosen.choose(LinkEstimate(20, 1000), request_rate_hz=10).split_id == "edge_only"
    relaxed, _ = selector(ObjectiveConfig(mode="bandwidth_cap", bandwidth_cap_mbps=5.0))
    assert relaxed.choose(LinkEstimate(20, 1000), request_rate_hz=10).split_id == "s2"


def test_latency_slo_prefers_fewest_bytes_among_splits_that_meet_it() -> None:
    chosen, _ = selector(ObjectiveConfig(mode="latency_slo", latency_slo_ms=160))
    # At 1000 Mbit/s every split meets 160 ms; edge_only sends nothing.
    assert chosen.choose(LinkEstimate(20, 1000)).split_id == "edge_only"
    tight, _ = selector(ObjectiveConfig(mode="latency_slo", latency_slo_ms=60))
    assert tight.choose(LinkEstimate(20, 1000)).split_id == "s1"  # meets 60 ms with fewer bytes than cloud_only


def test_objective_config_needs_its_number() -> None:
    with pytest.raises(ValueError, match="mode 'bandwidth_cap' needs bandwidth_cap_mbps"):
        ObjectiveConfig(mode="bandwidth_cap")


def test_the_first_choice_is_logged_with_its_link_like_every_switch(caplog: pytest.LogCaptureFixture) -> None:
    chosen, _ = selector(min_dwell_s=0, min_gain=0.1)
    with caplog.at_level("INFO", logger="tandem.edge.selector"):
        chosen.choose(LinkEstimate(20, 1000))
        chosen.choose(LinkEstimate(20, 5))
    assert "split start -> cloud_only (first choice; link 1000.00 Mbit/s, RTT 20.0 ms" in caplog.text
    assert "split cloud_only -> s2 (better for the link; link 5.00 Mbit/s" in caplog.text
    assert chosen.switches == 1


def test_the_result_travels_on_the_downlink_and_measured_bytes_replace_the_plans() -> None:
    split = SplitOption("s", Path("s.onnx"), ("a",), edge_ms=10, cloud_ms=5, wire_bytes=100_000, result_bytes=40_000)
    # 100 kB up at 8 Mbit/s (100 ms) and 40 kB down at 1.6 Mbit/s (200 ms), 20 ms RTT.
    assert split.predicted_ms(8.0, 20.0, downlink_mbps=1.6) == pytest.approx(10 + 100 + 20 + 5 + 200)
    assert split.predicted_ms(8.0, 20.0) == pytest.approx(10 + 100 + 20 + 5 + 40)  # symmetric when unmeasured
    assert split.predicted_ms(8.0, 20.0, wire_bytes=120_000) == pytest.approx(10 + 120 + 20 + 5 + 40)


def test_wire_bytes_start_from_the_plan_and_follow_the_median_of_real_requests() -> None:
    wire = WireBytes("int8+zstd", window=5)
    split = SPLITS[0]
    assert wire.of(split) == 600_000
    for nbytes in (700_000, 690_000, 5_000_000, 710_000):  # one odd photo does not move it
        wire.observe("cloud_only", nbytes)
    assert wire.of(split) == 705_000
    assert wire.of(SPLITS[1]) == 200_000


def test_the_margin_follows_the_estimates_noise_with_a_floor() -> None:
    cloud = SplitOption("cloud_only", None, ("input",), edge_ms=0, cloud_ms=5, wire_bytes=100_000)
    cut = SplitOption("cut", Path("cut.onnx"), ("a",), edge_ms=20, cloud_ms=5, wire_bytes=10_000)
    plan = AgentPlan("two", 1, ("input",), ("logits",), Path("model.onnx"), (cloud, cut))
    chosen = SplitSelector(plan, ObjectiveConfig(), HysteresisConfig(min_gain=0.05, min_dwell_s=0))
    assert chosen.margin(LinkEstimate(20, 10, spread=0.0)) == 0.05
    assert chosen.margin(LinkEstimate(20, 10, spread=0.1)) == pytest.approx(0.2)
    # At 27 Mbit/s the cut is predicted 12 % faster (the 10 Mbit/s case): enough on a quiet estimate only.
    gain = 1 - cut.predicted_ms(27, 20) / cloud.predicted_ms(27, 20)
    assert 0.1 < gain < 0.15
    chosen.current = cloud
    assert chosen.choose(LinkEstimate(20, 27, spread=0.1)).split_id == "cloud_only"
    assert chosen.choose(LinkEstimate(20, 27, spread=0.01)).split_id == "cut"


def test_the_slo_objective_leaves_a_split_whose_measured_latency_breaks_it(caplog: pytest.LogCaptureFixture) -> None:
    objective = ObjectiveConfig(mode="latency_slo", latency_slo_ms=200)
    chosen, clock = selector(objective, min_dwell_s=0)
    link = LinkEstimate(20, 1000)
    first = chosen.choose(link)
    assert chosen.predicted_ms(first, link) <= 200
    for _ in range(5):  # the prediction said fine; the answers say 219 ms
        chosen.observe(first.split_id, 219.0)
    with caplog.at_level("INFO", logger="tandem.edge.selector"):
        second = chosen.choose(link)
    assert second.split_id != first.split_id
    assert "(current split measured p50 219.0 ms over the 200 ms SLO;" in caplog.text
    clock.now += 11  # the bad answers age out: the prediction speaks again
    assert chosen.measured_p50(first.split_id) is None


def test_an_assumed_link_says_so_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    chosen, _ = selector()
    with caplog.at_level("INFO", logger="tandem.edge.selector"):
        chosen.choose(LinkEstimate(20, 10, assumed=True))
    assert "link 10.00 Mbit/s assumed, not yet measured" in caplog.text


def test_the_readme_objective_examples_are_valid_config() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Objectives", 1)[1].split("\n## ", 1)[0]
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    modes = [ObjectiveConfig(**block["objective"]).mode for block in blocks]
    assert modes == ["min_latency", "bandwidth_cap", "latency_slo"]
    for block in blocks:
        HysteresisConfig(**block.get("hysteresis", {}))
