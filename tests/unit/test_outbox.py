"""The durable outbox: ids, acknowledgements, persistence, bounds and what happens when full."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from tandem.edge_agent.outbox import Outbox, OutboxError, OutboxStorageError, RecordTooLarge
from tandem.edge_agent.sync_config import OutboxConfig
from tests.fixtures.full_disk import cap_at_current_size


def body(i: int, size: int = 10) -> bytes:
    return f"{i:08d}".encode().ljust(size, b".")


def test_ids_name_device_epoch_and_seq_and_ack_deletes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="cam-1") as outbox:
        ids = [outbox.put("record", body(i)) for i in range(5)]
        assert ids == [f"cam-1:{outbox.epoch}:{seq}" for seq in range(1, 6)]
        entries = outbox.peek(limit=3)
        assert [e.record_id for e in entries] == ids[:3]
        assert [e.body for e in entries] == [body(i) for i in range(3)]
        assert outbox.peek(after_seq=entries[-1].seq)[0].record_id == ids[3]
        assert outbox.ack([*ids[:2], "cam-2:xx:3", f"cam-1:{outbox.epoch}:notanumber"]) == 2
        assert outbox.backlog == 3
        assert [e.record_id for e in outbox.peek()] == ids[2:]
        assert outbox.counters()["acked"] == 2
        assert outbox.ack(ids[2:3], rejected=True) == 1
        assert outbox.counters()["rejected"] == 1
        assert outbox.last_seq == 5


def test_entries_counters_and_epoch_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, device_id="cam-1", max_records=3) as outbox:
        epoch = outbox.epoch
        ids = outbox.put_many([("record", body(i)) for i in range(5)])
        outbox.ack(ids[3:4])
    with Outbox(path, device_id="cam-1", max_records=3) as again:
        assert again.epoch == epoch
        assert again.backlog == 2
        assert again.bytes == 2 * len(body(0))
        assert again.counters() == {"dropped": 2, "too_large": 0, "rejected": 0, "acked": 1}
        assert again.put("telemetry", b"t") == f"cam-1:{epoch}:6"  # seqs are never reused
        assert [e.kind for e in again.peek()] == ["record", "record", "telemetry"]


def test_drop_oldest_by_count_and_by_bytes(tmp_path: Path) -> None:
    with Outbox(tmp_path / "rows.sqlite", device_id="d", max_records=4, when_full="drop_oldest") as outbox:
        for i in range(10):
            outbox.put("record", body(i))
        assert outbox.backlog == 4
        assert outbox.dropped == 6
        assert [e.body for e in outbox.peek()] == [body(i) for i in range(6, 10)]
    with Outbox(tmp_path / "bytes.sqlite", device_id="d", max_bytes=2048, max_record_bytes=1024) as outbox:
        for i in range(5):
            outbox.put("sample", body(i, 600))
        assert outbox.backlog == 3
        assert outbox.bytes == 1800
        assert outbox.dropped == 2
        outbox.put("sample", body(99, 1000))  # needs two of the 600-byte entries gone
        assert [e.body[:8] for e in outbox.peek()] == [body(4)[:8], body(99)[:8]]
        assert outbox.dropped == 4


def test_a_full_disk_refuses_the_write_names_the_file_and_loses_nothing_stored(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="d", max_records=3, when_full="drop_oldest") as outbox:
        ids = [outbox.put("record", body(i, 2000)) for i in range(3)]
        cap = cap_at_current_size(outbox._db)
        # the put would drop the oldest entry to make room, then fails on the disk: the drop is rolled back too
        full = r"o\.sqlite: storing 1 sample entry failed: database or disk is full"
        with pytest.raises(OutboxStorageError, match=full):
            outbox.put("sample", body(9, 50_000))
        assert outbox.backlog == 3 and outbox.bytes == 6000 and outbox.dropped == 0
        assert [e.record_id for e in outbox.peek()] == ids
        outbox._db.execute(f"PRAGMA max_page_count = {cap}")  # space freed: writing works again
        assert outbox.put("sample", body(9, 50_000)) is not None
        assert outbox.backlog == 3 and outbox.dropped == 1
    with Outbox(tmp_path / "o.sqlite", device_id="d", max_records=3) as reopened:
        assert reopened.backlog == 3 and reopened.bytes == 2 * 2000 + 50_000


def test_stop_sampling_refuses_new_entries_until_the_backlog_drains(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="d", max_records=3, when_full="stop_sampling") as outbox:
        ids = [outbox.put("record", body(i)) for i in range(3)]
        assert outbox.full
        assert outbox.put("sample", body(3)) is None
        assert outbox.put_many([("record", body(4)), ("record", body(5))]) == [None, None]
        assert outbox.dropped == 3
        assert [e.body for e in outbox.peek()] == [body(i) for i in range(3)]
        outbox.ack(ids[:1])
        assert not outbox.full
        assert outbox.put("record", body(6)) is not None


def test_an_entry_over_the_limit_is_refused_with_a_named_reason(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="d", max_record_bytes=1000, max_bytes=4096) as outbox:
        with pytest.raises(RecordTooLarge, match=r"record_too_large: a sample entry of 1001 bytes is over the "
                           r"outbox limit of 1000 bytes \(sync.outbox.max_record_bytes\)"):  # fmt: skip
            outbox.put("sample", bytes(1001))
        assert outbox.backlog == 0
        assert outbox.counters()["too_large"] == 1
        assert outbox.put("sample", bytes(1000)) is not None
        with pytest.raises(ValueError, match="outbox entry kind 'activation': expected one of record, sample"):
            outbox.put("activation", b"x")


def test_another_devices_outbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    Outbox(path, device_id="cam-1").close()
    with pytest.raises(OutboxError, match=r"this outbox belongs to device 'cam-1', not 'cam-2'; give sync.outbox.path"):
        Outbox(path, device_id="cam-2")


def test_a_file_that_is_not_an_outbox_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"o.sqlite: not a usable outbox: file is not a database"):
        Outbox(path, device_id="d")


def test_peek_respects_max_bytes_but_returns_at_least_one(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="d", max_record_bytes=4096) as outbox:
        outbox.put_many([("sample", bytes(3000)), ("record", bytes(100)), ("record", bytes(100))])
        assert len(outbox.peek(max_bytes=1000)) == 1
        assert [len(e.body) for e in outbox.peek(after_seq=1, max_bytes=250)] == [100, 100]
        assert [e.seq for e in outbox.get([3, 1, 42])] == [1, 3]


def test_wal_journal_and_the_configured_synchronous_mode(tmp_path: Path) -> None:
    config = OutboxConfig(path=Path("sub/o.sqlite"), synchronous="full", max_records=10)
    with Outbox.from_config(config, device_id="d", base=tmp_path) as outbox:
        assert outbox.path == tmp_path / "sub" / "o.sqlite"
        assert outbox.max_records == 10
        outbox.put("record", b"x")
        check = sqlite3.connect(outbox.path)
        try:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            check.close()


def test_concurrent_writers_and_a_drainer_lose_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", device_id="d") as outbox:
        written: list[str] = []
        lock = threading.Lock()

        def write(worker: int) -> None:
            for i in range(500):
                record_id = outbox.put("record", body(worker * 1000 + i))
                with lock:
                    written.append(str(record_id))

        writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in writers:
            thread.start()
        drained: list[str] = []
        while any(t.is_alive() for t in writers) or outbox.backlog:
            entries = outbox.peek(limit=100)
            outbox.ack([e.record_id for e in entries])
            drained += [e.record_id for e in entries]
        for thread in writers:
            thread.join()
        assert len(drained) == len(set(drained)) == 2000
        assert set(drained) == set(written)
        assert outbox.last_seq == 2000
        assert outbox.counters()["acked"] == 2000


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def full_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tandem.edge.outbox" and r.levelno == logging.WARNING]


def test_drops_warn_at_once_then_once_a_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    with caplog.at_level(logging.WARNING), Outbox(path, device_id="d", max_records=2) as outbox:
        outbox._loss_log.clock = clock = FakeClock()
        outbox.put_many([("record", body(i)) for i in range(3)])
        assert full_warnings(caplog) == [
            f"outbox {path} is full (max_records reached): 1 oldest entry dropped; raise sync.outbox.max_records, "
            "or find why the hub does not acknowledge (the persisted 'dropped' counter keeps the total)"
        ]
        for i in range(5):
            clock.now += 10
            outbox.put("record", body(i))
        assert len(full_warnings(caplog)) == 1  # within the minute: counted, not logged
        clock.now += 20
        outbox.put("record", body(9))
        assert full_warnings(caplog)[1].startswith(
            f"outbox {path} is full (max_records reached): 6 oldest entries dropped in the last 70 s; "
            "raise sync.outbox.max_records"
        )
        clock.now += 5
        outbox.put("record", body(10))
        assert len(full_warnings(caplog)) == 2
        assert outbox.dropped == 8
    assert full_warnings(caplog)[2].startswith(  # closing logs what was left untold
        f"outbox {path} is full (max_records reached): 1 oldest entry dropped in the last 5 s"
    )


def test_stop_sampling_refusals_are_warned_with_the_bound_hit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    with caplog.at_level(logging.WARNING), Outbox(path, device_id="d", max_bytes=2048, max_record_bytes=1024,
                                                  when_full="stop_sampling") as outbox:  # fmt: skip
        for i in range(4):
            outbox.put("sample", body(i, 1000))
        assert full_warnings(caplog) == [
            f"outbox {path} is full (max_bytes reached): 1 new entry refused (when_full: stop_sampling); "
            "raise sync.outbox.max_bytes, or find why the hub does not acknowledge "
            "(the persisted 'dropped' counter keeps the total)"
        ]
    assert full_warnings(caplog)[1].startswith(f"outbox {path} is full (max_bytes reached): 1 new entry refused")
