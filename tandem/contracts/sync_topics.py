"""The sync channel's MQTT topics: a prefix of their own, so sync never shares the activation channel's topics.

On the activation channel's default prefix the hub's activation channel would
hear the sync messages (and the sync channel the agent's heartbeats), since
both subscribe to ``{prefix}/+/up/+``. The edge and the hub both default their
sync channel to :data:`SYNC_TOPIC_PREFIX`; see
:func:`tandem.transport.config.sync_topics`.
"""

from __future__ import annotations

__all__ = ["SYNC_TOPIC_PREFIX"]

SYNC_TOPIC_PREFIX = "tandem/v1/sync"
