"""``tandem hub --config hub.yaml``: argument parsing around :class:`HubRuntime`, which loads and serves."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``hub`` command."""
    parser = subparsers.add_parser(
        "hub",
        help="run the cloud hub",
        description="Load the cloud parts of the plans, listen on the configured channels, batch requests per "
        "split and serve them until SIGINT/SIGTERM; Prometheus metrics on /metrics.",
    )
    parser.add_argument("--config", type=Path, required=True, help="hub.yaml")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, listen, serve until SIGINT/SIGTERM."""
    from tandem.cloud_hub.runtime import HubRuntime

    runtime = HubRuntime.from_file(args.config)
    config = runtime.config
    for tail in runtime.tails:
        print(f"loaded plan {tail.plan_id} v{tail.plan_version} split {tail.split_id}: {tail.executor.describe()}")
    runtime.start()
    if config.sync is not None and runtime.store is not None:
        mqtt = config.sync.mqtt
        print(f"sync: MQTT {mqtt.host}:{mqtt.port} prefix {mqtt.topic_prefix}, store {runtime.store.path}", flush=True)
    for address in runtime.addresses:
        print(f"listening on {address}", flush=True)
    if runtime.hub.metrics_port is not None:
        print(f"metrics on http://{config.metrics.host}:{runtime.hub.metrics_port}/metrics", flush=True)
    print(f"batching: {config.batching.model_dump()}", flush=True)
    _wait_for_signal()
    print("stopping", flush=True)
    runtime.stop()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
