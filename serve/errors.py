"""One error schema for every route: ``{"error": {"code": ..., "message": ...}}``.

``code`` is a stable machine-readable word (below); ``message`` says what was wrong in a
sentence. Handlers turn :class:`ServeError`, FastAPI's validation errors, Starlette's HTTP
errors and anything unexpected into that shape, so no route answers with another body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("distill.serve")

#: code -> meaning; the OpenAPI description lists them.
ERROR_CODES = {
    "bad_request": "the request is malformed (query, headers)",
    "bad_multipart": "the multipart body cannot be parsed",
    "unsupported_media_type": "wrong Content-Type for the route",
    "unknown_field": "a form field that is neither a modality, an alias of one, nor `image`",
    "duplicate_modality": "two fields give the same modality",
    "missing_modality": "a modality the package needs was not sent",
    "mixed_inputs": "`image` (4D) and single modalities in one request",
    "too_many_parts": "more multipart parts than the package has modalities",
    "not_nifti": "a part is not a single-file NIfTI-1/2 image",
    "bad_gzip": "a gzip stream is corrupt",
    "truncated": "a part holds less data than its header declares",
    "trailing_data": "a part holds more data than its header declares",
    "bad_header": "a NIfTI header field is invalid (vox_offset, scaling, affine, spacing)",
    "bad_dimensions": "zero, 2D, 5D or otherwise unusable dimensions",
    "unsupported_dtype": "a voxel data type the service does not read",
    "non_finite": "NaN or Inf voxels",
    "out_of_range": "intensities no scanner writes (beyond +-1e9)",
    "geometry_mismatch": "modalities differ in shape or affine",
    "invalid_input": "the volume cannot be segmented (e.g. every voxel is zero)",
    "invalid_npy": "the /segment/raw body is not an .npy array",
    "pickled_array": "an object array, which would need unpickling",
    "wrong_shape": "the /segment/raw array has the wrong shape for the package",
    "body_too_large": "the request body exceeds the limit",
    "part_too_large": "a part exceeds the decompressed-size limit",
    "volume_too_large": "a volume (or its resampled grid) exceeds the voxel limit",
    "unauthorized": "missing, malformed or wrong bearer token",
    "not_found": "no such route",
    "method_not_allowed": "the route does not take this method",
    "validation_error": "a query parameter has an invalid value",
    "output_unavailable": "an output the served package does not have (e.g. `uncertainty` without an uncertainty head)",
    "request_timeout": "the body did not arrive within the request time limit",
    "busy": "every slot and the queue are full: retry after Retry-After seconds",
    "not_ready": "the model is still loading, failed to load, or the service is shutting down",
    "deadline_exceeded": "the request did not finish within the time limit",
    "internal_error": "a bug: the service logged it with the request id",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code: " + "; ".join(f"`{k}` {v}" for k, v in ERROR_CODES.items()))
    message: str = Field(description="What was wrong, in one sentence.")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ServeError(Exception):
    """An answer other than success: HTTP status, error code, message and optional headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries documenting the error body for ``statuses``."""
    described = {400: "Malformed request", 401: "Missing, malformed or wrong bearer token", 404: "Not found",
                 408: "Body not received in time", 413: "Too large", 415: "Unsupported media type",
                 422: "Invalid input", 500: "Internal error", 503: "Busy, loading or shutting down",
                 504: "Time limit exceeded"}  # fmt: skip
    return {status: {"model": ErrorBody, "description": described[status]} for status in statuses}


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in the one schema."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        request.state.error_code = exc.code
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error_code = "validation_error"
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return error_response(422, "validation_error", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "bad_request")
        request.state.error_code = code
        messages = {404: "no such route", 405: "this route does not take that method"}
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        request.state.error_code = "internal_error"
        log.error("internal error", extra={"request_id": request_id, "exception": type(exc).__name__}, exc_info=exc)
        return error_response(500, "internal_error", f"internal error; the service logged it as request {request_id}")


__all__ = ["ERROR_CODES", "ErrorBody", "ErrorDetail", "ServeError", "error_response", "error_responses",
           "install_error_handlers"]  # fmt: skip
