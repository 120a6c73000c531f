"""Where the hub keeps what the fleet sends: a small storage interface and its SQLite + files implementation.

:class:`Store` is what :class:`tandem.cloud_hub.sync.HubSync` and ``tandem fleet``
need; another backend (a shared SQL database for several hub replicas, an
object store for samples) implements the same methods.

:class:`SqliteStore` keeps, in its folder::

    store.sqlite      records (record_id PRIMARY KEY, device, kind, created, received, body JSON,
                               blob, blob_offset, size)
                      devices (device PRIMARY KEY, last_seen, status JSON, records, samples, telemetry, duplicates)
                      releases (plan_id, version, directory, manifest JSON, published)  plans it serves
                      targets (target PRIMARY KEY, plan_id, version, set_at)  device:<id> / group:<name>
    samples/<device>/<batch>.tdms      the packed sample envelopes of one stored batch, as the edge sent them,
                                       one after the other (a record's ``blob``, ``blob_offset`` and ``size`` find it)

De-duplication is the records table's primary key: an entry that arrives
again (a resend after a lost acknowledgement) is recognised and not stored
twice. A batch's new samples go into one file, written, fsynced and renamed
into place before the rows are committed (one fsync per batch rather than per
sample), so a committed row always has its bytes; with ``synchronous=full``
the commit is on disk before the hub acknowledges it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tandem.contracts.manifest import PlanManifest, safe_name
from tandem.errors import TandemError

__all__ = ["DeviceRow", "Release", "SqliteStore", "Store", "StoreError", "StoredItem"]

DB_FILE = "store.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    received REAL NOT NULL,
    body TEXT NOT NULL,
    blob TEXT,
    blob_offset INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_device ON records (device, kind);
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    status TEXT NOT NULL DEFAULT '{}',
    records INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    telemetry INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS releases (
    plan_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    directory TEXT NOT NULL,
    manifest TEXT NOT NULL,
    published REAL NOT NULL,
    PRIMARY KEY (plan_id, version)
);
CREATE TABLE IF NOT EXISTS targets (
    target TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    set_at REAL NOT NULL
);
"""
_COUNT_COLUMN = {"record": "records", "sample": "samples", "telemetry": "telemetry"}


class StoreError(TandemError):
    """The store cannot be opened or written; the message names the path."""


@dataclass(frozen=True)
class StoredItem:
    """One entry from an edge: its id, who sent it, what it is, and its body (plus a blob for samples)."""

    record_id: str
    device: str
    kind: str
    created: float
    body: dict[str, Any]
    blob: bytes | memoryview | None = None


@dataclass
class DeviceRow:
    """One device in the fleet view."""

    device: str
    last_seen: float
    records: int = 0
    samples: int = 0
    telemetry: int = 0
    duplicates: int = 0
    status: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the device's last status report."""
        return self.status.get(key, default)


@dataclass(frozen=True)
class Release:
    """A plan version the hub serves: its manifest and the folder its files are in."""

    manifest: PlanManifest
    directory: Path
    published: float


class Store(ABC):
    """What the hub stores: entries (de-duplicated by record id), device status, plan releases and targets."""

    @abstractmethod
    def put(self, items: Sequence[StoredItem]) -> list[str]:
        """Store the entries not held yet; the ids that were new."""

    @abstractmethod
    def count(self, *, device: str | None = None, kind: str | None = None) -> int:
        """Entries held, optionally of one device and/or kind."""

    @abstractmethod
    def record_ids(self, *, device: str | None = None, kind: str | None = None) -> set[str]:
        """Ids of the entries held."""

    @abstractmethod
    def record(self, record_id: str) -> dict[str, Any] | None:
        """One entry: its columns and body, or None."""

    @abstractmethod
    def sample_blob(self, record_id: str) -> bytes | None:
        """The packed envelope of a sample, or None."""

    @abstractmethod
    def touch_device(self, device: str, *, seen: float, status: dict[str, Any] | None = None) -> None:
        """Note that ``device`` was heard from, with its latest status report if any."""

    @abstractmethod
    def devices(self) -> list[DeviceRow]:
        """Every device heard from, by id."""

    @abstractmethod
    def save_release(self, release: Release) -> None:
        """Remember a plan version the hub serves."""

    @abstractmethod
    def releases(self) -> list[Release]:
        """Every plan version the hub serves."""

    @abstractmethod
    def set_target(self, target: str, plan_id: str, version: int) -> None:
        """``target`` (``device:<id>`` or ``group:<name>``) should run this plan version."""

    @abstractmethod
    def targets(self) -> dict[str, tuple[str, int]]:
        """Every target and its (plan id, version)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; idempotent."""


