"""Operations routes: ``/healthz``, ``/readyz`` (open), ``/metrics``, ``/v1/model`` (token)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from distill import __version__
from serve.auth import require_token
from serve.errors import ServeError, error_responses
from serve.routes.deps import get_predictor, get_service
from serve.service import READY

router = APIRouter()


class Status(BaseModel):
    status: str


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers",
            responses=error_responses(500))  # fmt: skip
async def healthz() -> Status:
    return Status(status="alive")


@router.get("/readyz", response_model=Status, summary="Readiness: package open and warm-up done",
            responses=error_responses(500, 503))  # fmt: skip
async def readyz(request: Request) -> Status:
    service = get_service(request)
    if service.state != READY:
        service.require_ready()  # raises 503 with the reason
        raise ServeError(503, "not_ready", f"state {service.state}")
    return Status(status="ready")


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", dependencies=[Depends(require_token)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"},
                       **error_responses(401, 500)}, response_class=Response)  # fmt: skip
async def metrics(request: Request) -> Response:
    body, content_type = get_service(request).metrics.exposition()
    return Response(body, media_type=content_type)


def without_local_paths(value: Any) -> Any:
    """``value`` with every string that is an absolute local path dropped (recursively)."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items() if not _is_local_path(v)}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value if not _is_local_path(v)]
    return value


def _is_local_path(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    drive = len(value) > 2 and value[1:3] in (":\\", ":/")
    return value.startswith(("/", "~", "\\")) or drive or PurePath(value).is_absolute()


class ModelInfo(BaseModel):
    service: dict[str, Any]
    backend: dict[str, Any]
    manifest: dict[str, Any]


@router.get("/v1/model", response_model=ModelInfo, summary="The served package's manifest (no local paths) and backend",
            dependencies=[Depends(require_token)], responses=error_responses(401, 500, 503))  # fmt: skip
async def model(request: Request, predictor: Any = Depends(get_predictor)) -> ModelInfo:
    settings = get_service(request).settings
    backend = {k: v for k, v in predictor.describe().items() if k != "package"}
    service = {"distill_version": __version__, "max_body_bytes": settings.max_body_bytes,
               "max_part_bytes": settings.max_part_bytes, "max_voxels": settings.max_voxels,
               "max_concurrency": settings.max_concurrency, "max_queue": settings.max_queue,
               "request_timeout_s": settings.request_timeout_s}  # fmt: skip
    return ModelInfo(service=service, backend=without_local_paths(backend),
                     manifest=without_local_paths(predictor.package.manifest.to_dict()))  # fmt: skip


__all__ = ["router", "without_local_paths"]
