"""The edge agent over a kernel-shaped link: estimates against the tbf rate, recovery after a cut and a fade."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.netns import NetnsLink, Shape
from tests.fixtures.netns_agent import Bed


@pytest.fixture
def bed(netns_link: NetnsLink, tmp_path: Path) -> Iterator[Bed]:
    """A running hub and agent on a fresh, unshaped namespace pair."""
    running = Bed(netns_link, tmp_path)
    try:
        yield running
    finally:
        running.close()


@pytest.mark.parametrize("rate_mbit", [2.0, 10.0, 50.0])
def test_the_bandwidth_estimate_is_within_15_percent_of_the_tbf_rate(bed: Bed, rate_mbit: float) -> None:
    bed.link.shape(rate_mbit)
    bed.wait_for_estimate()
    results = bed.requests(3.0)
    estimate = bed.agent.estimator.snapshot()
    assert estimate.bandwidth_mbps == pytest.approx(rate_mbit, rel=0.15), (estimate, [r.split_id for _, r in results])


def test_split_inference_is_back_within_a_second_of_the_links_return(
    netns_link: NetnsLink, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The issue's requirement, for each cut: the link's return to the first answer the hub served.

    The cut drops packets in the middle of the path, so TCP backs off for real.
    1.5 s is shorter than ZeroMQ's heartbeat timeout: the connection survives
    and waits for its doubling retransmission timer (1.6 s after the return,
    here, without the agent's fresh connections). 5 s is longer: ZeroMQ
    reconnects, and its SYNs back off too (1, 2, 4 s...).
    """
    bed = Bed(netns_link, tmp_path, deadline_ms=300)
    ids: list[str] = []
    try:
        netns_link.shape(10.0)
        bed.wait_for_estimate()
        for cut_s in (1.5, 5.0):
            before = bed.requests(1.0, rate_hz=10)
            assert before[-1][1].source == "hub", [(r.source, r.reason) for _, r in before]
            netns_link.cut()
            during = bed.requests(cut_s, rate_hz=10)
            netns_link.restore()
            restored = time.monotonic()
            after = bed.requests(1.5, rate_hz=10)
            timeline = [(round(t - restored, 2), r.source) for t, r in after]
            back = next((t for t, r in after if r.source == "hub"), None)
            assert back is not None and back - restored <= 1.0, (cut_s, timeline)
            record_property(f"split_back_after_{cut_s:g}s_cut_s", round(back - restored, 3))
            assert all(r.source != "hub" for _, r in during)  # nothing got through the cut
            ids += [r.request_id for _, r in before + during + after]
    finally:
        bed.close()
    assert len(ids) == len(set(ids))  # one answer per request, never a second


def test_after_a_fade_split_inference_is_back_within_a_second_and_stale_beats_leave_the_rtt_alone(
    bed: Bed, record_property: Callable[[str, object], None]
) -> None:
    """5 s at 50 kbit/s: the 64 kB queue holds heartbeats for seconds; then 10 Mbit/s again."""
    bed.link.shape(10.0)
    bed.wait_for_estimate()
    before = bed.requests(1.0, rate_hz=10)
    bed.link.shape(0.05)
    during = bed.requests(5.0, rate_hz=5)
    bed.link.shape(10.0)
    back = time.monotonic()
    after = bed.requests(2.0, rate_hz=10)
    rtt = bed.agent.estimator.snapshot().rtt_ms
    timeline = [(round(t - back, 2), r.source) for t, r in after]
    first = next((t - back for t, r in after if r.source == "hub"), None)
    record_property("first_hub_answer_after_fade_s", first)
    record_property("rtt_after_fade_ms", rtt)
    assert first is not None and first <= 1.0, timeline
    everything = before + during + after
    ids = [r.request_id for _, r in everything]
    assert len(ids) == len(set(ids)) and all(r.outputs["logits"].shape == (1, 10) for _, r in everything)
    # The veth's RTT is well under a millisecond; a beat that waited in the stalled queue took 100s of ms.
    assert rtt is not None and rtt < 20.0, (rtt, timeline)


def test_the_downlink_estimate_is_within_15_percent_of_its_own_tbf_rate(
    netns_link: NetnsLink, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Uplink 50 Mbit/s, downlink 10: answers of 200 kB (many times the bucket's 16 kB burst) measure it.

    The agent is held on s1: answers are the only downlink samples (it would
    rightly leave for edge-only once 160 ms answers cost more than its 120 ms).
    """
    bed = Bed(netns_link, tmp_path, echo_floats=50_000)
    try:
        netns_link.shape(50.0, down=Shape.for_rate(10.0, limit_bytes=400_000))
        bed.wait_for_estimate()
        bed.measure("s1", 12)
        estimate = bed.agent.estimator.snapshot()
        result = bed.agent.infer(bed.inputs)
    finally:
        bed.close()
    record_property("downlink_estimate_mbit", estimate.downlink_mbps)
    assert result.outputs["echo"].shape == (1, 50_000)
    assert estimate.downlink_mbps == pytest.approx(10.0, rel=0.15), estimate
    assert estimate.bandwidth_mbps == pytest.approx(50.0, rel=0.15), estimate


def test_with_small_answers_a_probe_pair_measures_the_downlink(
    netns_link: NetnsLink, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Uplink 50 Mbit/s, downlink 5: the toy's answers are a few hundred bytes, too small to measure anything,
    so the agent asks the hub for padded probe answers (meta.reply_bytes) and times the gap between them."""
    bed = Bed(netns_link, tmp_path)
    try:
        netns_link.shape(50.0, down=Shape.for_rate(5.0, limit_bytes=200_000))
        bed.wait_for_estimate()
        deadline = time.monotonic() + 8.0
        while bed.agent.estimator.snapshot().downlink_mbps is None and time.monotonic() < deadline:
            bed.requests(0.5)
        bed.requests(1.0)
        estimate = bed.agent.estimator.snapshot()
    finally:
        bed.close()
    record_property("downlink_estimate_mbit", estimate.downlink_mbps)
    assert estimate.downlink_mbps == pytest.approx(5.0, rel=0.15), estimate
    assert estimate.bandwidth_mbps == pytest.approx(50.0, rel=0.15), estimate


def test_after_each_rate_step_the_choice_is_within_10_percent_of_the_best_measured_split(bed: Bed) -> None:
    bed.link.shape(50.0)
    bed.wait_for_estimate()
    for rate in (50.0, 5.0):
        figures = bed.step(rate)
        report = figures.as_dict()
        # The best split measured on this link in this run; 2 ms for the host's scheduling noise.
        assert figures.measured_p50_ms[figures.chosen] <= 1.1 * figures.measured_p50_ms[figures.best] + 2, report
        assert figures.switch_s is not None and figures.switch_s <= 2.0, report
        assert figures.answers == figures.requests, report


def test_a_queue_smaller_than_one_message_still_answers_every_request_once(bed: Bed) -> None:
    shape = Shape.for_rate(5.0, limit_bytes=32_000)  # cloud-only's 100 kB cannot fit in the queue: drops, retransmits
    bed.link.shape(shape)
    bed.wait_for_estimate()
    p50 = bed.measure("cloud_only", 8)
    results = bed.requests(2.0, rate_hz=5)
    ids = [r.request_id for _, r in results]
    assert len(ids) == len(set(ids)) and all(r.outputs["logits"].shape == (1, 10) for _, r in results)
    assert p50 >= (100_000 - shape.burst_bytes) * 8 / 5_000  # never faster than the shaper allows
