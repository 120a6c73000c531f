"""Turn a downloaded plan folder into the plan the agent serves: load, self-check, swap, each failure named.

``make_installer(load, swap, self_check)`` builds the ``install`` callback of
:class:`~tandem.edge_agent.sync.EdgeSync`; for the agent::

    install = make_installer(
        lambda folder, manifest: dataclasses.replace(load_agent_plan(folder, config.codec), version=manifest.version),
        agent.swap_plan,
        full_model_self_check(lambda: recorder.last_feeds, executor=config.executor),
    )

The release's version (the manifest's) is the one the agent should report and
send with its activations: the hub routes them by (plan id, version).

A plan that does not load raises ``plan_failed_load``, one that fails its
self-check ``plan_failed_check``; neither reaches the agent, which keeps
serving the plan it had (the downloader then leaves ``current`` as it was).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from tandem.contracts.manifest import ArtifactRejected, PlanManifest
from tandem.edge_agent.artifacts import Installer

__all__ = ["full_model_self_check", "make_installer"]

P = TypeVar("P")


class _HasFullModel(Protocol):
    full_model: Path


def make_installer(
    load: Callable[[Path, PlanManifest], P], swap: Callable[[P], None], self_check: Callable[[P], None] | None = None
) -> Installer:
    """``install(manifest, folder)``: ``load(folder, manifest)``, ``self_check(plan)``, then ``swap(plan)``."""

    def install(manifest: PlanManifest, folder: Path) -> None:
        try:
            plan = load(folder, manifest)
        except Exception as exc:  # any loader failure refuses the plan
            raise ArtifactRejected("plan_failed_load", f"plan {manifest.key} in {folder}: {_why(exc)}") from exc
        if self_check is not None:
            try:
                self_check(plan)
            except Exception as exc:  # any self-check failure refuses the plan
                raise ArtifactRejected("plan_failed_check", f"plan {manifest.key}: {_why(exc)}") from exc
        swap(plan)

    return install


def full_model_self_check(
    sample: Callable[[], dict[str, np.ndarray] | None], *, executor: str = "auto"
) -> Callable[[Any], None]:
    """A self-check that runs the plan's full model on ``sample()`` (default: zeros) and wants finite outputs."""
    from tandem.executors import open_executor

    def check(plan: _HasFullModel) -> None:
        model = open_executor(executor, plan.full_model)
        feeds = sample() or {
            info.name: np.zeros([d or 1 for d in info.shape], dtype=info.dtype) for info in model.inputs
        }
        outputs = model.run(feeds)
        expected = {info.name for info in model.outputs}
        if set(outputs) != expected:
            raise ValueError(f"the full model returned {sorted(outputs)}, expected {sorted(expected)}")
        for name, value in outputs.items():
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise ValueError(f"the full model's output {name!r} is not finite on the sample input")

    return check


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
