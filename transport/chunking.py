"""Split packed envelopes into size-limited chunks and put them back together.

MQTT brokers cap the size of a PUBLISH (Mosquitto's ``max_packet_size`` and
``message_size_limit``), and a big activation can be several megabytes. A
payload no larger than the channel's ``max_payload_bytes`` travels whole: it is
:func:`tandem.transport.envelope.pack` output and starts with ``PACKED_MAGIC``
(``b"TDM1"``). A larger one is cut into chunks, each of them one payload::

    offset  size  field
    0       4     magic        b"TDC1"
    4       16    message id   random bytes shared by every chunk of one message
    20      4     index        u32, 0 .. count-1
    24      4     count        u32, number of chunks (>= 1)
    28      8     total        u64, length of the whole packed message in bytes
    36      ...   data         the message bytes of this chunk

All integers are little-endian. Chunks ``0 .. count-2`` carry equal slices of
the message and the last one carries the rest, so the data of all chunks,
ordered by index, is exactly ``total`` bytes. Chunks may arrive in any order;
a receiver keys them by (sender, message id).

:class:`Reassembler` is bounded: ``total`` is checked against
``Limits.max_message_bytes`` before anything is buffered, each sender has at
most ``max_in_flight_per_sender`` partial messages (the oldest is dropped to
make room), all partial messages together hold at most ``max_buffered_bytes``,
and a partial message that receives no chunk for ``timeout_s`` is dropped.
Every drop is counted in :attr:`Reassembler.dropped`.
"""

from __future__ import annotations

import logging
import math
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tandem.transport.envelope import Buffer, Limits
from tandem.transport.errors import MessageTooLarge, ProtocolError, TruncatedMessage

__all__ = [
    "CHUNK_HEADER_BYTES",
    "CHUNK_MAGIC",
    "ChunkError",
    "ChunkHeader",
    "Reassembler",
    "is_chunk",
    "parse_chunk_header",
    "split",
]

CHUNK_MAGIC = b"TDC1"
_HEADER = struct.Struct("<4s16sIIQ")
CHUNK_HEADER_BYTES = _HEADER.size
_MAX_COUNT = 0xFFFFFFFF
_REMEMBERED_COMPLETE = 4096

log = logging.getLogger("tandem.transport.chunking")


class ChunkError(ProtocolError):
    """A chunk's header contradicts itself or the other chunks of its message."""

    code = "bad_chunk"


@dataclass(frozen=True)
class ChunkHeader:
    """The fixed fields at the start of every chunk."""

    message_id: bytes
    index: int
    count: int
    total: int


def is_chunk(payload: Buffer) -> bool:
    """Whether ``payload`` is a chunk (rather than a whole packed message)."""
    return bytes(payload[:4]) == CHUNK_MAGIC


def split(payload: bytes, max_payload_bytes: int, *, message_id: bytes | None = None) -> list[bytes]:
    """``[payload]`` if it fits in ``max_payload_bytes``, else its chunks, each no larger than that."""
    if len(payload) <= max_payload_bytes:
        return [payload]
    room = max_payload_bytes - CHUNK_HEADER_BYTES
    if room < 1:
        raise ValueError(
            f"max_payload_bytes {max_payload_bytes} leaves no room for data after the "
            f"{CHUNK_HEADER_BYTES}-byte chunk header"
        )
    count = math.ceil(len(payload) / room)
    if count > _MAX_COUNT:
        raise ValueError(f"a {len(payload)}-byte payload needs {count} chunks, more than a u32 can count")
    msg_id = message_id if message_id is not None else uuid.uuid4().bytes
    if len(msg_id) != 16:
        raise ValueError(f"message_id must be 16 bytes, got {len(msg_id)}")
    view = memoryview(payload)
    total = len(payload)
    return [
        b"".join((_HEADER.pack(CHUNK_MAGIC, msg_id, index, count, total), view[index * room : (index + 1) * room]))
        for index in range(count)
    ]


def parse_chunk_header(payload: Buffer) -> ChunkHeader:
    """Read and check the fixed header of one chunk (not against other chunks)."""
    if len(payload) < CHUNK_HEADER_BYTES:
        raise TruncatedMessage(
            f"chunk is {len(payload)} bytes, shorter than its {CHUNK_HEADER_BYTES}-byte header", field="chunk.header"
        )
    magic, msg_id, index, count, total = _HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise ChunkError(f"chunk starts with {magic!r}, expected {CHUNK_MAGIC!r}", field="chunk.magic")
    if count == 0:
        raise ChunkError("chunk.count: a chunked message cannot have 0 chunks", field="chunk.count")
    if index >= count:
        raise ChunkError(f"chunk.index: index {index} is not below the count of {count}", field="chunk.index")
    if total < count:
        raise ChunkError(
            f"chunk.total: {total} bytes cannot fill {count} chunks of at least one byte", field="chunk.total"
        )
    return ChunkHeader(bytes(msg_id), index, count, total)


@dataclass
class _Partial:
    """The chunks of one message received so far."""

    count: int
    total: int
    last_seen: float
    pieces: dict[int, memoryview] = field(default_factory=dict)
    received: int = 0


