"""The service's state: one model, its lock, the admission gate, the workers, readiness.

Lifecycle: ``starting`` (the lifespan has begun loading the package in the background; probes
already answer) -> ``ready`` (package open, backend loaded, warm-up inference done) ->
``draining`` (SIGTERM: readiness 503 at once, new segmentation requests 503, in-flight ones
finish). A load that fails leaves ``failed``: readiness stays 503 with the reason, and the
server runner (:mod:`serve.server`) stops the process with an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serve.auth import TokenCheck
from serve.errors import ServeError
from serve.limits import AdmissionGate, Ticket
from serve.metrics import ServiceMetrics
from serve.settings import ServeSettings

log = logging.getLogger("distill.serve")

STARTING, READY, DRAINING, FAILED = "starting", "ready", "draining", "failed"


def open_predictor(settings: ServeSettings) -> Any:
    """The default factory: :meth:`distill.infer.predictor.Predictor.from_package` (it warms the backend up)."""
    from distill.infer.predictor import Predictor

    return Predictor.from_package(settings.package, settings.backend, threads=settings.threads,
                                  verify=settings.verify_package, tta=settings.tta)  # fmt: skip


def warm_up_case(n_channels: int, shape: tuple[int, int, int] = (48, 48, 40)) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic case (a noisy box inside zeros, 1 mm): the whole segment path runs once on it."""
    rng = np.random.default_rng(0)
    images = np.zeros((n_channels, *shape), np.float32)
    inner = tuple(slice(n // 6, n - n // 6) for n in shape)
    images[(slice(None), *inner)] = rng.normal(100.0, 20.0, (n_channels, *[s.stop - s.start for s in inner]))
    return images, np.eye(4)


class Service:
    """See the module docstring; ``app.state.service`` holds the one instance of an app."""

    def __init__(self, settings: ServeSettings,
                 predictor_factory: Callable[[ServeSettings], Any] = open_predictor) -> None:  # fmt: skip
        self.settings = settings
        self.predictor_factory = predictor_factory
        self.metrics = ServiceMetrics()
        self.token_check = TokenCheck(settings.bearer_token())
        self.gate = AdmissionGate(settings.admission_capacity, settings.retry_after_s,
                                  on_change=self.metrics.in_flight.set)  # fmt: skip
        self.model_lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.predictor: Any = None
        self.state = STARTING
        self.failure: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self._loader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin loading in the background (probes answer meanwhile)."""
        self.executor = ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="distill-serve")
        self._loader = threading.Thread(target=self._load, name="distill-serve-load", daemon=True)
        self._loader.start()

    def wait_until_loaded(self, timeout: float) -> str:
        """Block until loading ended (tests, the CLI's start-up check); returns the state."""
        if self._loader is not None:
            self._loader.join(timeout)
        return self.state

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            predictor = self.predictor_factory(self.settings)
            images, affine = warm_up_case(len(predictor.package.modalities))
            with self.model_lock:
                predictor.segment(images, affine)  # the whole path once: preprocessing, model, postprocessing
        except Exception as exc:  # any failure leaves the service unready, with the reason
            self.failure = f"{type(exc).__name__}: {exc}"
            self.state = FAILED
            log.error("loading the package failed: %s", self.failure)
            if self.on_fatal is not None:
                self.on_fatal(self.failure)
            return
        self.predictor = predictor
        package = predictor.package
        self.metrics.model_info.labels(package.onnx_sha256, str(self.settings.backend), str(package.parameters)).set(1)
        if self.state == STARTING:
            self.state = READY
            self.metrics.ready.set(1)
        seconds = time.perf_counter() - start
        log.info("ready: package loaded and warmed up in %.2f s (%s)", seconds, self.settings.backend)

    def begin_drain(self) -> None:
        """SIGTERM: readiness 503 now; new segmentation requests are refused."""
        if self.state != DRAINING:
            log.info("draining: readiness is 503, in-flight requests finish")
        self.state = DRAINING
        self.metrics.ready.set(0)

    def stop(self) -> None:
        self.begin_drain()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def busy_workers(self) -> int:
        return self.gate.admitted

    # ------------------------------------------------------------------ per request

    def require_ready(self) -> Any:
        """The predictor, or 503 ``not_ready`` saying why there is none."""
        if self.state == READY and self.predictor is not None:
            return self.predictor
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.state == DRAINING:
            raise ServeError(503, "not_ready", "the service is shutting down", headers=retry)
        if self.state == FAILED:
            raise ServeError(503, "not_ready", "the model failed to load; see the service log")
        raise ServeError(503, "not_ready", "the model is still loading", headers=retry)

    def ticket(self, route: str) -> Ticket:
        """Admission for one segmentation request (503 ``busy`` when full)."""
        if self.state == DRAINING:
            raise ServeError(503, "not_ready", "the service is shutting down",
                             headers={"Retry-After": str(self.settings.retry_after_s)})  # fmt: skip
        assert self.executor is not None
        return _CountingTicket(self, route)


class _CountingTicket(Ticket):
    def __init__(self, service: Service, route: str) -> None:
        super().__init__(service.gate, service.executor, service.settings.request_timeout_s)
        self._service = service
        self._route = route

    async def __aenter__(self) -> Ticket:
        try:
            return await super().__aenter__()
        except ServeError as exc:
            if exc.code == "busy":
                self._service.metrics.rejected_busy.labels(self._route).inc()
            raise


__all__ = ["DRAINING", "FAILED", "READY", "STARTING", "Service", "open_predictor", "warm_up_case"]
