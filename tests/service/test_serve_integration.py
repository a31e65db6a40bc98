"""A real uvicorn on a free loopback port: a real package on a real case equals ``distill predict``;
imports refused at run time; graceful shutdown on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import PACKAGE, REPO_ROOT, ServerProcess, assert_error, case_files, multipart_body

REAL_CASE = "Brats18_2013_11_1"
SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}


@pytest.mark.realdata
def test_segment_over_http_equals_distill_predict_voxel_for_voxel(brats18_dir, tmp_path):
    """`distill serve` a committed real-data package, POST a real 1 mm case, compare with `distill predict`."""
    from distill.infer.backends import BackendSpec
    from distill.infer.predict import PredictConfig, predict_folder

    case_dir = brats18_dir / REAL_CASE
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / REAL_CASE).symlink_to(case_dir)
    predict_folder(PredictConfig(package=PACKAGE, input_dir=inputs, output_dir=tmp_path / "out",
                                 backend=BackendSpec.parse("onnxruntime", threads=2), progress=False))  # fmt: skip
    predicted = (tmp_path / "out" / f"{REAL_CASE}.nii.gz").read_bytes()
    files = {m: (f"{m}.nii.gz", (case_dir / f"{REAL_CASE}_{s}.nii.gz").read_bytes(), "application/gzip")
             for m, s in SUFFIXES.items()}  # fmt: skip
    with ServerProcess(["-m", "distill", "serve", str(PACKAGE), "--port", "0", "--threads", "2"]) as server:
        server.wait_ready()
        response = httpx.post(server.url + "/segment", files=files, timeout=300)
        assert response.status_code == 200, response.text[:500]
        assert response.content == predicted  # the same bytes: same labels, same fresh header, same gzip
        aliased = {{"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}[k]: v for k, v in files.items()}
        assert httpx.post(server.url + "/segment", files=aliased, timeout=300).content == predicted
        timings = dict(p.split(";dur=") for p in response.headers["server-timing"].split(", "))
        assert set(timings) == {"decode", "preprocess", "model", "postprocess", "encode"}
        assert all(float(v) >= 0 for v in timings.values())
    import gzip

    import nibabel as nib

    labels = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(response.content)).dataobj)
    assert labels.shape == (240, 240, 155) and (labels > 0).sum() > 1000


FORBIDDEN = ("distill.train", "distill.teacher", "distill.cache", "distill.export", "distill.losses", "nnunetv2",
             "monai", "zarr", "ray", "onnx", "torchvision")  # fmt: skip


def test_a_real_request_imports_no_training_code_at_run_time():
    """In a fresh interpreter whose import system refuses training, teacher, cache, export, losses,
    nnU-Net, MONAI, zarr, Ray and onnx: start the real server, segment over HTTP, check sys.modules."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys, threading, time
        FORBIDDEN = {FORBIDDEN!r}

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    raise ImportError(f"refused at run time: {{name}}")
                return None

        sys.meta_path.insert(0, Refuse())
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import httpx
        from serve.app import create_app
        from serve.server import DrainingServer, uvicorn_config
        from serve.settings import ServeSettings
        from service_helpers import case_files

        settings = ServeSettings(package={str(PACKAGE)!r}, port=0, threads=1)
        app = create_app(settings)
        server = DrainingServer(uvicorn_config(app, settings), app.state.service, 0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while (server.bound_port is None or app.state.service.state != "ready") and time.monotonic() < deadline:
            assert app.state.service.state != "failed", app.state.service.failure
            time.sleep(0.05)
        response = httpx.post(f"http://127.0.0.1:{{server.bound_port}}/segment", files=case_files(), timeout=60)
        assert response.status_code == 200, response.text
        server.should_exit = True
        thread.join(30)
        loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
        assert not loaded, loaded
        print("segmented over HTTP", len(response.content))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "segmented over HTTP" in done.stdout


SLOW_SERVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from service_helpers import FakePredictor, make_settings
    from serve.app import create_app
    from serve.server import run

    class Slow(FakePredictor):
        def segment(self, *args, **kwargs):
            if self.calls >= 1:  # not the warm-up
                time.sleep(float(sys.argv[2]))
            return super().segment(*args, **kwargs)

    settings = make_settings(port=0, drain_s=float(sys.argv[3]), shutdown_timeout_s=10)
    sys.exit(run(settings, create_app(settings, predictor_factory=lambda s: Slow())))
""")


def test_sigterm_drains_readiness_at_once_finishes_in_flight_and_exits_in_bounded_time():
    body, content_type = multipart_body(case_files())
    args = ["-c", SLOW_SERVER, str(Path(__file__).parent), "4.0", "5.0"]  # model call 4 s, drain 5 s
    with ServerProcess(args) as server:
        server.wait_ready(60)
        result = {}

        def in_flight():
            result["response"] = httpx.post(server.url + "/segment", content=body,
                                            headers={"content-type": content_type}, timeout=30)  # fmt: skip

        thread = threading.Thread(target=in_flight)
        thread.start()
        deadline = time.monotonic() + 10
        while "distill_serve_in_flight_requests 1.0" not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert_error(httpx.get(server.url + "/readyz", timeout=5), 503, "not_ready")  # at once
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        refused = httpx.post(server.url + "/segment", content=body, headers={"content-type": content_type}, timeout=5)
        assert_error(refused, 503, "not_ready")
        assert "shutting down" in refused.json()["error"]["message"]
        thread.join(30)
        assert result["response"].status_code == 200  # the in-flight request finished
        server.process.wait(20)
        assert time.monotonic() - signalled < 25  # drain 5 s + the in-flight call + shutdown
        assert server.process.returncode in (0, -signal.SIGTERM)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)
