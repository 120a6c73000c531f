"""``tandem publish PLAN --config hub.yaml --group G``: roll a plan out to a device or a group while the hubs run.

It writes the release (the plan folder's files, hashed) and the target into the
hubs' sync store (``sync.store.path`` of ``--config``), as ``sync.publish`` does
when a hub starts. Running hubs re-read the targets every ``sync.reoffer_s`` and
announce the plan to each device of the target at its next status report; the
devices then download, check and swap it. Nothing restarts, so a new version can
go to a canary group first and to the rest later.

The plan must be one the hubs already serve (its folder is in ``plans`` and the
hubs were started with it), unless no split of it uses a hub: otherwise the
edges would install it and get ``unknown_plan_version`` on every request. The
store records the plan folder's absolute path, and the hubs serve the artifacts
from there: it must be on storage they read. No MQTT connection is opened (one
in the hubs' shared group would take a share of the fleet's messages).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tandem.config import ConfigError, load_config
from tandem.config_paths import resolve_relative_paths

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``publish`` command."""
    parser = subparsers.add_parser(
        "publish",
        help="roll a plan out to a device or a group while the hubs run",
        description="Write a plan release and its target (a device or a group) into the hubs' sync store; "
        "running hubs announce it to the target's devices within sync.reoffer_s, without a restart.",
    )
    parser.add_argument("plan", type=Path, help="the plan folder (written by tandem partition)")
    parser.add_argument("--config", type=Path, required=True, help="hub.yaml of the hubs (its plans and sync.store)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="the device id to give the plan to")
    target.add_argument("--group", help="the group (edge sync.groups) to give the plan to")
    parser.add_argument("--version", type=int, help="the version to announce (default: plan.yaml's)")
    parser.add_argument("--plan-id", help="the plan id to announce (default: plan.yaml's)")
    parser.add_argument("--model", help="the model the plan is for (default: plan.yaml's model.name)")
    parser.add_argument(
        "--rollback", "--allow-older", dest="allow_older", action="store_true",
        help="move the target to an older version (of the same model); the edges install it too",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the plan against the hub config, store the release and the target, say what happens next."""
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.store import DB_FILE, SqliteStore
    from tandem.cloud_hub.sync import HubSync, plan_identity, plan_uses_hub, unserved_plan

    config = resolve_relative_paths(load_config(args.config, HubConfig), args.config.resolve().parent)
    if config.sync is None:
        raise ConfigError(
            str(args.config), ["sync: required key is missing: tandem publish writes to the hubs' sync store"]
        )
    plan_dir = args.plan.resolve()
    if not (plan_dir / "plan.yaml").is_file():
        print(f"tandem publish: {args.plan}: not a plan folder (no plan.yaml)", file=sys.stderr)
        return 2
    unreadable = [f"plans.{i}: {folder} holds no plan.yaml" for i, folder in enumerate(config.plans)
                  if not (folder / "plan.yaml").is_file()]  # fmt: skip
    if unreadable:
        print(f"tandem publish: {args.config}: " + "; ".join(unreadable) + " (which plans do the hubs serve?)",
              file=sys.stderr)  # fmt: skip
        return 2
    identities = [plan_identity(folder) for folder in config.plans if plan_uses_hub(folder)]
    served = {(plan_id, version) for plan_id, version, _ in identities if plan_id and version}
    why = unserved_plan(plan_dir, args.plan_id, args.version, served)
    if why is not None:
        print(f"tandem publish: {why}; add its folder to plans in {args.config} and restart the hubs first",
              file=sys.stderr)  # fmt: skip
        return 2
    if not (config.sync.store.path / DB_FILE).is_file():  # a new store here would be one no hub reads
        print(f"tandem publish: no hub store at {config.sync.store.path / DB_FILE} (sync.store.path in "
              f"{args.config}); start the hubs first, or run this where their store is", file=sys.stderr)  # fmt: skip
        return 2
    store = SqliteStore(config.sync.store.path, synchronous=config.sync.store.synchronous)
    try:
        sync = HubSync(config.sync, store)
        before = store.targets()
        manifest = sync.publish_plan(
            plan_dir, version=args.version, plan_id=args.plan_id, model=args.model, device=args.device,
            group=args.group, allow_older=args.allow_older,
        )  # fmt: skip
        nobody = sync.audience_warning(device=args.device, group=args.group)
    except ValueError as exc:
        print(f"tandem publish: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if nobody:
        print(f"tandem publish: warning: {nobody}", file=sys.stderr)
    target = f"device {args.device}" if args.device is not None else f"group {args.group}"
    key = f"device:{args.device}" if args.device is not None else f"group:{args.group}"
    previous = before.get(key)
    now = (manifest.plan_id, manifest.version)
    moved = f" (was {previous[0]}@{previous[1]})" if previous and previous != now else ""
    verb = "rolled back" if previous and previous[1] > now[1] else "published"
    print(f"{verb} plan {manifest.key} for model {manifest.model} ({len(manifest.artifacts)} files, "
          f"{manifest.total_bytes} bytes) to {target}{moved} in {store.path}")  # fmt: skip
    print(f"running hubs read the targets every sync.reoffer_s ({config.sync.reoffer_s:g} s) and announce it at "
          f"each device's next status report; follow it with: tandem fleet --config {args.config}")  # fmt: skip
    return 0
