"""The link estimator on synthetic sample streams: token buckets, queueing, steps, timeouts, stale RTTs."""

from __future__ import annotations

import itertools
import random

import pytest

from tandem.edge_agent.link_estimator import SINGLE_SAMPLE_SPREAD, LinkEstimator, theil_sen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bucket_ms(nbytes: int, rate_mbps: float, burst: int) -> float:
    """A token bucket after idle: the first ``burst`` bytes leave at (near) line rate, the rest at ``rate``."""
    return 0.2 + max(0, nbytes - burst) * 8 / (rate_mbps * 1000)


def feed(estimator: LinkEstimator, clock: Clock, sizes: list[int], rate: float, burst: int, rtt: float = 1.0) -> None:
    rng = random.Random(7)
    for nbytes in sizes:
        clock.now += 0.2
        jitter = rng.uniform(0, 2.0)  # scheduling noise on a busy host: only ever later
        estimator.observe_transfer(nbytes, rtt + 3.0 + bucket_ms(nbytes, rate, burst) + jitter, hub_ms=3.0)


@pytest.mark.parametrize("rate", [2.0, 10.0, 50.0])
def test_a_burst_does_not_inflate_the_rate_when_sizes_differ(rate: float) -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    sizes = list(itertools.islice(itertools.cycle([40_000, 108_000, 160_000]), 12))
    feed(estimator, clock, sizes, rate, burst=32_000)
    per_message_max = max(n * 8 / (bucket_ms(n, rate, 32_000) * 1000) for n in sizes)
    assert per_message_max > 1.3 * rate  # what the old maximum filter reported
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(rate, rel=0.05)


def test_one_size_only_falls_back_to_the_median() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    feed(estimator, clock, [100_000] * 6, 10.0, burst=0)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(10.0, rel=0.15)


def test_trains_give_the_rate_whatever_the_activations_say_and_are_asked_for_when_old() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    assert estimator.wants_probe(max_age_s=1.0)
    feed(estimator, clock, [11_000] * 10, 10.0, burst=16_000)  # all inside the burst: nothing to learn
    for dispersion in (32.0, 33.5, 31.0):  # 40 kB each at 10 Mbit/s, one beside a busy host's jitter
        clock.now += 0.5
        estimator.observe_train(40_000, dispersion)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(10.0, rel=0.05)
    assert not estimator.wants_probe(max_age_s=1.0)
    clock.now += 1.5
    assert estimator.wants_probe(max_age_s=1.0)


def test_a_step_up_is_followed_by_two_trains() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    for rate in (2.0, 2.0, 2.0, 20.0, 20.0):
        clock.now += 1
        estimator.observe_train(100_000, 100_000 * 8 / (rate * 1000))
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(20.0)


def test_a_few_queued_samples_do_not_move_the_estimate() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    feed(estimator, clock, [32_000, 128_000] * 5, 10.0, burst=16_000)
    clock.now += 0.2
    estimator.observe_transfer(128_000, 1 + 400 + bucket_ms(128_000, 10.0, 16_000), hub_ms=0)  # waited in a queue
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(10.0, rel=0.1)


def test_three_slow_activations_overrule_the_trains() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    for _ in range(3):
        clock.now += 0.5
        estimator.observe_train(300_000, 300_000 * 8 / 50_000)  # 50 Mbit/s
    feed(estimator, clock, [108_000] * 2, 2.0, burst=16_000)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(50.0)  # two could be a queue
    feed(estimator, clock, [108_000], 2.0, burst=16_000)
    dropped = estimator.snapshot().bandwidth_mbps
    assert dropped is not None and 2.0 <= dropped <= 2.5  # the activations' burst shows until the next train
    assert estimator.wants_probe(max_age_s=100.0)


def test_a_timeout_bounds_the_rate_until_a_transfer_completes() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    feed(estimator, clock, [32_000, 128_000] * 4, 50.0, burst=16_000)
    estimator.observe_timeout(108_000, waited_ms=501.0)  # 108 kB not answered within 500 ms
    bound = estimator.snapshot().bandwidth_mbps
    assert bound is not None and bound <= 108_000 * 8 / (500 * 1000) + 1e-9
    feed(estimator, clock, [32_000, 128_000, 32_000, 128_000], 1.5, burst=16_000)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(1.5, rel=0.15)


