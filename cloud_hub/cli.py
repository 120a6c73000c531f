"""``tandem hub --config hub.yaml``: load the plans' cloud parts and serve them."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from tandem.config import load_config
from tandem.config_paths import resolve_relative_paths


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
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.plans import load_tails
    from tandem.cloud_hub.server import Hub

    base = args.config.resolve().parent
    config = resolve_relative_paths(load_config(args.config, HubConfig), base)
    tails = _load_plans(args.config, config, load_tails)
    _check_published(args.config, config, tails)
    for tail in tails:
        print(f"loaded plan {tail.plan_id} v{tail.plan_version} split {tail.split_id}: {tail.executor.describe()}")
    hub = Hub(config, tails)
    hub.start()
    sync = _start_sync(config, hub)
    for address in hub.addresses:
        print(f"listening on {address}", flush=True)
    if hub.metrics_port is not None:
        print(f"metrics on http://{config.metrics.host}:{hub.metrics_port}/metrics", flush=True)
    print(f"batching: {config.batching.model_dump()}", flush=True)
    _wait_for_signal()
    print("stopping", flush=True)
    if sync is not None:
        sync[0].stop()
        sync[1].close()
    hub.stop()
    return 0


def _load_plans(source: Path, config: Any, load_tails: Any) -> list[Any]:
    """The tails of every plan in ``plans``; a plan version found in two entries is a config error."""
    from tandem.config import ConfigError

    tails: list[Any] = []
    found: dict[tuple[str, int], int] = {}
    for i, plan_dir in enumerate(config.plans):
        loaded = load_tails(plan_dir, config.executor)
        for key in {(tail.plan_id, tail.plan_version) for tail in loaded}:
            if key in found:
                raise ConfigError(
                    str(source),
                    [f"plans.{i}: {plan_dir} holds plan {key[0]} v{key[1]}, already loaded from plans.{found[key]}"],
                )
            found[key] = i
        tails.extend(loaded)
    return tails


def _check_published(source: Path, config: Any, tails: list[Any]) -> None:
    """Each plan in ``sync.publish`` that uses a hub must be one this hub serves.

    Otherwise the edges install it and every request comes back
    ``unknown_plan_version`` and is answered locally.
    """
    if config.sync is None:
        return
    from tandem.cloud_hub.sync import unserved_plan
    from tandem.config import ConfigError

    served = {(tail.plan_id, tail.plan_version) for tail in tails}
    for i, item in enumerate(config.sync.publish):
        why = unserved_plan(item.plan, item.plan_id, item.version, served)
        if why is not None:
            raise ConfigError(
                str(source), [f"sync.publish.{i}: {why}; add its folder to plans (or publish a version listed there)"]
            )


def _start_sync(config: Any, hub: Any) -> tuple[Any, Any] | None:
    """Records, samples and plans with the fleet over MQTT, when ``sync:`` is configured."""
    if config.sync is None:
        return None
    from tandem.cloud_hub.store import SqliteStore
    from tandem.cloud_hub.sync import HubSync

    store = SqliteStore(config.sync.store.path, synchronous=config.sync.store.synchronous)
    sync = HubSync(config.sync, store, registry=hub.metrics.registry, limits=config.limits.to_limits())
    sync.start()
    mqtt = config.sync.mqtt
    print(f"sync: MQTT {mqtt.host}:{mqtt.port} prefix {mqtt.topic_prefix}, store {store.path}", flush=True)
    return sync, store


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
