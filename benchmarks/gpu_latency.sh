#!/usr/bin/env bash
# GPU model latency of the packaged students (benchmarks/gpu_latency.py). Results in OUT_DIR/gpu_latency.json,
# rewritten after every variant (so a timeout keeps what finished), and a short table at the end.
#
# Usage: bash benchmarks/gpu_latency.sh OUT_DIR [--runs N] [--budget-s S] [--variants a,b] [--device cpu]
#
# It runs from the repository root with PYTHONPATH set to it, so `import distill` finds this checkout.
#
# A bare GPU machine with only torch and onnxruntime-gpu (and no internet):
# - the torch variants need nothing more;
# - the package variants (onnxruntime, TensorRT) export the student first, which needs Distill's serving
#   dependencies. Bring them as wheels in .whl/ (git ignores it; it travels with the working tree).
#   On a machine with internet, for the GPU machine's Python version (here 3.11) and platform:
#
#     pip download -d .whl -c constraints.txt --only-binary=:all: --python-version 3.11 \
#         --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 nibabel scipy onnx zarr
#     pip wheel --no-deps -w .whl .          # Distill itself
#
#   With .whl/ present and no .venv/, this script makes a venv with --system-site-packages (so the machine's
#   own torch and onnxruntime-gpu are used, never replaced) at $DISTILL_GPU_VENV (default
#   /tmp/distill-gpu-venv) and installs them with `pip install --no-index --find-links .whl`.
#   Without them, those variants are rows "failed: ... No module named ..." and the rest still runs.
# - TensorRT variants also need TensorRT 10 (README, "TensorRT"); without it they are "failed" rows.
#
# A hard limit of $DISTILL_GPU_TIMEOUT_S seconds (default 300) guards against a hung driver; the script's own
# --budget-s (default 270) stops starting new variants before that.
set -euo pipefail
out="${1:?usage: gpu_latency.sh OUT_DIR [options]}"
shift
cd "$(dirname "$0")/.."
python_bin=python3
if [ -x .venv/bin/python ]; then
  python_bin=.venv/bin/python
elif [ -d .whl ]; then
  venv="${DISTILL_GPU_VENV:-/tmp/distill-gpu-venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet --no-index --find-links .whl nibabel scipy onnx zarr
  "$venv/bin/pip" install --quiet --no-index --find-links .whl --no-deps distill
  python_bin="$venv/bin/python"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${DISTILL_GPU_TIMEOUT_S:-300}" "$python_bin" benchmarks/gpu_latency.py "$out" "$@"
