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

    runtime = HubRuntime.from_file(args.config, probes_first=True)
    config = runtime.config
    for tail in runtime.tails:
        variant = f" ({tail.variant}: takes {', '.join(sorted(tail.as_sent))} as sent)" if tail.variant else ""
        log.info("loaded plan %s v%d split %s%s: %s", tail.plan_id, tail.plan_version, tail.split_id, variant,
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
    _serve_until_stopped(runtime)
    return 0


def _serve_until_stopped(runtime: Any) -> None:
    """SIGHUP reloads the plan list (runtime.reload); SIGTERM or SIGINT drains and stops."""
    wake = threading.Event()
    signals: list[int] = []

    def note(signum: int, _frame: object) -> None:
        signals.append(signum)
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, note)
    while True:
        wake.wait()
        wake.clear()
        while signals:
            signum = signals.pop(0)
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading %s", runtime.source)
                runtime.reload()
                continue
            log.info("stopping (%s): draining for up to %.1f s", signal.Signals(signum).name,
                     runtime.config.shutdown_grace_s)  # fmt: skip
            runtime.drain_and_stop()
            log.info("stopped")
            return
