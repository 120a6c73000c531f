"""A repeating warning: the first at once, then one line an interval with the count since the last."""

from __future__ import annotations

import logging

import pytest

from tandem.throttled_log import ThrottledWarning


def test_first_at_once_then_one_an_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    warning = ThrottledWarning(logging.getLogger("tandem.test"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "tandem.test"):
        assert warning.warn("disk full")
        for t in (101.0, 130.0, 159.9):
            now[0] = t
            assert not warning.warn("disk full")
        now[0] = 160.0
        assert warning.warn("disk full")
        now[0] = 500.0
        assert warning.warn("disk full")
    assert [r.getMessage() for r in caplog.records] == [
        "disk full",
        "disk full (4 times in the last 60 s)",
        "disk full (1 time in the last 340 s)",
    ]
