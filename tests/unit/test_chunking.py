"""Chunking of packed envelopes and their bounded reassembly."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.transport.chunking import (
    CHUNK_HEADER_BYTES,
    CHUNK_MAGIC,
    ChunkError,
    Reassembler,
    is_chunk,
    parse_chunk_header,
    split,
)
from tandem.transport.envelope import PACKED_MAGIC, Envelope, Kind, Limits, pack, unpack
from tandem.transport.errors import MessageTooLarge, TruncatedMessage


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _chunk(msg_id: bytes, index: int, count: int, total: int, data: bytes) -> bytes:
    return struct.pack("<4s16sIIQ", CHUNK_MAGIC, msg_id, index, count, total) + data


def _feed_all(reassembler: Reassembler, sender: str, chunks: list[bytes]) -> list[bytes]:
    out = []
    for chunk in chunks:
        whole = reassembler.feed(sender, chunk)
        if whole is not None:
            out.append(bytes(whole))
    return out


def test_header_layout_is_little_endian_and_36_bytes() -> None:
    payload = bytes(range(256)) * 10
    chunks = split(payload, 1000, message_id=b"\x01" * 16)
    assert CHUNK_HEADER_BYTES == 36
    assert len(chunks) == 3  # 964 data bytes per chunk: 964 + 964 + 632
    last = chunks[2]
    assert last[:4] == b"TDC1"
    assert last[4:20] == b"\x01" * 16
    assert last[20:24] == (2).to_bytes(4, "little")
    assert last[24:28] == (3).to_bytes(4, "little")
    assert last[28:36] == len(payload).to_bytes(8, "little")
    assert len(last) == 36 + 632
    assert all(len(c) <= 1000 for c in chunks)
    assert b"".join(c[36:] for c in chunks) == payload


def test_small_payload_travels_whole() -> None:
    envelope = Envelope.with_arrays(Kind.ACTIVATION, {"x": np.arange(10, dtype=np.float32)})
    packed = pack(envelope)
    assert split(packed, 4096) == [packed]
    assert packed[:4] == PACKED_MAGIC
    assert not is_chunk(packed)
    assert Reassembler().feed("edge-1", packed) is packed


def test_packed_envelope_round_trips_through_chunks() -> None:
    array = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    envelope = Envelope.with_arrays(Kind.ACTIVATION, {"x": array}, device_id="edge-1")
    chunks = split(pack(envelope), 16 << 10)
    assert len(chunks) > 1 and all(is_chunk(c) for c in chunks)
    random.Random(1).shuffle(chunks)
    [whole] = _feed_all(Reassembler(), "edge-1", chunks)
    np.testing.assert_array_equal(unpack(whole).arrays()["x"], array)


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=0, max_size=5000),
    max_payload=st.integers(min_value=CHUNK_HEADER_BYTES + 1, max_value=700),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    duplicates=st.integers(min_value=0, max_value=5),
)
def test_any_payload_round_trips_in_any_order(payload: bytes, max_payload: int, seed: int, duplicates: int) -> None:
    body = PACKED_MAGIC + payload  # whole payloads are packed envelopes
    chunks = split(body, max_payload)
    assert all(len(c) <= max_payload for c in chunks)
    rng = random.Random(seed)
    # Chunks repeated by a QoS 1 redelivery are ignored; a whole payload is handed over each time it comes.
    stream = chunks + [rng.choice(chunks) for _ in range(duplicates if len(chunks) > 1 else 0)]
    rng.shuffle(stream)
    reassembler = Reassembler()
    assert _feed_all(reassembler, "edge-1", stream) == [body]
    assert reassembler.in_flight == 0
    assert reassembler.buffered_bytes == 0


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=200, max_value=3000), min_size=2, max_size=4), seed=st.integers(0, 999))
def test_interleaved_messages_from_two_senders(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    messages = {(f"edge-{i % 2}", i): PACKED_MAGIC + rng.randbytes(size) for i, size in enumerate(sizes)}
    stream = [(sender, c) for (sender, _), body in messages.items() for c in split(body, 128)]
    rng.shuffle(stream)
    reassembler = Reassembler(max_in_flight_per_sender=len(sizes))
    got = []
    for sender, chunk in stream:
        whole = reassembler.feed(sender, chunk)
        if whole is not None:
            got.append((sender, bytes(whole)))
    assert sorted(got) == sorted((sender, body) for (sender, _), body in messages.items())


def test_same_message_id_from_different_senders_is_kept_apart() -> None:
    msg_id = b"\x07" * 16
    a = split(PACKED_MAGIC + b"a" * 300, 100, message_id=msg_id)
    b = split(PACKED_MAGIC + b"b" * 300, 100, message_id=msg_id)
    reassembler = Reassembler()
    got = []
    for chunk_a, chunk_b in zip(a, b, strict=True):
        for sender, chunk in (("edge-a", chunk_a), ("edge-b", chunk_b)):
            whole = reassembler.feed(sender, chunk)
            if whole is not None:
                got.append((sender, bytes(whole)[4:5]))
    assert sorted(got) == [("edge-a", b"a"), ("edge-b", b"b")]


def test_redelivered_chunk_after_completion_is_ignored() -> None:
    chunks = split(PACKED_MAGIC + b"x" * 500, 100)
    reassembler = Reassembler()
    assert len(_feed_all(reassembler, "edge-1", chunks)) == 1
    assert reassembler.feed("edge-1", chunks[0]) is None
    assert reassembler.in_flight == 0


def test_total_over_limit_is_rejected_before_buffering() -> None:
    reassembler = Reassembler(Limits(max_message_bytes=1000))
    chunk = _chunk(b"\x00" * 16, 0, 2, 1 << 40, b"y" * 10)
    with pytest.raises(MessageTooLarge, match=r"chunk.total: chunked message of 1099511627776 bytes .* limit of 1000"):
        reassembler.feed("edge-1", chunk)
    assert reassembler.in_flight == 0
    assert reassembler.buffered_bytes == 0


def test_inconsistent_count_names_the_field() -> None:
    reassembler = Reassembler()
    msg_id = b"\x02" * 16
    assert reassembler.feed("edge-1", _chunk(msg_id, 0, 3, 30, b"a" * 10)) is None
    with pytest.raises(ChunkError, match=r"chunk.count: chunk 1 says 4, earlier chunks .* said 3") as info:
        reassembler.feed("edge-1", _chunk(msg_id, 1, 4, 30, b"b" * 10))
    assert info.value.field == "chunk.count"
    assert info.value.code == "bad_chunk"
    assert reassembler.in_flight == 0


def test_inconsistent_total_names_the_field() -> None:
    reassembler = Reassembler()
    msg_id = b"\x03" * 16
    reassembler.feed("edge-1", _chunk(msg_id, 0, 3, 30, b"a" * 10))
    with pytest.raises(ChunkError, match=r"chunk.total: chunk 2 says 31") as info:
        reassembler.feed("edge-1", _chunk(msg_id, 2, 3, 31, b"b" * 10))
    assert info.value.field == "chunk.total"


def test_chunks_that_overflow_the_total_are_rejected() -> None:
    reassembler = Reassembler()
    msg_id = b"\x04" * 16
    reassembler.feed("edge-1", _chunk(msg_id, 0, 2, 12, b"a" * 10))
    with pytest.raises(ChunkError, match=r"chunk.data: chunk 1 brings 10 bytes") as info:
        reassembler.feed("edge-1", _chunk(msg_id, 1, 2, 12, b"b" * 10))
    assert info.value.field == "chunk.data"


def test_chunks_that_fall_short_of_the_total_are_rejected() -> None:
    reassembler = Reassembler()
    msg_id = b"\x05" * 16
    reassembler.feed("edge-1", _chunk(msg_id, 0, 2, 30, b"a" * 10))
    with pytest.raises(ChunkError, match=r"chunk.total: 2 chunks hold 20 bytes, header promises 30"):
        reassembler.feed("edge-1", _chunk(msg_id, 1, 2, 30, b"b" * 10))


@pytest.mark.parametrize(
    ("chunk", "error", "field", "message"),
    [
        (CHUNK_MAGIC + b"\x00" * 10, TruncatedMessage, "chunk.header", "chunk is 14 bytes, shorter than its 36-byte"),
        (_chunk(b"\x00" * 16, 0, 0, 10, b"a"), ChunkError, "chunk.count", "cannot have 0 chunks"),
        (_chunk(b"\x00" * 16, 5, 5, 10, b"a"), ChunkError, "chunk.index", "index 5 is not below the count of 5"),
        (_chunk(b"\x00" * 16, 0, 5, 4, b"a"), ChunkError, "chunk.total", "4 bytes cannot fill 5 chunks"),
    ],
)
def test_bad_chunk_headers_name_the_field(chunk: bytes, error: type, field: str, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        Reassembler().feed("edge-1", chunk)
    assert info.value.field == field


def test_parse_chunk_header_reads_fields() -> None:
    header = parse_chunk_header(_chunk(b"\x09" * 16, 2, 3, 100, b"zz"))
    assert (header.message_id, header.index, header.count, header.total) == (b"\x09" * 16, 2, 3, 100)


def test_partial_messages_time_out_and_are_counted() -> None:
    clock = FakeClock()
    reassembler = Reassembler(timeout_s=5.0, clock=clock)
    stale = split(PACKED_MAGIC + b"s" * 300, 100)
    fresh = split(PACKED_MAGIC + b"f" * 300, 100)
    reassembler.feed("edge-1", stale[0])
    clock.now += 3.0
    reassembler.feed("edge-1", fresh[0])
    clock.now += 2.5  # stale idle 5.5 s, fresh idle 2.5 s
    assert reassembler.expire() == 1
    assert reassembler.dropped == 1
    assert reassembler.in_flight == 1
    # The rest of the stale message can no longer complete it; the fresh one still completes.
    assert _feed_all(reassembler, "edge-1", stale[1:]) == []
    assert _feed_all(reassembler, "edge-1", fresh[1:]) == [PACKED_MAGIC + b"f" * 300]


def test_feed_sweeps_stale_partials_by_itself() -> None:
    clock = FakeClock()
    reassembler = Reassembler(timeout_s=1.0, clock=clock)
    reassembler.feed("edge-1", split(PACKED_MAGIC + b"s" * 300, 100)[0])
    clock.now += 10
    reassembler.feed("edge-2", split(PACKED_MAGIC + b"t" * 300, 100)[0])
    assert reassembler.dropped == 1
    assert reassembler.in_flight == 1


def test_in_flight_per_sender_is_bounded_oldest_dropped() -> None:
    reassembler = Reassembler(max_in_flight_per_sender=2)
    messages = [split(PACKED_MAGIC + bytes([65 + i]) * 300, 100) for i in range(3)]
    for chunks in messages:
        reassembler.feed("edge-1", chunks[0])
    reassembler.feed("edge-2", messages[0][0])  # another sender has its own budget
    assert reassembler.dropped == 1
    assert reassembler.in_flight == 3
    assert len(_feed_all(reassembler, "edge-1", messages[1][1:] + messages[2][1:])) == 2
    assert _feed_all(reassembler, "edge-1", messages[0][1:]) == []  # the oldest was dropped


def test_buffered_bytes_are_bounded() -> None:
    reassembler = Reassembler(max_buffered_bytes=500, max_in_flight_per_sender=10)
    for i in range(4):
        chunks = split(PACKED_MAGIC + bytes([i]) * 2000, 236)  # 200 data bytes per chunk
        reassembler.feed(f"edge-{i}", chunks[0])
        reassembler.feed(f"edge-{i}", chunks[1])
    assert reassembler.buffered_bytes <= 500
    assert reassembler.dropped == 3


def test_split_rejects_a_limit_smaller_than_the_header() -> None:
    with pytest.raises(ValueError, match="leaves no room for data after the 36-byte chunk header"):
        split(b"x" * 100, 36)


def test_reassembler_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="max_in_flight_per_sender must be at least 1"):
        Reassembler(max_in_flight_per_sender=0)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        Reassembler(timeout_s=0)
