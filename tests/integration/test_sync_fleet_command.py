"""``tandem fleet`` reading a hub store that a real HubSync filled from a real EdgeSync."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgpack
import pytest

from tandem.cli import main
from tandem.cloud_hub.store import SqliteStore
from tandem.commands import fleet
from tandem.config import ConfigError
from tandem.edge_agent.outbox import Outbox
from tests.fixtures.broker import Mosquitto
from tests.integration.sync_support import (
    closing_all,
    edge_config,
    hub_config,
    start_edge_sync,
    start_hub_sync,
    wait_until,
)

pytestmark = pytest.mark.broker


def fleet_command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tandem")
    fleet.register(parser.add_subparsers())
    return parser.parse_args(["fleet", *argv])


@pytest.fixture
def filled_store(mosquitto: Mosquitto, tmp_path: Path) -> Path:
    store = SqliteStore(tmp_path / "hub" / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-7")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path, groups=["line-3"]), outbox, "cam-7",
                           link_estimate=lambda: (23.4, 8.5))  # fmt: skip
    with closing_all(store, outbox, hub, edge):
        outbox.put_many([("record", msgpack.packb({"i": i})) for i in range(30)])
        wait_until(lambda: any(r.records == 30 and r.get("outbox_backlog") == 0 for r in store.devices()), 20,
                   "records stored and an empty backlog reported")  # fmt: skip
    return tmp_path / "hub" / "store"


def test_fleet_prints_one_line_per_device_from_the_store(
    filled_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = fleet_command("--store", str(filled_store))
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["device", "last", "seen", "running", "target", "state", "rtt", "ms", "Mbit/s",
                                "backlog", "dropped", "records", "samples", "groups"]  # fmt: skip
    cells = lines[1].split()
    assert cells[0] == "cam-7"
    assert cells[-5:] == ["0", "0", "30", "0", "line-3"]
    assert "23.4" in cells and "8.5" in cells
    assert int(cells[1]) < 30 and cells[2:6] == ["s", "ago", "-", "-"]  # seen just now; no plan, no target yet

    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(f"plans: [somewhere]\nsync:\n  store: {{path: {filled_store.relative_to(tmp_path)}}}\n")
    args = fleet_command("--config", str(hub_yaml), "--json")
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["device"], row["records"], row["status"]["groups"]) for row in rows] == [("cam-7", 30, ["line-3"])]


def test_fleet_names_a_missing_store_or_sync_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--store", str(tmp_path / "nowhere")]) == 1
    out, err = capsys.readouterr()
    assert f"tandem fleet: error: {tmp_path / 'nowhere' / 'store.sqlite'}: no hub store here" in err and not out
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text("plans: [p]\n")
    args = fleet_command("--config", str(hub_yaml))
    with pytest.raises(ConfigError, match=r"hub.yaml: sync: required key is missing"):
        args.func(args)
    hub_yaml.write_text("sync:\n  store: {pth: x}\n")
    with pytest.raises(ConfigError, match=r"hub.yaml: sync.store.pth: unknown key; did you mean 'path'\?"):
        args.func(fleet_command("--config", str(hub_yaml)))
