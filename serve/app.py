"""The app factory: ``create_app(settings)`` -> a FastAPI app serving one model package.

Nothing happens at import or in :func:`create_app` beyond wiring: the lifespan starts loading
the package (through :class:`distill.infer.predictor.Predictor`) in the background and runs a
warm-up inference; ``/readyz`` turns 200 only after that. Tests pass ``predictor_factory`` (or
override :func:`serve.routes.deps.get_predictor`) to run without a real model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from distill import __version__
from serve.errors import install_error_handlers
from serve.limits import BodyLimitMiddleware
from serve.observe import ObserveMiddleware
from serve.routes import ops, segment
from serve.service import Service, open_predictor
from serve.settings import ServeSettings

DESCRIPTION = """Brain-tumour segmentation with one Distill model package.

`POST /segment` takes the four MRI modalities as NIfTI and returns the label map on the input's
grid; `POST /segment/raw` takes a preprocessed tensor. Every error has the body
`{"error": {"code": ..., "message": ...}}`. Protected routes need `Authorization: Bearer <token>`
when the service runs with a token (always when it binds a non-loopback address).
"""


def create_app(settings: ServeSettings, predictor_factory: Callable[[ServeSettings], Any] = open_predictor) -> FastAPI:
    """The app; ``app.state.service`` holds its :class:`serve.service.Service`."""
    service = Service(settings, predictor_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="Distill segmentation service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")  # fmt: skip
    app.state.service = service
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(segment.router)
    routes = [app.openapi_url, *(route.path for route in (*ops.router.routes, *segment.router.routes))]
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware, metrics=service.metrics, routes=routes)
    return app


__all__ = ["create_app"]
