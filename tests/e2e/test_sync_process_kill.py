"""An edge process killed with SIGKILL mid-sync and started again: every entry it wrote reaches the hub once.

The edge is a real subprocess (``tests/e2e/sync_edge_process.py``): an agent
answering requests, recording each into its outbox, and EdgeSync draining it
through Mosquitto to a HubSync in this process. The first run is killed while
entries are in flight and others wait in the outbox; the second run sends
them, and its own, and exits cleanly. The outbox's ids ``1 .. last_seq`` are
then exactly the store's ids.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.cloud_hub.store import SqliteStore
from tests.fixtures.broker import Mosquitto
from tests.integration.sync_support import closing_all, hub_config, start_hub_sync, wait_until, write_toy_plan

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]


def start_edge(
    broker: Mosquitto, workdir: Path, plan: Path, log: Path, inferences: int, pause_after: int | None = None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.e2e.sync_edge_process", "--port", str(broker.port), "--workdir",
               str(workdir), "--plan", str(plan), "--device", "cam-1", "--inferences", str(inferences),
               "--rate", "1000"]  # fmt: skip
    if pause_after is not None:
        command += ["--pause-after", str(pause_after)]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def outbox_ids(path: Path) -> set[str]:
    """Every id the outbox handed out, read without opening it as an Outbox."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        waiting = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    assert waiting == 0, f"{waiting} entries still in the outbox"
    return {f"{meta['device']}:{meta['epoch']}:{seq}" for seq in range(1, (row[0] if row else 0) + 1)}


def test_edge_killed_mid_sync_and_restarted_loses_and_duplicates_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    plan = write_toy_plan(tmp_path / "plan", plan_id="toy-a", scale=1.0).folder
    workdir = tmp_path / "edge"
    workdir.mkdir()
    log = tmp_path / "edge.log"
    store = SqliteStore(tmp_path / "store")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    with closing_all(store, hub):
        first = start_edge(mosquitto, workdir, plan, log, inferences=3000, pause_after=1500)
        try:
            wait_until(lambda: store.count() >= 800, 30, "800 entries stored by the first run")
            wait_until(lambda: "paused after 1500" in log.read_text(), 30, "the first run paused mid-stream")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        assert "produced 3000" not in log.read_text()  # killed mid-stream (it paused after 1500)
        stored_after_kill = store.count()
        second = start_edge(mosquitto, workdir, plan, log, inferences=1000)
        try:
            wait_until(lambda: "produced 1000" in log.read_text(), 30, "the second run's requests answered")
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        assert second.returncode == 0, log.read_text()[-3000:]
        expected = outbox_ids(workdir / "outbox.sqlite")
        wait_until(lambda: store.count() == len(expected), 10, "the store holding every entry")
        assert store.record_ids(device="cam-1") == expected
        assert store.count(kind="record") >= 1000 + stored_after_kill * 9 // 10 - 10
        assert len(expected) > stored_after_kill + 1000
        time.sleep(0.5)
        assert store.count() == len(expected)  # nothing late either
