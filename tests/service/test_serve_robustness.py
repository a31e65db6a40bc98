"""Load, fuzz and memory: the service stays up and answers in its schema whatever comes in.

* a bounded load test: 4 concurrent clients for 30 s against a real uvicorn serving a real
  package, p50/p95 reported, zero 5xx;
* schemathesis over the OpenAPI spec (every route, parameter and body it documents);
* hypothesis over malformed NIfTI bytes (truncations, bit flips, header lies) through the real
  predictor: 200 cases in the fast tier, 2,000 in the slow one; no 5xx, no crash;
* resident memory grows less than 5 % over 200 requests after warm-up.
"""

from __future__ import annotations

import gzip
import json
import statistics
import struct
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_helpers import PACKAGE, FakePredictor, ServerProcess, case_files, case_images, make_client, multipart_body
from service_helpers import nifti_bytes_of as nifti

SERVE = ["-m", "distill", "serve", str(PACKAGE), "--port", "0", "--threads", "1"]


def load(url: str, body: bytes, content_type: str, clients: int, seconds: float, max_requests: int = 5000) -> dict:
    """``clients`` threads posting ``body`` for ``seconds`` (and at most ``max_requests`` in all)."""
    latencies, statuses, lock = [], [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < stop_at:
                with lock:
                    if len(statuses) >= max_requests:
                        return
                start = time.perf_counter()
                headers = {"content-type": content_type}
                status = session.post(url + "/segment", content=body, headers=headers).status_code
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    ok = sorted(seconds for seconds, status in zip(latencies, statuses) if status == 200)
    return {"requests": len(statuses), "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "p50_s": statistics.median(ok) if ok else None,
            "p95_s": ok[min(len(ok) - 1, int(0.95 * len(ok)))] if ok else None,
            "requests_per_s": len(statuses) / seconds}  # fmt: skip


@pytest.mark.slow
def test_load_four_clients_for_30_seconds_zero_5xx():
    body, content_type = multipart_body(case_files(shape=(64, 64, 48)))
    with ServerProcess(SERVE + ["--max-concurrency", "2", "--max-queue", "2"]) as server:
        server.wait_ready()
        report = load(server.url, body, content_type, clients=4, seconds=30)
    print("load:", json.dumps(report))
    assert report["requests"] >= 8, report
    assert set(report["statuses"]) == {"200"}, report  # capacity 4 = the clients: nothing busy, nothing 5xx


@pytest.mark.slow
def test_resident_memory_grows_less_than_5_percent_over_200_requests():
    body, content_type = multipart_body(case_files(shape=(64, 64, 48)))
    with ServerProcess(SERVE, env={"MALLOC_ARENA_MAX": "2"}) as server:
        server.wait_ready()
        with httpx.Client(timeout=60) as session:
            def post() -> None:
                headers = {"content-type": content_type}
                assert session.post(server.url + "/segment", content=body, headers=headers).status_code == 200

            for _ in range(30):
                post()
            before = server.rss()
            for _ in range(200):
                post()
            after = server.rss()
    growth = (after - before) / before
    print(f"rss before {before / 2**20:.1f} MiB, after 200 requests {after / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth < 0.05


# ----------------------------------------------------------------------------- OpenAPI fuzzing


@pytest.fixture(scope="module")
def fuzzed_app():
    client = make_client(FakePredictor())
    yield client.app
    client.__exit__(None, None, None)


def without_lifespan(app):
    """The started app, with lifespan events acknowledged but not passed on: schemathesis's client
    runs a lifespan per call, and the app's shutdown would drain the service the fixture started."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


def fuzz_openapi(app, per_operation: int) -> int:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(app))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen = 0
    for operation in schema.get_all_operations():
        operation = operation.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=per_operation, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            nonlocal seen
            seen += 1
            case.call_and_validate(checks=checks)

        fuzz()
    assert app.state.service.state == "ready"  # the fuzzing left the service serving
    return seen


def test_schemathesis_over_the_openapi_spec_finds_no_5xx_and_no_undocumented_answer(fuzzed_app):
    assert fuzz_openapi(fuzzed_app, per_operation=6) >= 15  # GET routes without parameters have one case each


@pytest.mark.slow
def test_schemathesis_over_the_openapi_spec_slow_tier(fuzzed_app):
    assert fuzz_openapi(fuzzed_app, per_operation=150) >= 250


# ----------------------------------------------------------------------------- malformed NIfTI through the real model


def mutations(valid_plain: bytes):
    """Truncations, bit flips, header field lies (dims, datatype, vox_offset, pixdim, scaling), gzip damage."""
    fields = st.sampled_from([(40, "8h"), (70, "h"), (72, "h"), (76, "8f"), (108, "f"), (112, "f"), (116, "f"),
                              (252, "h"), (254, "h"), (256, "4f"), (280, "12f"), (344, "4s")])  # fmt: skip

    def lie(draw_field, data):
        offset, fmt = draw_field
        count = struct.calcsize("<" + fmt)
        raw = bytearray(valid_plain)
        raw[offset:offset + count] = data[:count].ljust(count, b"\x00")
        return bytes(raw)

    truncate = st.integers(0, len(valid_plain) - 1).map(lambda n: valid_plain[:n])
    positions = st.tuples(st.integers(0, len(valid_plain) - 1), st.integers(0, 7))
    flips = st.lists(positions, min_size=1, max_size=8).map(lambda chosen: _flip(valid_plain, chosen))
    lies = st.builds(lie, fields, st.binary(min_size=48, max_size=48))
    plain = st.one_of(truncate, flips, lies, st.binary(max_size=600))
    return st.one_of(plain, plain.map(lambda raw: gzip.compress(raw, mtime=0)),
                     st.builds(lambda raw, n: gzip.compress(raw, mtime=0)[:n], plain, st.integers(0, 400)))  # fmt: skip


def _flip(raw: bytes, flips) -> bytes:
    data = bytearray(raw)
    for position, bit in flips:
        data[position] ^= 1 << bit
    return bytes(data)


def fuzz_nifti(examples: int) -> None:
    client = make_client(real_predictor())
    images = case_images(0)
    files = case_files()
    valid = nifti(images[0], gz=False)
    answers: dict[int, int] = {}
    try:
        @given(raw=mutations(valid), field=st.sampled_from(["t1", "t2", "image"]))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(raw, field):
            sent = {**files, field: ("x.nii", raw, "application/octet-stream")}
            if field == "image":
                sent = {"image": ("x.nii", raw, "application/octet-stream")}
            response = client.post("/segment", files=sent)
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            assert response.status_code < 500, response.text[:300]
            if response.status_code != 200:
                assert set(response.json()["error"]) == {"code", "message"}

        fuzz()
        assert client.get("/readyz").status_code == 200
        assert client.post("/segment", files=files).status_code == 200
    finally:
        client.__exit__(None, None, None)
    print("answers:", answers)
    assert sum(answers.values()) >= examples * 0.9


def real_predictor():
    from distill.infer.predictor import Predictor

    return Predictor.from_package(PACKAGE, "onnxruntime", threads=1)


def test_malformed_nifti_fuzz_fast_tier():
    fuzz_nifti(200)


@pytest.mark.slow
def test_malformed_nifti_fuzz_2000_cases():
    fuzz_nifti(2000)

