"""Running the app under uvicorn, with a graceful, bounded shutdown.

On SIGTERM (or SIGINT): readiness turns 503 at once and new segmentation requests are refused
(503); after ``drain_s`` (time for a load balancer to see readiness fail; 0 by default) the
listening socket closes, in-flight requests get up to ``shutdown_timeout_s`` to finish, and
the process exits. Model calls cannot be interrupted, so if one still runs after that the
process exits anyway (``os._exit``) rather than hang.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

import uvicorn

from serve.settings import ServeSettings

log = logging.getLogger("distill.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining before it stops (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, service: Any, drain_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_s = drain_s
        self._draining = False
        self.bound_port: int | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.begin_drain()
        if self._draining or self.drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        timer = threading.Timer(self.drain_s, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                self.bound_port = sock.getsockname()[1]
        if self.bound_port is not None:
            host = self.config.host
            line = json.dumps({"event": "listening", "host": host, "port": self.bound_port})
            print(line, file=sys.stderr, flush=True)


def configure_logging(level: str) -> None:
    """JSON lines of the access log and plain service messages on stderr; idempotent."""
    logger = logging.getLogger("distill.serve")
    if not any(getattr(h, "_distill_serve", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._distill_serve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())
    logging.getLogger("nibabel").setLevel(logging.ERROR)  # its header fix-up notes quote header fields


def uvicorn_config(app: Any, settings: ServeSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", access_log=False, log_config=None,
        log_level=settings.log_level, limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_timeout_s)), server_header=False, proxy_headers=False,
        timeout_keep_alive=5,
    )  # fmt: skip


def run(settings: ServeSettings, app: Any = None) -> int:
    """Serve until a signal or a failed load; returns the exit code (0 after a clean shutdown)."""
    from serve.app import create_app

    configure_logging(settings.log_level)
    app = app if app is not None else create_app(settings)
    service = app.state.service
    server = DrainingServer(uvicorn_config(app, settings), service, settings.drain_s)
    failed = []

    def on_fatal(reason: str) -> None:
        failed.append(reason)
        server.should_exit = True

    service.on_fatal = on_fatal
    server.run()
    deadline = time.monotonic() + 5.0
    while service.busy_workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    if service.busy_workers():
        log.error("exiting with %d request(s) still running a model call", service.busy_workers())
        logging.shutdown()
        os._exit(1)
    return 1 if failed else 0


__all__ = ["DrainingServer", "configure_logging", "run", "uvicorn_config"]
