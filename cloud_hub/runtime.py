"""The hub as one object: the plans' cloud parts, the channels, metrics and fleet sync, as `tandem hub` runs them.

A few lines build and run a hub from Python, the same code the CLI runs::

    from tandem.cloud_hub.runtime import HubRuntime

    with HubRuntime.from_file("configs/hub.yaml") as hub:   # or HubRuntime(HubConfig(...))
        print(hub.addresses)                                 # serves until the block ends
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.server import Hub
from tandem.config import load_config
from tandem.config_paths import resolve_relative_paths

__all__ = ["HubRuntime", "check_published", "load_plans", "start_sync"]

logger = logging.getLogger("tandem.hub")


class HubRuntime:
    """A :class:`Hub` with its plans loaded from the config and, when ``sync:`` is set, fleet sync and its store.

    The plans load in the constructor (a bad plan raises there, before
    anything listens); :meth:`start` opens the channels, metrics and sync.
    """

    def __init__(self, config: HubConfig, *, source: str | Path = "hub config") -> None:
        from tandem.cloud_hub.plans import load_tails

        self.config = config
        self.tails = load_plans(Path(source), config, load_tails)
        check_published(Path(source), config, self.tails)
        self.hub = Hub(config, self.tails)
        self.sync: Any = None
        self.store: Any = None

    @classmethod
    def from_file(cls, path: str | Path) -> HubRuntime:
        """The hub that ``hub.yaml`` at ``path`` describes (relative paths taken from its folder)."""
        path = Path(path)
        return cls(resolve_relative_paths(load_config(path, HubConfig), path.resolve().parent), source=path)

    @property
    def addresses(self) -> list[str]:
        """Where each channel listens."""
        return self.hub.addresses

    def start(self) -> HubRuntime:
        """Listen on the channels, serve metrics, start sync."""
        self.hub.start()
        started = start_sync(self.config, self.hub)
        if started is not None:
            self.sync, self.store = started
        return self

    def stop(self) -> None:
        """Stop sync and its store, then the hub (the batches in progress are finished)."""
        if self.sync is not None:
            self.sync.stop()
            self.store.close()
        self.hub.stop()

    def __enter__(self) -> HubRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_plans(source: Path, config: Any, load_tails: Any) -> list[Any]:
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


def check_published(source: Path, config: Any, tails: list[Any]) -> None:
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


def start_sync(config: HubConfig, hub: Hub) -> tuple[Any, Any] | None:
    """Records, samples and plans with the fleet over MQTT, when ``sync:`` is configured."""
    if config.sync is None:
        return None
    from tandem.cloud_hub.store import SqliteStore
    from tandem.cloud_hub.sync import HubSync

    store = SqliteStore(config.sync.store.path, synchronous=config.sync.store.synchronous)
    sync = HubSync(config.sync, store, registry=hub.metrics.registry, device_label=hub.metrics.device_label,
                   limits=config.limits.to_limits())  # fmt: skip
    sync.start()
    mqtt = config.sync.mqtt
    logger.info("sync: MQTT %s:%s prefix %s, store %s", mqtt.host, mqtt.port, mqtt.topic_prefix, store.path)
    return sync, store
