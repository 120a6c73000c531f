"""``tandem hub --config hub.yaml``: load the plans' cloud parts and serve them."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from tandem.config import load_config


def register(subparsers: Any) -> None:
    """Add the ``hub`` command."""
    parser = subparsers.add_parser("hub", help="run the cloud hub")
    parser.add_argument("--config", type=Path, required=True, help="hub.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, listen, serve until SIGINT/SIGTERM."""
    from cloud_hub.config import HubConfig
    from cloud_hub.plans import load_tails
    from cloud_hub.server import Hub

    config = load_config(args.config, HubConfig)
    base = args.config.parent
    tails = [tail for plan_dir in config.plans for tail in load_tails(_resolve(base, plan_dir), config.executor)]
    for tail in tails:
        print(f"loaded plan {tail.plan_id} v{tail.plan_version} split {tail.split_id}: {tail.executor.describe()}")
    hub = Hub(config, tails)
    hub.start()
    for address in hub.addresses:
        print(f"listening on {address}", flush=True)
    if hub.metrics_port is not None:
        print(f"metrics on http://{config.metrics.host}:{hub.metrics_port}/metrics", flush=True)
    print(f"batching: {config.batching.model_dump()}", flush=True)
    _wait_for_signal()
    print("stopping", flush=True)
    hub.stop()
    return 0


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
