"""``tandem hub --config hub.yaml``: argument parsing around :class:`HubRuntime`, which loads and serves."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("tandem.hub")


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
        log.info("loaded plan %s v%d split %s: %s", tail.plan_id, tail.plan_version, tail.split_id,
                 tail.executor.describe())  # fmt: skip
    runtime.start()
    if config.sync is not None and runtime.store is not None:
        mqtt = config.sync.mqtt
        log.info("sync: MQTT %s:%s prefix %s, store %s", mqtt.host, mqtt.port, mqtt.topic_prefix, runtime.store.path)
    for address in runtime.addresses:
        log.info("listening on %s", address)
    if runtime.hub.metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, runtime.hub.metrics_port)
    log.info("batching: %s", config.batching.model_dump())
    _wait_for_signal()
    log.info("stopping")
    runtime.stop()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