def test_one_stale_heartbeat_cannot_take_over_the_rtt() -> None:
    clock = Clock()
    estimator = LinkEstimator(rtt_window_s=10, clock=clock)
    for _ in range(5):
        clock.now += 1
        estimator.observe_rtt(2.0)
    clock.now += 20  # a fade: nothing answered for 20 s
    estimator.observe_rtt(406.0)  # the beat that waited in the stalled queue
    assert estimator.snapshot().rtt_ms == 2.0
    for _ in range(3):  # the path really is slower now: three fresh samples say so
        clock.now += 1
        estimator.observe_rtt(60.0)
    clock.now += 11
    estimator.observe_rtt(60.0)
    assert estimator.snapshot().rtt_ms == 60.0


def test_the_downlink_is_measured_from_replies() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    feed(estimator, clock, [32_000, 128_000] * 4, 20.0, burst=0)  # probes: nothing comes back
    for nbytes in [32_000, 128_000] * 4:  # activations with a 40 kB reply on a 2 Mbit/s downlink
        clock.now += 0.2
        down = 40_000 * 8 / (2.0 * 1000)
        estimator.observe_transfer(nbytes, 1 + 3 + bucket_ms(nbytes, 20.0, 0) + down, hub_ms=3, reply_bytes=40_000)
    snapshot = estimator.snapshot()
    assert snapshot.downlink_mbps == pytest.approx(2.0, rel=0.1)
    assert snapshot.bandwidth_mbps == pytest.approx(20.0, rel=0.1)


def test_samples_too_small_to_measure_are_ignored() -> None:
    estimator = LinkEstimator()
    estimator.observe_rtt(40.0)
    estimator.observe_transfer(100, round_trip_ms=40.1, hub_ms=0.0)
    assert estimator.snapshot().bandwidth_mbps is None


def test_theil_sen_needs_sizes_apart_and_ignores_an_outlier() -> None:
    assert theil_sen([(100.0, 1.0), (101.0, 2.0), (102.0, 3.0)]) is None
    assert theil_sen([(100.0, 3.0), (200.0, 2.0)]) is None  # faster when larger: not a rate
    points = [(x, 5 + 0.01 * x) for x in (1000.0, 2000.0, 4000.0, 8000.0)] + [(3000.0, 500.0)]
    fit = theil_sen(points)
    assert fit is not None
    assert fit[0] == pytest.approx(0.01, rel=0.2)


def test_the_spread_shrinks_with_agreeing_samples() -> None:
    clock = Clock()
    noisy, clean = LinkEstimator(clock=clock), LinkEstimator(clock=clock)
    rng = random.Random(3)
    for nbytes in [32_000, 128_000] * 6:
        clock.now += 0.1
        clean.observe_transfer(nbytes, nbytes * 8 / 10_000, hub_ms=0)
        noisy.observe_transfer(nbytes, nbytes * 8 / 10_000 * rng.uniform(0.7, 1.5), hub_ms=0)
    assert clean.snapshot().spread < 0.01 < noisy.snapshot().spread


def test_small_messages_inside_the_burst_do_not_vote_against_two_probe_sizes() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    feed(estimator, clock, [64_000, 192_000], 2.0, burst=16_000)  # the two probes
    feed(estimator, clock, [11_000, 20_000] * 10, 2.0, burst=16_000)  # activations, mostly within the burst
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(2.0, rel=0.1)


def test_the_burst_is_what_activations_sent_faster_than_the_trains_rate() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    assert estimator.snapshot().burst_bytes == 0
    for _ in range(3):
        clock.now += 0.5
        estimator.observe_train(40_000, 32.0)  # 10 Mbit/s
    feed(estimator, clock, [100_000] * 5, 10.0, burst=16_000)
    assert estimator.snapshot().burst_bytes == pytest.approx(16_000, abs=3_000)  # jitter only makes it smaller
    feed(estimator, clock, [10_000] * 11, 10.0, burst=16_000)  # all of each message fits in it
    assert estimator.snapshot().burst_bytes == pytest.approx(10_000, abs=1_000)


