"""Contracts: what the edge, the hub and the partitioner agree on, with one home each.

- :mod:`tandem.contracts.plan`: the plan schema (``plan.yaml``) and its one reader,
  :func:`~tandem.contracts.plan.load_plan`.
- :mod:`tandem.contracts.manifest`: the artifact manifest a plan announcement carries, and how a plan folder is scanned.
- :mod:`tandem.contracts.sync_topics`: the MQTT topic prefix of the sync channel.

This layer imports only the ground (``tandem.config``, ``tandem.errors``, ``tandem.hashing``, ...);
tests/unit/test_layers.py enforces it.
"""
