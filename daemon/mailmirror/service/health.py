"""The daemon's HTTP endpoint (`metrics.listen`): /metrics for Prometheus, /healthz and /readyz.

- ``/metrics``: the private registry, in the text format Prometheus asks for (OpenMetrics when asked).
- ``/healthz`` (liveness): 200 while the daemon's main loop and scheduler are alive.
- ``/readyz`` (readiness): 200 when the config is loaded, the state database takes writes, and every
  pair's last success is recent enough for its schedule; else 503. The body lists each check.

Plain ``http.server`` on a thread: a few requests per scrape interval need nothing more.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from mailmirror.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class HealthServer:
    """Serves the endpoints on a background thread until `close`."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        alive: Callable[[], list[Check]],
        ready: Callable[[], list[Check]],
    ) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry, "alive": alive, "ready": ready})
        try:
            server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
            self.server = server_class((host, port), handler)
        except OSError as error:
            raise ConfigError(
                f"metrics.listen: cannot listen on {_address(host, port)} ({error.strerror or error}). "
                "Choose a free address, or set metrics.enabled: false."
            ) from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()
        log.info("metrics and health checks on http://%s/metrics", _address(*self.server.server_address[:2]))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _address(host: str | bytes | bytearray, port: int) -> str:
    text = host.decode() if isinstance(host, bytes | bytearray) else host
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    alive: Callable[[], list[Check]]
    ready: Callable[[], list[Check]]
    server_version = "mailmirror"
    timeout = 30  # a client that connects and says nothing does not keep a thread for ever

    def do_GET(self) -> None:
        try:
            self._get()
        except Exception:  # a bug: the client gets a 500, the log the traceback, the daemon goes on
            log.exception("http: %s failed", self.path)
            self._send(500, "text/plain; charset=utf-8", b"internal error (see the daemon's log)\n")

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(self.registry))
        elif path == "/healthz":
            self._checks(type(self).alive())
        elif path == "/readyz":
            self._checks(type(self).ready())
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8", b"mailmirror: /metrics /healthz /readyz\n")
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n")

    def _checks(self, checks: list[Check]) -> None:
        ok = all(check.ok for check in checks)
        lines = [f"{'ok' if check.ok else 'FAIL'} {check.name}: {check.detail}" for check in checks]
        body = ("\n".join(lines) + "\n" + ("ok\n" if ok else "not ready\n")).encode()
        self._send(200 if ok else 503, "text/plain; charset=utf-8", body)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http: %s", format % args)
