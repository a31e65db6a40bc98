"""Request ids, access logs and request metrics, as one ASGI middleware.

Each request gets an id (the caller's ``X-Request-ID`` when it is short and plain, else a new
one), echoed in the response. One log line per request carries the id, route template,
method, status, error code, body sizes and timings, and nothing else: no query string, file
or field name, header text or voxel data.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from serve.metrics import ServiceMetrics

log = logging.getLogger("distill.serve.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UNMATCHED = "unmatched"


class ObserveMiddleware:
    def __init__(self, app: Any, metrics: ServiceMetrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = scope.get("path", "") if scope.get("path", "") in self.routes else UNMATCHED
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        counts = {"in": 0, "out": 0, "status": 500}

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - start
            status = counts["status"]
            self.metrics.requests.labels(route, scope.get("method", "-"), str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            if counts["in"]:
                self.metrics.request_bytes.labels(route).observe(counts["in"])
            self.metrics.response_bytes.labels(route).observe(counts["out"])
            record = {"request_id": request_id, "route": route, "method": scope.get("method", "-"), "status": status,
                      "error": state.get("error_code"), "bytes_in": counts["in"], "bytes_out": counts["out"],
                      "ms": round(seconds * 1000, 2), "stages_ms": state.get("stages_ms")}  # fmt: skip
            level = logging.WARNING if status >= 500 else logging.INFO
            log.log(level, json.dumps({k: v for k, v in record.items() if v is not None}, separators=(",", ":")))


def _request_id(scope: dict) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


__all__ = ["ObserveMiddleware", "UNMATCHED"]
