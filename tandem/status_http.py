"""The HTTP port a long-running component answers probes and scrapes on: /metrics, /healthz, /readyz.

- ``/metrics``: the Prometheus text of the component's registry;
- ``/healthz``: 200 while the process serves HTTP at all (liveness);
- ``/readyz``: 200 when the component should get traffic, else 503; the JSON
  body says why (``{"ready": false, "reason": "loading plans"}``) and carries
  the component's details (for the edge: whether the hub is reachable, which
  is reported, not a reason to be unready: the edge serves degraded);
- anything else: 404.

The server can start before the component has loaded anything (its
readiness then says so), which is what an orchestrator's probes need.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tandem.errors import TandemError

__all__ = ["Readiness", "StatusServer", "StatusServerError"]

logger = logging.getLogger("tandem.status")

Readiness = Callable[[], tuple[bool, str, dict[str, Any]]]
"""(ready, reason when not, details for the body)."""


class StatusServerError(TandemError):
    """The status port could not be opened; the message names the config key, the address and why."""


def _not_yet() -> tuple[bool, str, dict[str, Any]]:
    return False, "starting", {}


class StatusServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` from a thread (see the module docstring)."""

    def __init__(self, *, config_key: str = "status.port", serves: str = "the status port") -> None:
        self.config_key = config_key
        self.serves = serves
        self.registry: Any = None
        self.readiness: Readiness = _not_yet
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    def start(self, host: str, port: int) -> int:
        """Listen (``port`` 0 picks a free one); returns the port. :class:`StatusServerError` if it cannot."""
        status = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("%s %s", self.address_string(), format % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StatusServerError(
                f"{self.config_key} {port}: cannot listen on {host}:{port}: {reason}; choose another "
                f"{self.config_key} (0 picks a free one) or set it to null to turn {self.serves} off"
            ) from exc
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True).start()
        return self.port

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/metrics" and self.registry is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(request, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(request, 200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            try:
                ready, reason, details = self.readiness()
            except Exception as exc:  # a probe must get an answer, and the failure is a reason not to send traffic
                logger.exception("readiness check failed")
                ready, reason, details = False, f"readiness check failed: {exc}", {}
            body = {"ready": ready, **({} if ready else {"reason": reason}), **details}
            self._send(request, 200 if ready else 503, json.dumps(body).encode() + b"\n", "application/json")
        else:
            self._send(request, 404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
