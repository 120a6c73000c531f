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

    def __init__(self, config: HubConfig, *, source: str | Path = "hub config", probes_first: bool = False) -> None:
        from tandem.cloud_hub.plans import load_tails

        self.config = config
        self.source = Path(source)
        # probes_first: open the metrics port (/healthz, /readyz: 503 "loading plans") before the plans load,
        # as an orchestrator's probes need; otherwise it opens with the channels in start().
        status = _early_status(config) if probes_first else None
        try:
            self._by_folder = load_plan_folders(Path(source), config, load_tails)
            self.tails = [tail for tails in self._by_folder.values() for tail in tails]
            check_published(Path(source), config, self.tails)
        except BaseException:
            if status is not None:
                status.close()
            raise
        self.hub = Hub(config, self.tails, status=status)
        self.sync: Any = None
        self.store: Any = None

    @classmethod
    def from_file(cls, path: str | Path, *, probes_first: bool = False) -> HubRuntime:
        """The hub that ``hub.yaml`` at ``path`` describes (relative paths taken from its folder)."""
        path = Path(path)
        config = resolve_relative_paths(load_config(path, HubConfig), path.resolve().parent)
        return cls(config, source=path, probes_first=probes_first)

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

    def drain_and_stop(self) -> bool:
        """SIGTERM: refuse new work with ``shutting_down``, answer what is queued or running (up to
        ``shutdown_grace_s``), then stop. True if every accepted request was answered in time."""
        answered = self.hub.drain(self.config.shutdown_grace_s)
        if not answered:
            logger.warning("shutdown_grace_s %.1f s passed with requests still running; stopping anyway",
                           self.config.shutdown_grace_s)  # fmt: skip
        self.stop()
        return answered

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and serve its ``plans`` list, without touching the channels.

        Plan folders new to the list are loaded and checked before any of them
        is served; if one fails, nothing changes and the old plans go on
        serving. Folders gone from the list stop being served once their
        queued requests are answered. Other changed keys need a restart (logged).
        Returns whether the new list is being served.
        """
        from tandem.cloud_hub.plans import load_tails

        try:
            fresh = resolve_relative_paths(load_config(self.source, HubConfig), self.source.resolve().parent)
            new_folders = [folder for folder in fresh.plans if folder not in self._by_folder]
            loaded = {folder: load_tails(folder, fresh.executor) for folder in new_folders}
            kept = {folder: tails for folder, tails in self._by_folder.items() if folder in fresh.plans}
            by_folder = {**kept, **loaded}
            _no_version_twice(self.source, by_folder)
        except Exception as exc:  # a bad reload must never take the serving hub down
            logger.error("reload of %s failed, still serving the plans loaded before: %s", self.source, exc)
            return False
        removed = [tail.key for folder, tails in self._by_folder.items() if folder not in fresh.plans for tail in tails]
        added = [tail for tails in loaded.values() for tail in tails]
        self.hub.update_plans(added, removed)
        self._by_folder = by_folder
        self.tails = [tail for tails in by_folder.values() for tail in tails]
        restart = [key for key in ("channels", "executor", "batching", "metrics", "limits", "reply_codec", "sync")
                   if getattr(fresh, key) != getattr(self.config, key)]  # fmt: skip
        self.config = self.config.model_copy(update={"plans": fresh.plans})
        logger.info("reloaded %s: serving %d plan folder(s), %d split(s) added, %d removed%s", self.source,
                    len(by_folder), len(added), len(removed),
                    f"; changed {', '.join(restart)} take effect on restart" if restart else "")  # fmt: skip
        return True

    def __enter__(self) -> HubRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _early_status(config: HubConfig) -> Any:
    """The metrics port, open now and answering /readyz with 503 "loading plans"; None when metrics are off."""
    if config.metrics.port is None:
        return None
    from tandem.cloud_hub.metrics import MetricsError
    from tandem.status_http import StatusServer, StatusServerError

    status = StatusServer(config_key="metrics.port", serves="metrics")
    status.readiness = lambda: (False, "loading plans", {"plans": [str(p) for p in config.plans]})
    try:
        port = status.start(config.metrics.host, config.metrics.port)
    except StatusServerError as exc:
        raise MetricsError(str(exc)) from exc
    logger.info("probes on http://%s:%d/healthz and /readyz (not ready until the plans load)", config.metrics.host,
                port)  # fmt: skip
    return status


def load_plans(source: Path, config: Any, load_tails: Any) -> list[Any]:
    """The tails of every plan in ``plans``; a plan version found in two entries is a config error."""
    return [tail for tails in load_plan_folders(source, config, load_tails).values() for tail in tails]


def load_plan_folders(source: Path, config: Any, load_tails: Any) -> dict[Path, list[Any]]:
    """The tails of each plan folder in ``plans``, by folder; a plan version in two folders is a config error."""
    by_folder = {plan_dir: load_tails(plan_dir, config.executor) for plan_dir in config.plans}
    _no_version_twice(source, by_folder)
    return by_folder


def _no_version_twice(source: Path, by_folder: dict[Path, list[Any]]) -> None:
    from tandem.config import ConfigError

    found: dict[tuple[str, int], int] = {}
    for i, (plan_dir, loaded) in enumerate(by_folder.items()):
        for key in {(tail.plan_id, tail.plan_version) for tail in loaded}:
            if key in found:
                raise ConfigError(
                    str(source),
                    [f"plans.{i}: {plan_dir} holds plan {key[0]} v{key[1]}, already loaded from plans.{found[key]}"],
                )
            found[key] = i


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
    from tandem.transport.config import exposure_warning

    warning = exposure_warning(config.sync.mqtt, listens=False)
    if warning:
        logger.warning("sync: %s", warning)
    sync = HubSync(config.sync, store, registry=hub.metrics.registry, device_label=hub.metrics.device_label,
                   limits=config.limits.to_limits())  # fmt: skip
    sync.start()
    mqtt = config.sync.mqtt
    logger.info("sync: MQTT %s:%s prefix %s, store %s", mqtt.host, mqtt.port, mqtt.topic_prefix, store.path)
    return sync, store
