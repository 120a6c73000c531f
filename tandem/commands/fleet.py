"""``tandem fleet``: each device's last contact, plan version, link, outbox backlog and dropped records.

Reads the hub's sync store (``--store DIR``, or ``sync.store.path`` of
``--config hub.yaml``); it works while the hub runs, from another process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from tandem.config import ConfigError, StrictModel, load_config

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``fleet`` command."""
    parser = subparsers.add_parser(
        "fleet",
        help="show the fleet: plan versions, link, outbox backlog per device",
        description="Show each device the hub's sync store knows: last contact, plan version, link, "
        "outbox backlog and dropped records. Reads the store directly; works while the hub runs.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", type=Path, help="the hub's sync store folder")
    source.add_argument("--config", type=Path, help="hub.yaml with a sync: section (its sync.store.path is read)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the fleet table (or JSON); a store that cannot be read raises StoreError (one line on stderr)."""
    from tandem.cloud_hub.fleet import format_fleet, target_for
    from tandem.cloud_hub.store import SqliteStore

    path = args.store if args.store is not None else _store_from_config(args.config)
    store = SqliteStore(path, readonly=True)
    try:
        rows = store.devices()
        targets = store.targets()
    finally:
        store.close()
    if args.json:
        listed = []
        for row in rows:
            wanted = target_for(row.device, row.get("groups") or [], targets)
            listed.append({**row.__dict__, "target": f"{wanted[0]}@{wanted[1]}" if wanted else None})
        print(json.dumps(listed, indent=2, default=str))
    else:
        print(format_fleet(rows, targets=targets))
    return 0


def _store_from_config(config: Path) -> Path:
    from tandem.cloud_hub.sync_config import HubSyncConfig

    class _SyncSection(StrictModel):
        """hub.yaml read for its ``sync`` section only (the rest is the hub's business)."""

        model_config = ConfigDict(extra="ignore", frozen=True)
        sync: HubSyncConfig | None = None

    sync = load_config(config, _SyncSection).sync
    if sync is None:
        raise ConfigError(
            str(config),
            ["sync: required key is missing: tandem fleet needs a hub config with a `sync:` section "
             "(it reads sync.store.path), or pass --store DIR"],
        )  # fmt: skip
    path = sync.store.path
    return path if path.is_absolute() else config.parent / path
