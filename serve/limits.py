"""Limits that keep the service up: body size, admission (concurrency + a short queue), time.

* :class:`BodyLimitMiddleware` (ASGI) refuses a body over ``max_body_bytes`` with 413 before
  any parsing: at once from ``Content-Length``, or while streaming a chunked body, the moment
  the count passes the limit. uvicorn has no body limit of its own.
* :class:`AdmissionGate` admits at most ``max_concurrency + max_queue`` requests to the
  inference routes; the next one gets 503 with ``Retry-After`` at once, before its body is read,
  so the queue never grows without bound.
* :class:`Ticket` runs an admitted request's work on the service's worker threads
  (``max_concurrency`` of them) under the per-request deadline. A request past its deadline
  gets 504; work that already started cannot be interrupted (a model call is not
  cancellable), so its admission is only released when that work really ends, and the gate
  keeps counting it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from serve.errors import ServeError, error_response

T = TypeVar("T")


class BodyTooLarge(ServeError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    """ASGI middleware: at most ``limit`` body bytes per HTTP request."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await error_response(400, "bad_request", "malformed Content-Length header")(scope, receive, send)
            return
        if declared is not None and declared > self.limit:
            await BodyTooLarge(self.limit).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge as exc:  # raised outside a route's error handling
            if started:
                raise
            await exc.response()(scope, receive, send)


def _content_length(scope: dict) -> int | None:
    """Declared body length; ``None`` if absent, ``-1`` if malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


class AdmissionGate:
    """Counts admitted inference requests; thread-safe (work may end on a worker thread)."""

    def __init__(self, capacity: int, retry_after_s: int, on_change: Callable[[int], None] | None = None) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.on_change = on_change
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        return self._admitted

    def enter(self) -> None:
        with self._lock:
            if self._admitted >= self.capacity:
                raise ServeError(503, "busy", f"all {self.capacity} request slots (running and queued) are taken; "
                                              f"retry in {self.retry_after_s} s",
                                 headers={"Retry-After": str(self.retry_after_s)})  # fmt: skip
            self._admitted += 1
            count = self._admitted
        if self.on_change:
            self.on_change(count)

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1
            count = self._admitted
        if self.on_change:
            self.on_change(count)


class Ticket:
    """One admitted request: its deadline, and its work on the executor (see the module docstring)."""

    def __init__(self, gate: AdmissionGate, executor: ThreadPoolExecutor, timeout_s: float) -> None:
        self.gate = gate
        self.executor = executor
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._running: Future | None = None

    async def __aenter__(self) -> Ticket:
        self.gate.enter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        running = self._running
        if running is not None and not running.done():
            running.add_done_callback(lambda _: self.gate.leave())  # released when the work really ends
        else:
            self.gate.leave()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def receive(self, coroutine):
        """Await ``coroutine`` (reading the body) within the deadline; 408 past it."""
        try:
            async with asyncio.timeout(self.remaining()):
                return await coroutine
        except TimeoutError:
            raise ServeError(408, "request_timeout", f"the body did not arrive within {self.timeout_s:g} s") from None

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a worker thread; 504 if it does not finish by the deadline."""
        future = self.executor.submit(work)
        self._running = future
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.remaining())
        except TimeoutError:
            future.cancel()  # only succeeds while it still waits for a worker
            message = f"the request did not finish within {self.timeout_s:g} s"
            raise ServeError(504, "deadline_exceeded", message) from None


__all__ = ["AdmissionGate", "BodyLimitMiddleware", "BodyTooLarge", "Ticket"]
