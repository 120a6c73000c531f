"""The edge's durable outbox: records, samples and telemetry wait here (SQLite) until the hub acknowledges them.

Every entry is written to disk before anything is sent, and deleted only when
the hub's acknowledgement names it, so a killed process, a broker restart or a
link that is down for hours loses nothing that was written (delivery is
at-least-once; the hub de-duplicates by record id).

Record ids are ``{device}:{epoch}:{seq}``: ``seq`` is SQLite's AUTOINCREMENT
key (never reused, also after deletes and restarts) and ``epoch`` a random tag
made when the outbox file is created, so that a re-created outbox never reuses
an id the hub already holds. The ids of everything ever written are therefore
``{device}:{epoch}:1 .. last_seq``.

Schema::

    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, created REAL, size INTEGER, body BLOB)
    counters(name TEXT PRIMARY KEY, value INTEGER)     dropped, too_large, rejected, acked
    meta(key TEXT PRIMARY KEY, value TEXT)             device, epoch

``body`` is msgpack for ``record`` and ``telemetry`` entries and a packed
envelope (:func:`tandem.transport.envelope.pack`) for ``sample`` entries.

Durability: WAL journal with ``synchronous=NORMAL`` by default. A commit then
reaches the WAL file (the OS page cache) before ``put`` returns, which survives
``kill -9`` and OOM kills; only a power cut or kernel crash can lose the last
few commits, and never corrupts the file. ``FULL`` closes that gap with an
fsync per commit, which on eMMC costs milliseconds per inference record. A
lost delete only means a resend, which the hub de-duplicates.

Bounds: at most ``max_records`` entries and ``max_bytes`` of bodies. When a new
entry does not fit, ``drop_oldest`` deletes the oldest entries to make room
and ``stop_sampling`` refuses the new one; both count what was lost in the
persisted ``dropped`` counter. One entry over ``max_record_bytes`` raises
:class:`RecordTooLarge` (counted as ``too_large``). A write SQLite cannot make
(the disk is full, an I/O error) is rolled back and raises
:class:`OutboxStorageError`, naming the file; what was stored stays. Losses are logged at
WARNING, naming the file, the bound hit and the config key to raise: the first
at once, then at most one summary line a minute (and one at ``close``) with the
count since the line before.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tandem.edge_agent.sync_config import OutboxConfig
from tandem.errors import TandemError

__all__ = ["ENTRY_KINDS", "Outbox", "OutboxEntry", "OutboxError", "OutboxStorageError", "RecordTooLarge"]

logger = logging.getLogger("tandem.edge.outbox")

ENTRY_KINDS = ("record", "sample", "telemetry")
_COUNTERS = ("dropped", "too_large", "rejected", "acked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(TandemError):
    """The outbox refused an entry or cannot be used; ``code`` names why."""

    code = "outbox_error"


class RecordTooLarge(OutboxError):
    """An entry is over ``max_record_bytes``."""

    code = "record_too_large"


class OutboxStorageError(OutboxError):
    """SQLite could not write (the disk is full, an I/O error); the write was rolled back."""

    code = "storage_failed"


class _LossLog:
    """WARNING lines for entries a full outbox drops or refuses: the first at once, then one summary a minute."""

    def __init__(self, path: Path, when_full: str, *, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.path = path
        refused = "new {} refused (when_full: stop_sampling)"
        self.lost_as = "oldest {} dropped" if when_full == "drop_oldest" else refused
        self.interval_s = interval_s
        self.clock = clock
        self.pending = 0
        self.limits: set[str] = set()
        self.last: float | None = None

    def lost(self, count: int, limits: Iterable[str]) -> None:
        """Note ``count`` entries lost to ``limits``; log if they are the first, or a minute after the last line."""
        self.pending += count
        self.limits.update(limits)
        if self.last is None or self.clock() - self.last >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Log what was lost since the last line, if anything."""
        if not self.pending:
            return
        since = "" if self.last is None else f" in the last {self.clock() - self.last:.0f} s"
        entries = self.lost_as.format("entry" if self.pending == 1 else "entries")
        hit = " and ".join(sorted(self.limits))
        keys = " / ".join(f"sync.outbox.{limit}" for limit in sorted(self.limits))
        logger.warning(
            "outbox %s is full (%s reached): %d %s%s; raise %s, or find why the hub does not acknowledge "
            "(the persisted 'dropped' counter keeps the total)",
            self.path, hit, self.pending, entries, since, keys,
        )  # fmt: skip
        self.pending = 0
        self.limits.clear()
        self.last = self.clock()


@dataclass(frozen=True)
class OutboxEntry:
    """One stored entry."""

    seq: int
    record_id: str
    kind: str
    created: float
    body: bytes


