"""Helpers for the service tests: a fake predictor (milliseconds per request), NIfTI builders, clients.

The fake predictor opens a committed real-data package for its manifest (channels, aliases,
convention, thresholds) but computes labels with a few numpy comparisons, so most tests run
in milliseconds; tests that need the real network use the same package through the real
:class:`distill.infer.predictor.Predictor`.
"""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from distill.errors import DataError
from distill.infer.predictor import Segmentation, binary_entropy
from distill.package import ModelPackage

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "benchmarks" / "realdata" / "packages" / "brats-30k"
MODALITIES = ("t1", "t1ce", "t2", "flair")
SHAPE = (20, 18, 14)
SECRET = b"PATIENT Jane Doe 1970-01-01"
TOKEN = "s3cret-token-for-tests-0123456789"


def oblique_affine() -> np.ndarray:
    theta = np.deg2rad(7.0)
    affine = np.eye(4)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    affine[:3, :3] = rot @ np.diag([-1.2, -0.9, 2.5])
    affine[:3, 3] = (101.5, -17.25, 33.0)
    return affine


def case_images(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """``(4, *shape)`` int16-valued intensities: a noisy brain box inside zeros, a bright blob in it."""
    rng = np.random.default_rng(seed)
    images = np.zeros((4, *shape), np.float32)
    inner = tuple(slice(2, n - 2) for n in shape)
    images[(slice(None), *inner)] = rng.normal(100.0, 15.0, (4, *[n - 4 for n in shape]))
    cx, cy, cz = (n // 2 for n in shape)
    images[:, cx - 3:cx + 3, cy - 3:cy + 3, cz - 2:cz + 2] += 120.0
    return np.round(images)


def nifti_bytes_of(data: np.ndarray, affine: np.ndarray | None = None, gz: bool = True, dtype=np.int16,
                   version: int = 1, secret: bool = True) -> bytes:  # fmt: skip
    """A NIfTI file as bytes, with patient-looking text in ``descrip`` and ``aux_file`` (which must never come back)."""
    affine = oblique_affine() if affine is None else affine
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    image = klass(np.asarray(data).astype(dtype), affine)
    if secret:
        image.header["descrip"] = SECRET[:79]
        image.header["aux_file"] = SECRET[:23]
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def case_files(seed: int = 0, shape=SHAPE, names=MODALITIES, **kwargs) -> dict[str, tuple[str, bytes, str]]:
    """Multipart ``files=`` for one case, field names ``names`` (modality order t1, t1ce, t2, flair)."""
    images = case_images(seed, shape)
    return {name: (f"Case_{seed}_{name}.nii.gz", nifti_bytes_of(images[i], **kwargs), "application/gzip")
            for i, name in enumerate(names)}  # fmt: skip


class FakeBackend:
    label = "fake"

    def synchronize(self) -> None:
        pass

    def describe(self) -> dict:
        return {"backend": "fake", "device": "cpu", "package": "/somewhere/local/pkg"}


class FakePredictor:
    """The committed package's manifest, labels from thresholds on the images; counts concurrent calls."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None, hold: threading.Event | None = None) -> None:
        self.package = ModelPackage.open(PACKAGE, verify=False)
        self.postprocess = self.package.postprocess_config
        self.backend = FakeBackend()
        self.delay = delay
        self.error = error
        self.hold = hold  # when set: each call waits for it (and `entered` tells a call is running)
        self.entered = threading.Event()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.seen: list[tuple[tuple[int, ...], np.ndarray]] = []
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {**self.backend.describe(), "ready": True}

    def _enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        if self.delay:
            time.sleep(self.delay)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def maps(self, images: np.ndarray) -> np.ndarray:
        scaled = (images[[3, 1, 1]] - 150.0) / 20.0
        return (1.0 / (1.0 + np.exp(-scaled))).astype(np.float32)

    def segment(self, images, affine, modalities=None, label_convention=None, return_probabilities=False,
                return_uncertainty=False, return_distilled_uncertainty=False) -> Segmentation:  # fmt: skip
        self._enter()
        try:
            if self.error is not None:
                raise self.error
            if not np.any(images):
                raise DataError("case: empty brain mask (every voxel is zero in every modality)")
            self.seen.append((tuple(images.shape), np.asarray(affine)))
            from distill.data.conventions import get_convention

            convention = get_convention(label_convention) if label_convention else self.package.convention
            p = self.maps(images)
            regions = p > 0.5
            regions[1] &= regions[0]
            regions[2] &= regions[1]
            return Segmentation(labels=convention.from_regions(regions), convention=convention.name,
                                probabilities=p if return_probabilities else None,
                                uncertainty=binary_entropy(p) if return_uncertainty else None,
                                timings={"preprocess": 0.001, "model": 0.002, "postprocess": 0.001})  # fmt: skip
        finally:
            self._leave()

    def infer(self, images):
        self._enter()
        try:
            return self.maps(images), False
        finally:
            self._leave()


def make_settings(**overrides):
    from serve.settings import ServeSettings

    return ServeSettings(package=PACKAGE, **overrides)


def make_client(predictor, **overrides):
    """A started TestClient (lifespan run, predictor loaded) for an app serving ``predictor``."""
    from fastapi.testclient import TestClient

    from serve.app import create_app

    app = create_app(make_settings(**overrides), predictor_factory=lambda settings: predictor)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    assert app.state.service.wait_until_loaded(30) == "ready", app.state.service.failure
    return client


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def read_nifti_response(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def gzip_bomb(prefix: bytes, zero_mib: int) -> bytes:
    """A valid gzip of ``prefix`` followed by ``zero_mib`` MiB of zeros, built in a second, not minutes.

    After a full flush the compressor's history is empty, so every further MiB of zeros deflates
    to the same bytes: one block is compressed and repeated.
    """
    import struct
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(1 << 20)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    crc = zlib.crc32(prefix)
    for _ in range(zero_mib):
        crc = zlib.crc32(zeros, crc)
    size = (len(prefix) + zero_mib * len(zeros)) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + head + block * zero_mib + tail + struct.pack("<II", crc, size)


class ServerProcess:
    """A real ``uvicorn`` in a subprocess on a free loopback port (chosen by the OS: ``--port 0``).

    ``args`` is the command after the interpreter (default ``-m distill serve PACKAGE``). The
    port is read from the service's ``{"event": "listening", ...}`` line; ``stop()`` sends
    SIGTERM and waits a bounded time, then kills.
    """

    def __init__(self, args: list[str], env: dict | None = None, ready_timeout: float = 180.0,
                 python: str | None = None, cwd: Path | None = None) -> None:  # fmt: skip
        import os
        import queue
        import subprocess
        import sys

        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        command = [python or sys.executable, *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        cwd=cwd or REPO_ROOT, env={**os.environ, **(env or {})})  # fmt: skip
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = self._wait_for_port(ready_timeout)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout = ready_timeout

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            self._queue.put(line)

    def _wait_for_port(self, timeout: float) -> int:
        import json
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith('{"event": "listening"'):
                return int(json.loads(line)["port"])
        self.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.lines[-40:]))

    def wait_ready(self, timeout: float | None = None) -> None:
        import httpx

        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError("the server did not get ready:\n" + "".join(self.lines[-40:]))

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self, timeout: float = 30.0) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def multipart_body(files: dict) -> tuple[bytes, str]:
    """A multipart body and its Content-Type, built once (load tests send the same bytes many times)."""
    import httpx

    request = httpx.Request("POST", "http://t/segment", files=files)
    return request.read(), request.headers["content-type"]
