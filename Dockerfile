# syntax=docker/dockerfile:1
# `distill serve` in a container: one model package, mounted read-only at /package.
#
#   docker build --target cpu -t distill-serve:cpu .
#   docker build --target gpu -t distill-serve:gpu .
#   docker run --rm -p 8000:8000 -v "$PWD/benchmarks/realdata/packages/brats-30k:/package:ro" \
#       -v "$PWD/token:/run/secrets/distill_token:ro" distill-serve:cpu
#
# To bake a package in instead: FROM distill-serve:cpu, then COPY <package> /package.
# The install steps are docker/install-serve.sh, which tests/service/test_serve_docker.py runs in a
# fresh venv (no Docker engine runs in CI); hadolint lints this file in the same test module.
# The container binds 0.0.0.0, so the token file is required (the service refuses to start without).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------- gpu
FROM ${CUDA_IMAGE} AS gpu-base
# Python from the CUDA image's Ubuntu release (its tag fixes the versions apt resolves).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY distill ./distill
COPY serve ./serve
COPY docker/install-serve.sh ./docker/install-serve.sh
RUN python3 -m venv /opt/venv && PYTHON=/opt/venv/bin/python ./docker/install-serve.sh gpu /src

FROM gpu-base AS gpu
RUN groupadd --system --gid 10001 distill \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin distill
COPY --from=gpu-build /opt/venv /opt/venv
# DISTILL_SERVE_TOKEN_FILE names where the secret is mounted; it holds no secret itself.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    DISTILL_SERVE_HOST=0.0.0.0 DISTILL_SERVE_PORT=8000 DISTILL_SERVE_BACKEND=onnxruntime:cuda \
    DISTILL_SERVE_TOKEN_FILE=/run/secrets/distill_token
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DISTILL_SERVE_PORT', '8000') + '/readyz', timeout=2)"]
ENTRYPOINT ["distill", "serve"]
CMD ["/package"]

# ---------------------------------------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY distill ./distill
COPY serve ./serve
COPY docker/install-serve.sh ./docker/install-serve.sh
RUN python -m venv /opt/venv && PYTHON=/opt/venv/bin/python ./docker/install-serve.sh cpu /src

FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 distill \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin distill
COPY --from=cpu-build /opt/venv /opt/venv
# DISTILL_SERVE_TOKEN_FILE names where the secret is mounted; it holds no secret itself.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    DISTILL_SERVE_HOST=0.0.0.0 DISTILL_SERVE_PORT=8000 DISTILL_SERVE_BACKEND=onnxruntime \
    DISTILL_SERVE_TOKEN_FILE=/run/secrets/distill_token
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DISTILL_SERVE_PORT', '8000') + '/readyz', timeout=2)"]
ENTRYPOINT ["distill", "serve"]
CMD ["/package"]