class SqliteStore(Store):
    """The default store: SQLite plus sample files in ``root`` (see the module docstring)."""

    def __init__(
        self, root: str | Path, *, synchronous: Literal["normal", "full"] = "full", readonly: bool = False
    ) -> None:
        self.root = Path(root)
        self.samples_dir = self.root / "samples"
        self.path = self.root / DB_FILE
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no hub store here (the hub's sync.store.path)")
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                self.samples_dir.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the hub store: {exc}") from exc
        self._closed = False

    # -- entries --------------------------------------------------------------------------------------------------

    def put(self, items: Sequence[StoredItem]) -> list[str]:
        """Store the entries not held yet, in one transaction (their sample blobs written first); the new ids.

        The check for what is held runs inside the write transaction, so hub
        replicas sharing the store never both count an entry as new.
        """
        if not items:
            return []
        with self._lock:
            self._check_open()
            ids = [item.record_id for item in items]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                query = f"SELECT record_id FROM records WHERE record_id IN ({_marks(ids)})"
                held = {row[0] for row in self._db.execute(query, ids)}
                new: dict[str, StoredItem] = {}
                for item in items:
                    if item.record_id not in held:
                        new.setdefault(item.record_id, item)
                blobs = self._write_blobs([item for item in new.values() if item.blob is not None])
                now = time.time()
                rows = [
                    (rid, item.device, item.kind, item.created, now, json.dumps(item.body, default=str),
                     *blobs.get(rid, (None, 0)), len(item.blob) if item.blob is not None else 0)
                    for rid, item in new.items()
                ]  # fmt: skip
                self._db.executemany("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                per_device: dict[tuple[str, str], int] = {}
                for item in new.values():
                    per_device[(item.device, item.kind)] = per_device.get((item.device, item.kind), 0) + 1
                for (device, kind), count in per_device.items():
                    self._upsert_device(device, now)
                    column = _COUNT_COLUMN.get(kind, "records")
                    self._db.execute(f"UPDATE devices SET {column} = {column} + ? WHERE device = ?", (count, device))
                duplicates: dict[str, int] = {}
                for item in items:
                    if item.record_id in held:
                        duplicates[item.device] = duplicates.get(item.device, 0) + 1
                for device, count in duplicates.items():
                    self._upsert_device(device, now)
                    self._db.execute("UPDATE devices SET duplicates = duplicates + ? WHERE device = ?", (count, device))
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                self._rollback()
                raise StoreError(f"{self.path}: storing {len(items)} entries failed: {exc}") from exc
        return list(new)

    def _write_blobs(self, items: Sequence[StoredItem]) -> dict[str, tuple[str, int]]:
        """Write the blobs of ``items`` into one file per device; record id -> (file, offset)."""
        placed: dict[str, tuple[str, int]] = {}
        by_device: dict[str, list[StoredItem]] = {}
        for item in items:
            by_device.setdefault(item.device, []).append(item)
        for device, mine in by_device.items():
            folder = self.samples_dir / safe_name(device)
            folder.mkdir(parents=True, exist_ok=True)
            relative = f"{safe_name(device)}/{safe_name(mine[0].record_id)}-{uuid.uuid4().hex[:8]}.tdms"
            final = self.samples_dir / relative
            temporary = final.with_name(final.name + ".tmp")
            offset = 0
            with temporary.open("wb") as handle:
                for item in mine:
                    handle.write(item.blob)  # type: ignore[arg-type]
                    placed[item.record_id] = (relative, offset)
                    offset += len(item.blob)  # type: ignore[arg-type]
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_dir(folder)
        return placed

    def count(self, *, device: str | None = None, kind: str | None = None) -> int:
        """Entries held, optionally of one device and/or kind."""
        where, args = _filters(device, kind)
        with self._lock:
            self._check_open()
            return int(self._db.execute(f"SELECT COUNT(*) FROM records{where}", args).fetchone()[0])

    def record_ids(self, *, device: str | None = None, kind: str | None = None) -> set[str]:
        """Ids of the entries held."""
        where, args = _filters(device, kind)
        with self._lock:
            self._check_open()
            return {row[0] for row in self._db.execute(f"SELECT record_id FROM records{where}", args)}

    def record(self, record_id: str) -> dict[str, Any] | None:
        """One entry: its columns and body, or None."""
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT record_id, device, kind, created, received, body, blob, blob_offset, size FROM records "
                "WHERE record_id = ?",
                (record_id,),
            ).fetchone()
        if row is None:
            return None
        keys = ("record_id", "device", "kind", "created", "received", "body", "blob", "offset", "size")
        found = dict(zip(keys, row, strict=True))
        found["body"] = json.loads(found["body"])
        return found

    def sample_blob(self, record_id: str) -> bytes | None:
        """The packed envelope of a sample, or None."""
        found = self.record(record_id)
        if found is None or not found["blob"]:
            return None
        with (self.samples_dir / found["blob"]).open("rb") as handle:
            handle.seek(found["offset"])
            return handle.read(found["size"])

    # -- devices --------------------------------------------------------------------------------------------------

    def touch_device(self, device: str, *, seen: float, status: dict[str, Any] | None = None) -> None:
        """Note that ``device`` was heard from, with its latest status report if any."""
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._upsert_device(device, seen)
                if status is not None:
                    self._db.execute(
                        "UPDATE devices SET status = ? WHERE device = ?", (json.dumps(status, default=str), device)
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"{self.path}: updating device {device!r} failed: {exc}") from exc

    def devices(self) -> list[DeviceRow]:
        """Every device heard from, by id."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT device, last_seen, records, samples, telemetry, duplicates, status FROM devices ORDER BY device"
            ).fetchall()
        return [DeviceRow(d, seen, r, s, t, dup, json.loads(status)) for d, seen, r, s, t, dup, status in rows]

    def _upsert_device(self, device: str, seen: float) -> None:
        self._db.execute(
            "INSERT INTO devices (device, last_seen) VALUES (?, ?) "
            "ON CONFLICT(device) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
            (device, seen),
        )

    # -- plans ----------------------------------------------------------------------------------------------------

    def save_release(self, release: Release) -> None:
        """Remember a plan version the hub serves."""
        manifest = release.manifest
        self._write(
            "INSERT OR REPLACE INTO releases VALUES (?, ?, ?, ?, ?)",
            (manifest.plan_id, manifest.version, str(release.directory), json.dumps(manifest.to_meta()),
             release.published),
        )  # fmt: skip

    def releases(self) -> list[Release]:
        """Every plan version the hub serves."""
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT directory, manifest, published FROM releases ORDER BY published").fetchall()
        return [Release(PlanManifest.from_meta(json.loads(m)), Path(d), p) for d, m, p in rows]

    def set_target(self, target: str, plan_id: str, version: int) -> None:
        """``target`` (``device:<id>`` or ``group:<name>``) should run this plan version."""
        self._write("INSERT OR REPLACE INTO targets VALUES (?, ?, ?, ?)", (target, plan_id, version, time.time()))

    def targets(self) -> dict[str, tuple[str, int]]:
        """Every target and its (plan id, version)."""
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT target, plan_id, version FROM targets").fetchall()
        return {target: (plan_id, int(version)) for target, plan_id, version in rows}

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, args: Iterable[Any]) -> None:
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(sql, tuple(args))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _filters(device: str | None, kind: str | None) -> tuple[str, list[str]]:
    clauses, args = [], []
    if device is not None:
        clauses.append("device = ?")
        args.append(device)
    if kind is not None:
        clauses.append("kind = ?")
        args.append(kind)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