class Reassembler:
    """Rebuilds whole messages from chunks; whole payloads pass straight through.

    Not thread-safe: feed it from one thread (a channel's network thread).
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        max_in_flight_per_sender: int = 4,
        timeout_s: float = 30.0,
        max_buffered_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight_per_sender < 1:
            raise ValueError(f"max_in_flight_per_sender must be at least 1, got {max_in_flight_per_sender}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.limits = limits
        self.max_in_flight_per_sender = max_in_flight_per_sender
        self.timeout_s = timeout_s
        self.max_buffered_bytes = max_buffered_bytes if max_buffered_bytes is not None else 4 * limits.max_message_bytes
        self.dropped = 0
        self._clock = clock
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()
        self._per_sender: dict[str, int] = {}
        self._buffered = 0
        self._complete: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._next_sweep = clock() + timeout_s

    @property
    def in_flight(self) -> int:
        """How many partial messages are waiting for chunks."""
        return len(self._partials)

    @property
    def buffered_bytes(self) -> int:
        """Chunk data held by partial messages."""
        return self._buffered

    def feed(self, sender: str, payload: Buffer) -> Buffer | None:
        """The whole message once ``payload`` completes one, else ``None``.

        A payload that is not a chunk is returned as it is (``unpack`` checks it).
        Raises a :class:`~tandem.transport.errors.ProtocolError` naming the chunk field at fault.
        """
        if bytes(payload[:4]) != CHUNK_MAGIC:
            return payload
        now = self._clock()
        if now >= self._next_sweep:
            self.expire(now)
        header = parse_chunk_header(payload)
        if header.total > self.limits.max_message_bytes:
            raise MessageTooLarge(
                f"chunk.total: chunked message of {header.total} bytes is over the limit of "
                f"{self.limits.max_message_bytes}",
                field="chunk.total",
            )
        key = (sender, header.message_id)
        if key in self._complete:
            return None  # a redelivered chunk of a message already handed over
        partial = self._partials.get(key)
        if partial is None:
            partial = self._start(key, header, now)
        elif header.count != partial.count or header.total != partial.total:
            name = "count" if header.count != partial.count else "total"
            first, got = (partial.count, header.count) if name == "count" else (partial.total, header.total)
            self._forget(key)
            raise ChunkError(
                f"chunk.{name}: chunk {header.index} says {got}, earlier chunks of the same message said {first}",
                field=f"chunk.{name}",
            )
        if header.index in partial.pieces:
            return None  # duplicate chunk (QoS 1 redelivery)
        data = memoryview(payload)[CHUNK_HEADER_BYTES:]
        if partial.received + len(data) > partial.total or not data:
            self._forget(key)
            raise ChunkError(
                f"chunk.data: chunk {header.index} brings {len(data)} bytes; with the {partial.received} already "
                f"received that does not fit the {partial.total}-byte message in {partial.count} chunks",
                field="chunk.data",
            )
        partial.pieces[header.index] = data
        partial.received += len(data)
        partial.last_seen = now
        self._buffered += len(data)
        self._partials.move_to_end(key)
        if len(partial.pieces) < partial.count:
            self._enforce_buffer_bound(keep=key)
            return None
        self._forget(key)
        self._remember_complete(key)
        if partial.received != partial.total:
            raise ChunkError(
                f"chunk.total: {partial.count} chunks hold {partial.received} bytes, header promises {partial.total}",
                field="chunk.total",
            )
        return b"".join(partial.pieces[i] for i in range(partial.count))

    def expire(self, now: float | None = None) -> int:
        """Drop partial messages idle for ``timeout_s``; how many were dropped."""
        now = self._clock() if now is None else now
        self._next_sweep = now + self.timeout_s / 4
        stale = [key for key, p in self._partials.items() if now - p.last_seen >= self.timeout_s]
        for key in stale:
            self._drop(key, f"no chunk for {self.timeout_s} s")
        return len(stale)

    def _start(self, key: tuple[str, bytes], header: ChunkHeader, now: float) -> _Partial:
        sender = key[0]
        if self._per_sender.get(sender, 0) >= self.max_in_flight_per_sender:
            oldest = next(k for k in self._partials if k[0] == sender)
            self._drop(oldest, f"sender has {self.max_in_flight_per_sender} partial messages in flight")
        partial = _Partial(count=header.count, total=header.total, last_seen=now)
        self._partials[key] = partial
        self._per_sender[sender] = self._per_sender.get(sender, 0) + 1
        return partial

    def _enforce_buffer_bound(self, *, keep: tuple[str, bytes]) -> None:
        while self._buffered > self.max_buffered_bytes and len(self._partials) > 1:
            oldest = next(iter(self._partials))
            if oldest == keep:
                self._partials.move_to_end(keep)
                continue
            self._drop(oldest, f"partial messages hold over {self.max_buffered_bytes} bytes")
        if self._buffered > self.max_buffered_bytes:
            self._drop(keep, f"partial messages hold over {self.max_buffered_bytes} bytes")

    def _drop(self, key: tuple[str, bytes], why: str) -> None:
        partial = self._partials.get(key)
        if partial is None:
            return
        log.warning(
            "dropping partial message %s from %r (%d of %d chunks): %s",
            key[1].hex(), key[0], len(partial.pieces), partial.count, why,
        )
        self._forget(key)
        self.dropped += 1

    def _forget(self, key: tuple[str, bytes]) -> None:
        partial = self._partials.pop(key)
        self._buffered -= partial.received
        remaining = self._per_sender[key[0]] - 1
        if remaining:
            self._per_sender[key[0]] = remaining
        else:
            del self._per_sender[key[0]]

    def _remember_complete(self, key: tuple[str, bytes]) -> None:
        self._complete[key] = None
        if len(self._complete) > _REMEMBERED_COMPLETE:
            self._complete.popitem(last=False)
