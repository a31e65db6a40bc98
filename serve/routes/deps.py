"""Dependencies shared by the routes; tests override :func:`get_predictor` with a fake."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from serve.service import Service


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_predictor(request: Request) -> Any:
    """The loaded predictor, or 503 ``not_ready`` (loading, failed, shutting down)."""
    return get_service(request).require_ready()


__all__ = ["get_predictor", "get_service"]
