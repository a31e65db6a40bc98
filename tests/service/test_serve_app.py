"""The app through TestClient with a fake predictor: routes, every bad input, token, limits, concurrency, logs."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
from service_helpers import (
    MODALITIES,
    PACKAGE,
    SECRET,
    SHAPE,
    TOKEN,
    FakePredictor,
    assert_error,
    case_files,
    case_images,
    gzip_bomb,
    make_client,
    nifti_bytes_of,
    oblique_affine,
    read_nifti_response,
)

from serve.settings import MiB


def good(client, **kwargs):
    response = client.post("/segment", files=case_files(), **kwargs)
    assert response.status_code == 200, response.text[:500]
    return response


# ----------------------------------------------------------------------------- routes


def test_probes_model_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["manifest"]["format"] == "distill-model-package"
    assert [c["modality"] for c in info["manifest"]["inputs"]] == list(MODALITIES)
    assert "package" not in info["backend"]  # the fake's describe() names a local folder
    assert "/somewhere" not in json.dumps(info)
    spec = client.get("/openapi.json").json()
    for path in ("/segment", "/segment/raw", "/healthz", "/readyz", "/metrics", "/v1/model"):
        assert path in spec["paths"], path
    segment = spec["paths"]["/segment"]["post"]
    assert {"400", "401", "413", "415", "422", "503"} <= set(segment["responses"])
    assert segment["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"labels", "outputs"} <= {p["name"] for p in segment["parameters"]}
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    assert client.get("/docs").status_code == 404  # no UI that would load scripts from a CDN


def test_segment_returns_labels_on_the_input_grid_with_stage_timings(client, fake):
    response = good(client)
    assert response.headers["content-type"] == "application/gzip"
    timing = response.headers["server-timing"]
    stages = [part.split(";")[0] for part in timing.split(", ")]
    assert stages == ["decode", "preprocess", "model", "postprocess", "encode"]
    assert response.headers["x-request-id"]
    image = read_nifti_response(response.content)
    assert image.shape == SHAPE and image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-5)
    labels = np.asanyarray(image.dataobj)
    shape, affine = fake.seen[-1]
    expected = fake.segment(case_images().astype(np.float32), oblique_affine()).labels
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and labels.any()
    assert SECRET not in gzip.decompress(response.content)  # nothing of the input header comes back
    assert shape == (4, *SHAPE)
    np.testing.assert_array_equal(affine, read_nifti_response(nifti_bytes_of(case_images()[0])).affine)


def test_aliases_any_order_and_the_4d_form_give_the_same_labels(client):
    reference = good(client).content
    aliases = case_files(names=("T1N", "t1c", "t2w", "t2f"))
    shuffled = dict(reversed(list(aliases.items())))
    assert client.post("/segment", files=shuffled).content == reference
    four_d = {"image": ("case.nii.gz", nifti_bytes_of(np.moveaxis(case_images(), 0, -1)), "application/gzip")}
    assert client.post("/segment", files=four_d).content == reference


def test_label_conventions_regions_and_the_maps_zip(client):
    default = np.asanyarray(read_nifti_response(good(client).content).dataobj)
    brats2023 = np.asanyarray(read_nifti_response(good(client, params={"labels": "brats2023"}).content).dataobj)
    assert set(np.unique(brats2023)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(brats2023 == 3, default == 4)
    regions = np.asanyarray(read_nifti_response(good(client, params={"labels": "regions"}).content).dataobj)
    assert regions.shape == (*SHAPE, 3) and regions.dtype == np.uint8
    np.testing.assert_array_equal(regions[..., 0] > 0, default > 0)
    zipped = good(client, params={"outputs": "probabilities,entropy"})
    assert zipped.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert sorted(archive.namelist()) == ["entropy.nii.gz", "labels.nii.gz", "outputs.json", "probabilities.nii.gz"]
    maps = read_nifti_response(archive.read("probabilities.nii.gz"))
    assert maps.shape == (*SHAPE, 3) and maps.get_data_dtype() == np.float32
    description = json.loads(archive.read("outputs.json"))
    assert description["regions"] == ["WT", "TC", "ET"] and "binary entropy" in description["entropy"]
    assert archive.read("labels.nii.gz") == good(client).content


def test_uncertainty_from_a_package_without_the_head_is_refused_before_the_body(client, fake):
    """The committed package has no distilled-uncertainty output: a 422 that says so, and the model never runs."""
    calls = fake.calls  # the start-up warm-up may have run it already
    response = client.post("/segment", params={"outputs": "labels,uncertainty"}, files=case_files())
    error = assert_error(response, 422, "output_unavailable")
    assert "no distilled uncertainty output" in error["message"] and "outputs=entropy" in error["message"]
    assert fake.calls == calls
    assert client.get("/healthz").status_code == 200


def test_segment_raw_round_trip(client, fake):
    array = np.random.default_rng(1).normal(size=(4, 16, 32, 16)).astype(np.float16)
    buffer = io.BytesIO()
    np.save(buffer, array)
    response = client.post("/segment/raw", content=buffer.getvalue(), headers={"content-type": "application/x-npy"})
    assert response.status_code == 200, response.text
    assert [p.split(";")[0] for p in response.headers["server-timing"].split(", ")] == \
        ["decode", "model", "postprocess", "encode"]  # fmt: skip
    labels = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert labels.shape == (16, 32, 16) and labels.dtype == np.uint8


def test_the_predictor_dependency_can_be_overridden(client):
    from serve.routes.deps import get_predictor

    other = FakePredictor()
    client.app.dependency_overrides[get_predictor] = lambda: other
    try:
        good(client)
    finally:
        client.app.dependency_overrides.clear()
    assert other.calls == 1


def test_not_ready_until_loaded_and_failed_load_stays_unready():
    from fastapi.testclient import TestClient
    from service_helpers import make_settings

    from serve.app import create_app

    release = threading.Event()

    def slow_factory(settings):
        release.wait(10)
        return FakePredictor()

    app = create_app(make_settings(), predictor_factory=slow_factory)
    with TestClient(app) as client:
        assert_error(client.get("/readyz"), 503, "not_ready")
        assert client.get("/healthz").status_code == 200
        assert_error(client.post("/segment", files=case_files()), 503, "not_ready")
        release.set()
        app.state.service.wait_until_loaded(10)
        assert client.get("/readyz").status_code == 200

    def broken(settings):
        raise RuntimeError("no such backend")

    app = create_app(make_settings(), predictor_factory=broken)
    with TestClient(app) as client:
        assert app.state.service.wait_until_loaded(10) == "failed"
        assert "failed to load" in assert_error(client.get("/readyz"), 503, "not_ready")["message"]


# ----------------------------------------------------------------------------- every bad input, and the next good one


def without(files, name):
    return {k: v for k, v in files.items() if k != name}


def bad_inputs():
    plain = nifti_bytes_of(case_images()[0], gz=False)
    compressed = nifti_bytes_of(case_images()[0])
    nan = case_images()[0].astype(np.float32)
    nan[3, 3, 3] = np.nan
    moved = oblique_affine()
    moved[0, 3] += 5.0
    files = case_files()

    def replace(name, content):
        return {**files, name: ("x.nii.gz", content, "application/gzip")}

    two_d = bytearray(plain)
    two_d[40:42] = (2).to_bytes(2, "little")
    zero = bytearray(plain)
    zero[44:46] = (0).to_bytes(2, "little")
    absurd = bytearray(plain)
    absurd[42:48] = b"\xff\x7f\xff\x7f\xff\x7f"
    five_d = bytearray(plain)
    five_d[40:42] = (5).to_bytes(2, "little")
    return {
        "missing modality": (without(files, "flair"), 422, "missing_modality"),
        "no parts": ({"t1": None}, 422, "missing_modality"),
        "duplicate modality (alias)": ({**files, "t1n": files["t1"]}, 422, "duplicate_modality"),
        "unknown field": ({**files, "dwi": files["t1"]}, 422, "unknown_field"),
        "4D image and modalities": ({**without(files, "flair"), "image": files["flair"]}, 422, "mixed_inputs"),
        "mismatched shapes": (replace("t2", nifti_bytes_of(case_images(shape=(20, 18, 15))[2])), 422,
                              "geometry_mismatch"),
        "mismatched affines": (replace("t2", nifti_bytes_of(case_images()[2], affine=moved)), 422, "geometry_mismatch"),
        "not NIfTI": (replace("t1", b"\x89PNG\r\n\x1a\n" + b"\x00" * 500), 400, "not_nifti"),
        "truncated gzip": (replace("t1", compressed[: len(compressed) // 2]), 400, "truncated"),
        "header claims more data than sent": (replace("t1", plain[:-100]), 400, "truncated"),
        "NaN voxels": (replace("t1", nifti_bytes_of(nan, dtype=np.float32)), 422, "non_finite"),
        "zero dimension": (replace("t1", bytes(zero)), 422, "bad_dimensions"),
        "absurd dimensions": (replace("t1", bytes(absurd)), 413, "volume_too_large"),
        "2D": (replace("t1", bytes(two_d)), 422, "bad_dimensions"),
        "5D": (replace("t1", bytes(five_d)), 422, "bad_dimensions"),
        "all zero (no brain)": ({k: (f, nifti_bytes_of(np.zeros(SHAPE)), t) for k, (f, _, t) in files.items()}, 422,
                                "invalid_input"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_every_bad_input_gets_a_4xx_in_the_error_schema_and_the_next_request_succeeds(client, case):
    files, status, code = bad_inputs()[case]
    if files == {"t1": None}:
        headers = {"content-type": "multipart/form-data; boundary=b"}
        response = client.post("/segment", content=b"--b--\r\n", headers=headers)
    else:
        response = client.post("/segment", files=files)
    assert_error(response, status, code)
    good(client)
    assert client.get("/readyz").status_code == 200


def test_too_large_wrong_content_type_and_malformed_multipart(client):
    assert_error(client.post("/segment", json={"t1": "x"}), 415, "unsupported_media_type")
    assert_error(client.post("/segment", content=b"abc"), 415, "unsupported_media_type")
    no_boundary = {"content-type": "multipart/form-data"}
    assert_error(client.post("/segment", content=b"abc", headers=no_boundary), 400, "bad_multipart")
    cut = b'--b\r\nContent-Disposition: form-data; name="t1"\r\n\r\nabc'
    assert_error(client.post("/segment", content=cut, headers={"content-type": "multipart/form-data; boundary=b"}),
                 400, "bad_multipart")  # fmt: skip
    files = case_files()
    many = {**files, **{f"extra{i}": files["t1"] for i in range(3)}}
    assert_error(client.post("/segment", files=many), 422, "unknown_field")
    png = {"content-type": "image/png"}
    assert_error(client.post("/segment/raw", content=b"x", headers=png), 415, "unsupported_media_type")
    bomb = gzip_bomb(nifti_bytes_of(np.zeros((8, 8, 8)), gz=False, dtype=np.uint8), 1024)
    assert_error(client.post("/segment", files={**files, "t1": ("t1.nii.gz", bomb, "application/gzip")}), 400,
                 "trailing_data")  # fmt: skip
    assert_error(client.post("/segment", params={"labels": "brats1999"}, files=files), 422, "validation_error")
    assert_error(client.post("/segment", params={"outputs": "everything"}, files=files), 422, "validation_error")
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/segment"), 405, "method_not_allowed")
    good(client)


def test_raw_bad_inputs(client):
    def post(body):
        return client.post("/segment/raw", content=body, headers={"content-type": "application/x-npy"})

    import pickle

    array = np.zeros((4, 16, 16, 16), np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array[:3])
    assert_error(post(buffer.getvalue()), 422, "wrong_shape")
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float64))
    assert_error(post(buffer.getvalue()), 422, "unsupported_dtype")
    assert_error(post(pickle.dumps(array)), 400, "invalid_npy")
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "a"], dtype=object), allow_pickle=True)
    assert_error(post(buffer.getvalue()), 422, "pickled_array")


def test_one_unexpected_error_is_a_500_in_the_schema_and_the_service_stays_up():
    broken = FakePredictor()
    client = make_client(broken)
    try:
        broken.error = ZeroDivisionError("bug")
        body = assert_error(client.post("/segment", files=case_files()), 500, "internal_error")
        assert "bug" not in body["message"]
        broken.error = None
        good(client)
    finally:
        client.__exit__(None, None, None)


# ----------------------------------------------------------------------------- body limits (Triton's 63/64/65 MB)


def padded_request(total: int) -> tuple[bytes, str]:
    """A valid /segment body of exactly ``total`` bytes: the t1 gzip carries an FCOMMENT of the right length."""
    files = case_files()

    def build(pad: int) -> tuple[bytes, str]:
        t1 = files["t1"][1]
        padded = t1[:3] + bytes([t1[3] | 0x10]) + t1[4:10] + b"c" * pad + b"\x00" + t1[10:]
        sent = {**files, "t1": ("t1.nii.gz", padded, "application/gzip")}
        request = httpx.Request("POST", "http://t/segment", files=sent)
        return request.read(), request.headers["content-type"]

    body, _ = build(0)
    return build(total - len(body))


@pytest.mark.parametrize("mib, status", [(63, 200), (64, 200), (65, 413)])
def test_body_limit_at_the_default_64_mib(client, mib, status):
    body, content_type = padded_request(mib * MiB)
    assert len(body) == mib * MiB
    response = client.post("/segment", content=body, headers={"content-type": content_type})
    if status == 413:
        assert_error(response, 413, "body_too_large")
    else:
        assert response.status_code == 200, response.text[:300]


def test_body_limit_counts_a_chunked_body_while_it_streams(fake):
    body, content_type = padded_request(4 * MiB)
    for limit, status in ((len(body) + 1, 200), (len(body), 200), (len(body) - 1, 413)):
        client = make_client(fake, max_body_bytes=limit)
        try:
            chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: chunked
            response = client.post("/segment", content=chunks, headers={"content-type": content_type})
            assert response.status_code == status, response.text[:200]
            if status == 413:
                assert_error(response, 413, "body_too_large")
            limited = client.post("/segment", content=body, headers={"content-type": content_type})
            assert limited.status_code == status  # and the same from Content-Length, before reading
        finally:
            client.__exit__(None, None, None)


# ----------------------------------------------------------------------------- token


def test_token_protects_everything_but_the_probes(fake, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    client = make_client(fake, token_file=token_file)
    try:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        for method, path in (("get", "/metrics"), ("get", "/v1/model"), ("post", "/segment"), ("post", "/segment/raw")):
            for headers in ({}, {"authorization": TOKEN}, {"authorization": "Basic " + TOKEN},
                            {"authorization": "Bearer"}, {"authorization": "Bearer " + TOKEN[:-1]},
                            {"authorization": "Bearer " + TOKEN + "x"}, {"authorization": "Bearer a b"}):  # fmt: skip
                response = getattr(client, method)(path, headers=headers)
                assert_error(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")
        auth = {"authorization": "Bearer " + TOKEN}
        assert client.get("/metrics", headers=auth).status_code == 200
        assert client.get("/v1/model", headers=auth).status_code == 200
        assert client.post("/segment", files=case_files(), headers=auth).status_code == 200
        assert fake.calls == 2  # warm-up and the one authorised request: refused ones never reached the model
    finally:
        client.__exit__(None, None, None)


# ----------------------------------------------------------------------------- concurrency and time


def test_beyond_concurrency_and_queue_requests_get_503_with_retry_after():
    hold = threading.Event()
    hold.set()  # the warm-up passes
    slow = FakePredictor(hold=hold)
    client = make_client(slow, max_concurrency=1, max_queue=1)
    gate = client.app.state.service.gate
    results = []
    try:
        hold.clear()
        slow.entered.clear()
        threads = [threading.Thread(target=lambda: results.append(client.post("/segment", files=case_files())))
                   for _ in range(2)]  # fmt: skip
        threads[0].start()
        assert slow.entered.wait(10)  # one request runs the model
        threads[1].start()
        deadline = time.monotonic() + 10
        while gate.admitted < 2 and time.monotonic() < deadline:  # the second one waits in the queue
            time.sleep(0.01)
        busy = [client.post("/segment", files=case_files()) for _ in range(2)]
        for response in busy:
            assert_error(response, 503, "busy")
            assert response.headers["retry-after"] == "1"
        hold.set()
        for thread in threads:
            thread.join(30)
        assert sorted(r.status_code for r in results) == [200, 200]
        assert slow.max_active == 1
        metrics = client.get("/metrics").text
        assert 'distill_serve_rejected_busy_total{route="/segment"} 2.0' in metrics
        good(client)
    finally:
        hold.set()
        client.__exit__(None, None, None)


def test_one_model_call_at_a_time_even_with_more_workers():
    slow = FakePredictor(delay=0.3)
    client = make_client(slow, max_concurrency=3, max_queue=0)
    try:
        threads = [threading.Thread(target=lambda: client.post("/segment", files=case_files())) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert slow.calls == 4 and slow.max_active == 1
    finally:
        client.__exit__(None, None, None)


def test_the_request_time_limit_answers_504_and_frees_the_slot_when_the_work_ends():
    slow = FakePredictor(delay=1.0)
    client = make_client(slow, request_timeout_s=0.3, max_queue=0)
    try:
        start = time.perf_counter()
        assert_error(client.post("/segment", files=case_files()), 504, "deadline_exceeded")
        assert time.perf_counter() - start < 0.95  # answered at the deadline, not when the model call ended
        assert_error(client.post("/segment", files=case_files()), 503, "busy")  # the model call still runs
        time.sleep(1.0)
        slow.delay = 0.0
        good(client)
    finally:
        client.__exit__(None, None, None)


# ----------------------------------------------------------------------------- logs and metrics carry no case data


def test_logs_and_metrics_carry_no_file_names_header_text_or_field_names(client, caplog):
    caplog.set_level(logging.DEBUG)
    files = {k: (f"Brats18_SECRETCASE_{k}.nii.gz", v[1], v[2]) for k, v in case_files().items()}
    assert client.post("/segment", files=files, params={"labels": "brats2023"}).status_code == 200
    client.post("/segment", files={**files, "patientname": files["t1"]})
    ours = [r for r in caplog.records if r.name.startswith("distill.serve")]
    text = "\n".join(r.getMessage() for r in ours) + client.get("/metrics").text
    for secret in ("SECRETCASE", "PATIENT", "Jane", "patientname", "brats2023"):
        assert secret not in text, secret
    records = [json.loads(r.getMessage()) for r in ours if r.name == "distill.serve.access"]
    segment = [r for r in records if r["route"] == "/segment"]
    assert segment[0]["status"] == 200 and set(segment[0]["stages_ms"]) == {"decode", "preprocess", "model",
                                                                             "postprocess", "encode"}  # fmt: skip
    assert segment[1]["error"] == "unknown_field"
    assert set(segment[0]) == {"request_id", "route", "method", "status", "bytes_in", "bytes_out", "ms", "stages_ms"}


def test_metrics_count_routes_statuses_stages_in_flight_and_never_raw_paths(client):
    good(client)
    client.get("/a-scanner-probe/../../etc/passwd")
    text = client.get("/metrics").text
    assert 'distill_serve_requests_total{method="POST",route="/segment",status="200"} 1.0' in text
    assert 'route="unmatched"' in text and "passwd" not in text
    for stage in ("decode", "preprocess", "model", "postprocess", "encode"):
        assert f'distill_serve_stage_duration_seconds_count{{route="/segment",stage="{stage}"}} 1.0' in text
    assert "distill_serve_in_flight_requests 0.0" in text
    assert "distill_serve_ready 1.0" in text
    assert "distill_serve_model_info{" in text


def test_the_package_path_setting_is_checked():
    from pydantic import ValidationError

    from serve.settings import ServeSettings

    with pytest.raises(ValidationError, match="not a folder"):
        ServeSettings(package=PACKAGE / "nope")
