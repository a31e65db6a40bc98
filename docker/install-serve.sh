#!/usr/bin/env bash
# Install what `distill serve` needs into the Python environment of $PYTHON (a venv).
#
#   PYTHON=/opt/venv/bin/python docker/install-serve.sh cpu|gpu [SOURCE_DIR]
#
# The Dockerfile runs exactly this for its `cpu` and `gpu` targets, and
# tests/service/test_serve_docker.py runs the `cpu` target in a fresh venv, so the image's install
# steps are exercised where no Docker engine exists. Every package but torch (and, for `gpu`, the
# CUDA builds of onnxruntime and TensorRT) is pinned by constraints.txt.
#
#   cpu: the CPU-only torch wheel (~200 MB instead of the ~6 GB CUDA build; serving needs no nnU-Net
#        or torchvision, which is what keeps the CUDA build in the training environment), then
#        distill[serve] (onnxruntime included).
#   gpu: CUDA torch, distill[serve], onnxruntime-gpu in place of onnxruntime (both install the same
#        module, so they never sit side by side), TensorRT 10 from NVIDIA's index (onnxruntime-gpu's
#        TensorRT provider links TensorRT 10).
#
# Environment: TORCH_INDEX_URL (cpu default: PyTorch's CPU index; empty: pip's own configuration),
# TORCH_VERSION, ONNXRUNTIME_GPU_VERSION, TENSORRT_VERSION (a specifier, default ">=10.9,<11"), NVIDIA_INDEX_URL.
set -euo pipefail

target="${1:?usage: install-serve.sh cpu|gpu [SOURCE_DIR]}"
source_dir="$(cd "${2:-.}" && pwd)"
python="${PYTHON:-python3}"
pip=("$python" -m pip install --disable-pip-version-check)

# The pins without torch and its CUDA companions (chosen per target) and without onnxruntime (cpu
# keeps the pinned one, gpu replaces it).
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
grep -v -E '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+|onnxruntime)==' "$source_dir/constraints.txt" > "$constraints"
onnxruntime_pin="$(grep -E '^onnxruntime==' "$source_dir/constraints.txt")"

index_args=()
case "$target" in
  cpu)
    torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
    torch_version="${TORCH_VERSION:-2.13.0+cpu}"
    ;;
  gpu)
    torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cu128}"
    torch_version="${TORCH_VERSION:-2.14.1}"
    ;;
  *)
    echo "install-serve.sh: target must be cpu or gpu, not $target" >&2
    exit 2
    ;;
esac
if [ -n "$torch_index" ]; then
  index_args=(--index-url "$torch_index" --extra-index-url https://pypi.org/simple)
fi

"${pip[@]}" "${index_args[@]}" "torch==$torch_version"
"${pip[@]}" -c "$constraints" "$onnxruntime_pin" "$source_dir[serve]"

if [ "$target" = gpu ]; then
  "$python" -m pip uninstall -y onnxruntime
  "${pip[@]}" "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION:-1.31.1}"
  "${pip[@]}" --extra-index-url "${NVIDIA_INDEX_URL:-https://pypi.nvidia.com}" \
    "tensorrt-cu12${TENSORRT_VERSION:->=10.9,<11}"
fi

# The service must import and must not have pulled in a CUDA torch on cpu.
"$python" - "$target" <<'PY'
import sys

import onnxruntime
import torch

import serve.app  # noqa: F401  (the service imports)

cuda_torch = torch.version.cuda is not None
if sys.argv[1] == "cpu" and cuda_torch:
    sys.exit(f"install-serve.sh: expected a CPU-only torch, got {torch.__version__}")
print(f"distill serve environment ready: torch {torch.__version__}, onnxruntime {onnxruntime.__version__} "
      f"({', '.join(onnxruntime.get_available_providers())})")
PY
