"""One small HTTP server per worker: /metrics (Prometheus), /healthz, /readyz and /status (JSON)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


def endpoint_port(base: int, slot: int) -> int:
    """The port of worker `slot`'s endpoint: one per worker, so workers on one host never collide."""
    return base + slot


class Source(Protocol):
    registry: CollectorRegistry

    def liveness(self) -> tuple[bool, dict]: ...

    def readiness(self) -> tuple[bool, dict]: ...

    def status(self) -> dict: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(source: Source) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, generate_latest(source.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._check(*source.liveness())
                elif path == "/readyz":
                    self._check(*source.readiness())
                elif path == "/status":
                    self._send(
                        200,
                        orjson.dumps(source.status(), option=orjson.OPT_SERIALIZE_NUMPY),
                        "application/json",
                    )
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz or /status\n", "text/plain")
            except (BrokenPipeError, ConnectionResetError):  # the client left first (a probe's timeout): no news
                return
            except Exception:  # a failing scrape answers 500, never reaches the worker
                logger.exception("telemetry endpoint %s failed", path)
                try:
                    self._send(500, b"internal error\n", "text/plain")
                except OSError:
                    pass

        def _check(self, ok: bool, checks: dict) -> None:
            self._send(200 if ok else 503, orjson.dumps({"ok": ok, "checks": checks}), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes are not worth a log line
            pass

    return Handler


class TelemetryServer:
    def __init__(self, source: Source, host: str, port: int) -> None:
        self._httpd = _Server((host, port), _handler(source))
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"muse-telemetry-{self.port}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
