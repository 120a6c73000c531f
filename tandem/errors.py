"""Tandem's one exception root. Catch :class:`TandemError` to catch everything the project raises on purpose.

Each family's message already says what went wrong and where (config key,
file, tensor, message field), so the CLI prints it as one line; anything else
is a bug and keeps its traceback::

    TandemError
    ├── ConfigError             tandem.config: a config file did not load or validate (also a ValueError)
    ├── TransportError          tandem.transport.errors: protocol and channel failures (its own tree)
    ├── ExecutorError           tandem.executors.base: a model could not be loaded or run
    ├── PartitionError          tandem.partitioner.errors: partitioning failed (its own tree)
    ├── OutboxError             tandem.edge_agent.outbox: the edge's outbox could not store or read
    ├── PlanError               tandem.contracts.plan: a plan folder is missing its plan or does not validate
    │   └── ArtifactError       a file the plan lists is missing or differs from the plan
    ├── ArtifactRejected        tandem.contracts.manifest: a downloaded plan artifact was refused
    ├── StoreError              tandem.cloud_hub.store: the hub's store could not store or read
    ├── StatusServerError       tandem.status_http: a status port (/metrics, /healthz, /readyz) could not open
    │   └── MetricsError        tandem.cloud_hub.metrics: the hub's metrics.port
    └── DemoError               tandem.commands.demo: a step of the demo failed
        └── (NoWorldError, tandem.commands.demo_world, is raised inside the demo and becomes a DemoError)

This module imports nothing of ours: every layer may raise from it.
"""

from __future__ import annotations

__all__ = ["TandemError"]


class TandemError(Exception):
    """The root of every error Tandem raises on purpose; its message names what was wrong and where."""
