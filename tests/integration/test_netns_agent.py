"""The edge agent over a kernel-shaped link: estimates against the tbf rate, recovery after a cut."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.netns import NetnsLink
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