class Outbox:
    """A bounded, durable FIFO of entries awaiting acknowledgement (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        device_id: str,
        max_records: int = 100_000,
        max_bytes: int = 512 << 20,
        when_full: Literal["drop_oldest", "stop_sampling"] = "drop_oldest",
        max_record_bytes: int = 4 << 20,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        if when_full not in ("drop_oldest", "stop_sampling"):
            raise ValueError(f"when_full: expected 'drop_oldest' or 'stop_sampling', got {when_full!r}")
        if max_record_bytes > max_bytes:
            raise ValueError(f"max_record_bytes ({max_record_bytes}) cannot exceed max_bytes ({max_bytes})")
        self.path = Path(path)
        self.device_id = device_id
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.max_record_bytes = max_record_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
            self.epoch = self._identity()
            self._reload_totals()
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"{self.path}: not a usable outbox: {exc}") from exc
        except OutboxError:
            self._db.close()
            raise
        self._prefix = f"{device_id}:{self.epoch}:"
        self._closed = False
        self._loss_log = _LossLog(self.path, when_full)
        logger.info(
            "outbox %s: %d entries (%d bytes) waiting, epoch %s, when full: %s",
            self.path, self._count, self._bytes, self.epoch, when_full,
        )  # fmt: skip

    @classmethod
    def from_config(cls, config: OutboxConfig, *, device_id: str, base: Path | None = None) -> Outbox:
        """The outbox ``config`` describes; a relative path is taken from ``base`` (the config's folder)."""
        path = config.path if base is None or config.path.is_absolute() else base / config.path
        return cls(
            path,
            device_id=device_id,
            max_records=config.max_records,
            max_bytes=config.max_bytes,
            when_full=config.when_full,
            max_record_bytes=config.max_record_bytes,
            synchronous=config.synchronous,
        )

    # -- writing ------------------------------------------------------------------------------------------------

    def put(self, kind: str, body: bytes, *, created: float | None = None) -> str | None:
        """Store one entry; its record id, or None when ``stop_sampling`` refused it for lack of room."""
        return self.put_many([(kind, body)], created=created)[0]

    def put_many(self, items: Iterable[tuple[str, bytes]], *, created: float | None = None) -> list[str | None]:
        """Store several entries in one transaction; a record id (or None, refused) for each."""
        entries = list(items)
        for kind, body in entries:
            self._check_entry(kind, body)
        when = time.time() if created is None else created
        ids: list[str | None] = []
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                dropped, limits = 0, set[str]()
                for kind, body in entries:
                    limits.update(self._limits_hit(len(body)))
                    made_room, refused = self._make_room(len(body))
                    dropped += made_room + refused
                    if refused:
                        ids.append(None)
                        continue
                    cursor = self._db.execute(
                        "INSERT INTO outbox (kind, created, size, body) VALUES (?, ?, ?, ?)",
                        (kind, when, len(body), body),
                    )
                    self._count += 1
                    self._bytes += len(body)
                    ids.append(f"{self._prefix}{cursor.lastrowid}")
                if dropped:
                    self._bump("dropped", dropped)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._reload_totals()
                what = f"{len(entries)} {'/'.join(sorted({kind for kind, _ in entries}))} entr"
                what += "y" if len(entries) == 1 else "ies"
                raise OutboxStorageError(f"{self.path}: storing {what} failed: {exc}") from exc
            except BaseException:
                self._rollback()
                self._reload_totals()
                raise
            if dropped:
                self._loss_log.lost(dropped, limits)
        return ids

    def _check_entry(self, kind: str, body: bytes) -> None:
        if kind not in ENTRY_KINDS:
            raise ValueError(f"outbox entry kind {kind!r}: expected one of {', '.join(ENTRY_KINDS)}")
        if len(body) > self.max_record_bytes:
            with self._lock:
                self._check_open()
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._bump("too_large", 1)
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    self._rollback()  # the counter is lost, not the answer: the entry is refused either way
            raise RecordTooLarge(
                f"record_too_large: a {kind} entry of {len(body)} bytes is over the outbox limit of "
                f"{self.max_record_bytes} bytes (sync.outbox.max_record_bytes); not stored"
            )

    def _limits_hit(self, size: int) -> list[str]:
        """The bounds one more entry of ``size`` would break: ``max_records``, ``max_bytes``, both or none."""
        over = {"max_records": self._count + 1 > self.max_records, "max_bytes": self._bytes + size > self.max_bytes}
        return [name for name, hit in over.items() if hit]

    def _make_room(self, size: int) -> tuple[int, int]:
        """(entries dropped, 1 if the new one is refused) so that one more entry of ``size`` fits."""
        over_rows = self._count + 1 - self.max_records
        over_bytes = self._bytes + size - self.max_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return 0, 0
        if self.when_full == "stop_sampling":
            return 0, 1
        doomed: list[tuple[int]] = []
        freed_rows = freed_bytes = after = 0
        while freed_rows < over_rows or freed_bytes < over_bytes:
            rows = self._db.execute(
                "SELECT seq, size FROM outbox WHERE seq > ? ORDER BY seq LIMIT 256", (after,)
            ).fetchall()
            if not rows:
                break
            for seq, entry_size in rows:
                if freed_rows >= over_rows and freed_bytes >= over_bytes:
                    break
                doomed.append((seq,))
                after = seq
                freed_rows += 1
                freed_bytes += entry_size
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", doomed)
        self._count -= freed_rows
        self._bytes -= freed_bytes
        return freed_rows, 0

    # -- reading and acknowledging ------------------------------------------------------------------------------

    def peek(self, *, after_seq: int = 0, limit: int = 200, max_bytes: int | None = None) -> list[OutboxEntry]:
        """The oldest entries with ``seq > after_seq``: at most ``limit``, and ``max_bytes`` (but at least one)."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, kind, created, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        entries: list[OutboxEntry] = []
        total = 0
        for seq, kind, created, body in rows:
            if entries and max_bytes is not None and total + len(body) > max_bytes:
                break
            entries.append(OutboxEntry(seq, f"{self._prefix}{seq}", kind, created, bytes(body)))
            total += len(body)
        return entries

    def get(self, seqs: Sequence[int]) -> list[OutboxEntry]:
        """The entries among ``seqs`` still in the outbox, in seq order."""
        if not seqs:
            return []
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT seq, kind, created, body FROM outbox WHERE seq IN ({','.join('?' * len(seqs))}) ORDER BY seq",
                list(seqs),
            ).fetchall()
        return [OutboxEntry(seq, self.record_id(seq), kind, created, bytes(body)) for seq, kind, created, body in rows]

    def seq_of(self, record_id: str) -> int | None:
        """The seq in ``record_id``, or None when the id is not one of this outbox's."""
        if not record_id.startswith(self._prefix):
            return None
        tail = record_id[len(self._prefix) :]
        return int(tail) if tail.isdigit() else None

    def ack(self, record_ids: Iterable[str], *, rejected: bool = False) -> int:
        """Delete the entries the hub acknowledged (or ``rejected``); the number deleted."""
        return self.ack_seqs([seq for seq in map(self.seq_of, record_ids) if seq is not None], rejected=rejected)

    def ack_seqs(self, seqs: Iterable[int], *, rejected: bool = False) -> int:
        """:meth:`ack` by seq rather than record id."""
        seqs = sorted(set(seqs))
        if not seqs:
            return 0
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(seqs))
                count, size = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE seq IN ({marks})", seqs
                ).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)
                self._bump("rejected" if rejected else "acked", count)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                failed = f"deleting {len(seqs)} acknowledged entries failed"
                raise OutboxStorageError(f"{self.path}: {failed}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            self._count -= count
            self._bytes -= size
        return int(count)

    # -- state ----------------------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Entries waiting for an acknowledgement."""
        return self._count

    @property
    def bytes(self) -> int:
        """Bytes of the waiting entries' bodies."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether one more small entry would not fit (``stop_sampling`` would refuse it)."""
        return self._count >= self.max_records or self._bytes >= self.max_bytes

    @property
    def last_seq(self) -> int:
        """The seq of the last entry ever written (0 if none): ids ``1 .. last_seq`` were written."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def record_id(self, seq: int) -> str:
        """The record id of entry ``seq``."""
        return f"{self._prefix}{seq}"

    def counters(self) -> dict[str, int]:
        """The persisted counters: dropped (full), too_large, rejected (by the hub), acked."""
        with self._lock:
            self._check_open()
            stored = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {name: int(stored.get(name, 0)) for name in _COUNTERS}

    @property
    def dropped(self) -> int:
        """Entries lost because the outbox was full (persisted across restarts)."""
        return self.counters()["dropped"]

    def stats(self) -> dict[str, int]:
        """Backlog, bytes, written and the counters, for status reports and metrics."""
        return {"backlog": self._count, "bytes": self._bytes, "written": self.last_seq, **self.counters()}

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._loss_log.flush()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------------

    def _identity(self) -> str:
        stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "device" in stored and stored["device"] != self.device_id:
            raise OutboxError(
                f"{self.path}: this outbox belongs to device {stored['device']!r}, not {self.device_id!r}; "
                "give sync.outbox.path a file of this device's own"
            )
        if "epoch" in stored:
            return str(stored["epoch"])
        epoch = secrets.token_hex(4)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)", [("device", self.device_id), ("epoch", epoch)]
        )
        self._db.execute("COMMIT")
        return epoch

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _reload_totals(self) -> None:
        """Count and bytes of the waiting entries, from the file (at open, and after a rolled-back write)."""
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(count), int(size)

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: the outbox is closed")
