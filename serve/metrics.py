"""Prometheus metrics (``prometheus-client``), one registry per app.

Labels are route templates, methods, status codes and stage names only: never a case
identifier, a file name, a field name or a raw path (an unknown path is counted as
``route="unmatched"``, so a scanner cannot grow the label set).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("decode", "preprocess", "model", "postprocess", "encode")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
SIZE_BUCKETS = tuple(float(2**k) for k in range(10, 28, 2))  # 1 KiB .. 128 MiB


class ServiceMetrics:
    """Every metric of the service, registered in its own :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("distill_serve_requests", "HTTP requests by route, method and status code.",
                                ("route", "method", "status"), registry=r)  # fmt: skip
        self.latency = Histogram("distill_serve_request_duration_seconds", "Whole-request latency by route.",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.stages = Histogram("distill_serve_stage_duration_seconds", "Per-stage latency of segmentation requests.",
                                ("route", "stage"), buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.request_bytes = Histogram("distill_serve_request_body_bytes", "Request body sizes.", ("route",),
                                       buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.response_bytes = Histogram("distill_serve_response_body_bytes", "Response body sizes.", ("route",),
                                        buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.in_flight = Gauge("distill_serve_in_flight_requests",
                               "Segmentation requests admitted (running or queued).", registry=r)  # fmt: skip
        self.rejected_busy = Counter("distill_serve_rejected_busy", "Requests refused with 503 because every slot "
                                     "and the queue were taken.", ("route",), registry=r)  # fmt: skip
        self.ready = Gauge("distill_serve_ready", "1 once the model is loaded and warmed up, 0 before and while "
                           "shutting down.", registry=r)  # fmt: skip
        self.model_info = Gauge("distill_serve_model_info", "The served package (value 1).",
                                ("onnx_sha256", "backend", "parameters"), registry=r)  # fmt: skip

    def observe_stages(self, route: str, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            if stage in STAGES:
                self.stages.labels(route, stage).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["STAGES", "ServiceMetrics"]
