"""The hub's answer to an edge's ``artifact`` request: one chunk of a plan file as a raw ``uint8`` tensor.

The request carries ``meta`` ``{"path", "offset", "length"}``; the reply carries
``meta`` ``{"path", "offset", "size"}`` (``size``: the file's size on the hub)
and the bytes as tensor ``data``. See :mod:`tandem.edge_agent.artifacts` for the
download that reads it.
"""

from __future__ import annotations

import numpy as np

from tandem.transport.envelope import Envelope, Kind

__all__ = ["chunk_reply"]


def chunk_reply(request: Envelope, data: bytes | memoryview, *, path: str, offset: int, size: int) -> Envelope:
    """The hub's answer to an ``artifact`` request: ``data`` as one raw uint8 tensor."""
    reply = request.reply(Kind.ARTIFACT, meta={"path": path, "offset": offset, "size": size})
    reply.add_arrays({"data": np.frombuffer(data, dtype=np.uint8)})
    return reply
