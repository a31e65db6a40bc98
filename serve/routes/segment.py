"""``POST /segment`` (NIfTI in, NIfTI or zip out) and ``POST /segment/raw`` (.npy in and out).

Order of checks per request, cheapest and most protective first: body size from
Content-Length (middleware) -> token -> model ready -> admission (503 ``busy`` beyond
concurrency + queue) -> Content-Type -> field names as each part's headers arrive -> body
size while streaming -> per-part decoding limits -> the model, under the per-request deadline.
"""

from __future__ import annotations

import time
from enum import Enum
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.requests import ClientDisconnect

from serve import inference
from serve.auth import require_token
from serve.errors import ServeError, error_responses
from serve.multipart import read_parts
from serve.routes.deps import get_predictor, get_service

router = APIRouter()

LabelChoice = Enum("LabelChoice", {name: name for name in inference.LABEL_CHOICES}, type=str)
LABELS_HELP = ("Output label convention (default: the package's); `regions` returns the WT, TC, ET masks as a 4D "
               "uint8 NIfTI (X, Y, Z, region) instead.")  # fmt: skip
OUTPUTS_HELP = ("Comma-separated: `labels` (default), `probabilities`, `uncertainty` (the distilled teacher spread: "
                "the predicted standard deviation of the teacher ensemble's passes, in [0, 0.5], not a calibrated "
                "error probability; packages trained with an uncertainty head only, else 422 `output_unavailable`), "
                "`entropy` (binary entropy of the student's probabilities, bits). With any map the answer is a zip "
                "of NIfTI files (label map, float32 maps X, Y, Z, region, and outputs.json).")  # fmt: skip
MODALITY_FIELD = {"type": "string", "format": "binary"}
SEGMENT_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "description": "One NIfTI (.nii or .nii.gz) per modality, named by modality or alias (GET /v1/model lists "
                       "them), or a single 4D NIfTI as `image` with channels in the package's order.",
        "properties": {name: {**MODALITY_FIELD, "description": f"{name} volume"}
                       for name in ("t1", "t1ce", "t2", "flair", "image")},
    }}},
}  # fmt: skip
RAW_BODY = {
    "required": True,
    "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in ("application/x-npy",
                                                                                        "application/octet-stream")},
    "description": ".npy float16/float32 (C, X, Y, Z) on the package's grid: preprocessed (cropped, z-scored, "
                   "resampled) and padded to a multiple of the package's divisor.",
}  # fmt: skip
RAW_MEDIA_TYPES = ("application/x-npy", "application/octet-stream")
SEGMENT_ERRORS = error_responses(400, 401, 408, 413, 415, 422, 500, 503, 504)


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={seconds * 1000:.2f}" for stage, seconds in timings.items())


def _respond(request: Request, route: str, encoded: inference.Encoded) -> Response:
    service = get_service(request)
    service.metrics.observe_stages(route, encoded.timings)
    request.state.stages_ms = {k: round(v * 1000, 2) for k, v in encoded.timings.items()}
    headers = {"Server-Timing": _server_timing(encoded.timings),
               "Content-Disposition": f'attachment; filename="{encoded.filename}"'}  # fmt: skip
    return Response(encoded.body, media_type=encoded.media_type, headers=headers)


async def _stream(request: Request):
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ServeError(400, "bad_request", "the client disconnected before the body ended") from None


def _limits(request: Request) -> inference.Limits:
    settings = get_service(request).settings
    return inference.Limits(max_part_bytes=settings.max_part_bytes, max_voxels=settings.max_voxels)


@router.post(
    "/segment", summary="Segment one case: four modalities as NIfTI in, the label map as NIfTI out",
    dependencies=[Depends(require_token)], response_class=Response, openapi_extra={"requestBody": SEGMENT_BODY},
    responses={200: {"description": "labels.nii.gz (or a zip with maps); stage times in Server-Timing",
                     "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}},
                                 "application/zip": {"schema": {"type": "string", "format": "binary"}}}},
               **SEGMENT_ERRORS},
)  # fmt: skip
async def segment(request: Request, labels: LabelChoice | None = Query(None, description=LABELS_HELP),
                  outputs: str = Query("labels", description=OUTPUTS_HELP, max_length=64),
                  predictor: Any = Depends(get_predictor)) -> Response:  # fmt: skip
    service = get_service(request)
    chosen = inference.parse_outputs(outputs)
    inference.check_outputs_available(chosen, predictor.package)  # before the body is read
    label_name = labels.value if labels is not None else None
    async with service.ticket("/segment") as ticket:
        plan = inference.FieldPlan(predictor.package.modalities, predictor.package.aliases)
        started = time.perf_counter()
        parts = await ticket.receive(read_parts(_stream(request), request.headers.get("content-type"), plan.accept,
                                                service.settings.max_parts))  # fmt: skip
        work = partial(inference.segment_case, predictor, service.model_lock, parts, plan, label_name, chosen,
                       _limits(request), time.perf_counter() - started)  # fmt: skip
        del parts
        encoded = await ticket.run(work)
    return _respond(request, "/segment", encoded)


@router.post(
    "/segment/raw", summary="Low-latency path: a preprocessed .npy tensor in, uint8 labels .npy out",
    dependencies=[Depends(require_token)], response_class=Response, openapi_extra={"requestBody": RAW_BODY},
    responses={200: {"description": "labels.npy, uint8 (X, Y, Z) on the input grid; stage times in Server-Timing",
                     "content": {"application/x-npy": {"schema": {"type": "string", "format": "binary"}}}},
               **SEGMENT_ERRORS},
)  # fmt: skip
async def segment_raw(request: Request, labels: LabelChoice | None = Query(None, description=LABELS_HELP),
                      predictor: Any = Depends(get_predictor)) -> Response:  # fmt: skip
    service = get_service(request)
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media not in RAW_MEDIA_TYPES:
        raise ServeError(415, "unsupported_media_type", f"Content-Type {media[:60]!r}; send application/x-npy")
    label_name = labels.value if labels is not None else None
    async with service.ticket("/segment/raw") as ticket:
        started = time.perf_counter()

        async def body() -> bytes:
            return b"".join([chunk async for chunk in _stream(request)])

        raw = await ticket.receive(body())
        work = partial(inference.segment_raw, predictor, service.model_lock, raw, label_name, _limits(request),
                       time.perf_counter() - started)  # fmt: skip
        del raw
        encoded = await ticket.run(work)
    return _respond(request, "/segment/raw", encoded)


__all__ = ["router"]