def test_a_train_that_disagrees_asks_for_another_and_two_that_agree_replace_the_old() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    for _ in range(3):
        clock.now += 1
        estimator.observe_train(32_768, 55.0)  # ~4.8 Mbit/s
    assert not estimator.wants_probe(max_age_s=10)
    clock.now += 1
    estimator.observe_train(32_768, 138.0)  # ~1.9 Mbit/s: a step, or one slow train?
    assert estimator.wants_probe(max_age_s=10)  # ask again at once
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(4.77, rel=0.02)  # one train cannot move it
    clock.now += 0.3
    estimator.observe_train(32_768, 137.0)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(1.9, rel=0.02)
    assert not estimator.wants_probe(max_age_s=10)


def test_one_train_after_a_change_does_not_freeze_the_choice() -> None:
    """A lone sample's spread is a modest assumption, not 'unknown, never switch' (the demo's drop phase)."""
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_train(32_768, 26.2)  # 10 Mbit/s
    assert estimator.snapshot().spread == SINGLE_SAMPLE_SPREAD
    clock.now += 1
    estimator.observe_train(32_768, 26.9)
    assert estimator.snapshot().spread < 0.05  # two that agree


def test_an_outage_forgets_the_timeout_bound() -> None:
    estimator = LinkEstimator()
    estimator.observe_train(32_768, 26.2)
    estimator.observe_timeout(100_000, waited_ms=500)
    assert (estimator.snapshot().bandwidth_mbps or 0) < 2
    estimator.forget_timeouts()
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(10.0, rel=0.01)


def test_activations_much_faster_than_predicted_ask_for_a_train_now() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    for _ in range(3):
        clock.now += 0.5
        estimator.observe_train(40_000, 32.0)  # 10 Mbit/s
    feed(estimator, clock, [100_000] * 3, 10.0, burst=16_000)
    assert not estimator.wants_probe(max_age_s=100)
    feed(estimator, clock, [100_000] * 3, 50.0, burst=16_000)  # the link grew: a train is due at once
    assert estimator.wants_probe(max_age_s=100)
    estimator.observe_train(40_000, 6.4)  # 50 Mbit/s: it disagrees, so one more is asked for
    assert estimator.wants_probe(max_age_s=100)
    estimator.observe_train(40_000, 6.5)
    assert not estimator.wants_probe(max_age_s=100)
    assert estimator.snapshot().bandwidth_mbps == pytest.approx(50.0, rel=0.05)


def test_trains_are_sized_by_the_slowest_recent_evidence() -> None:
    clock = Clock()
    estimator = LinkEstimator(clock=clock)
    estimator.observe_rtt(1.0)
    for _ in range(3):
        clock.now += 0.5
        estimator.observe_train(300_000, 48.0)  # 50 Mbit/s
    assert estimator.probe_rate() == pytest.approx(50.0)
    feed(estimator, clock, [100_000], 5.0, burst=16_000)  # the link just dropped: one activation says so
    rate = estimator.probe_rate()
    assert rate is not None and rate < 7  # a 50 Mbit/s train would flood a 5 Mbit/s queue for a second


def test_a_downlink_probe_pair_measures_the_downlink_and_a_too_short_gap_is_a_lower_bound() -> None:
    estimator = LinkEstimator()
    assert estimator.wants_down_probe() and estimator.snapshot().downlink_mbps is None
    estimator.observe_down_train(65_536, 52.4)  # 64 kB in 52.4 ms: 10 Mbit/s
    assert estimator.snapshot().downlink_mbps == pytest.approx(10.0, rel=0.01)
    assert not estimator.wants_down_probe()
    fast = LinkEstimator()
    fast.observe_down_train(32_768, 0.05)  # under the host's noise: at least 32 kB per 0.5 ms
    assert fast.snapshot().downlink_mbps == pytest.approx(32_768 * 8 / 500, rel=0.01)
