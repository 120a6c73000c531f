"""A heartbeat may ask its answer to carry bytes (a downlink probe); the hub bounds what it grants."""

from __future__ import annotations

import pytest

from tandem.cloud_hub.server import MAX_REPLY_PADDING, reply_padding
from tandem.transport.envelope import Envelope, Kind


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        (65_536, 65_536),
        (10**12, MAX_REPLY_PADDING),  # capped, not refused
        (0, 0),
        (-5, 0),
        (True, 0),  # a bool is not a byte count
        (1.5e4, 0),
        ("65536", 0),
        (None, 0),
    ],
)
def test_a_heartbeat_gets_the_padding_it_asks_for_within_the_bound(asked: object, granted: int) -> None:
    beat = Envelope(kind=Kind.HEARTBEAT, device_id="cam-1", meta={"reply_bytes": asked})
    assert reply_padding(beat) == granted


def test_a_plain_heartbeat_gets_none() -> None:
    assert reply_padding(Envelope(kind=Kind.HEARTBEAT, device_id="cam-1")) == 0
