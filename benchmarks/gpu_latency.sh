#!/usr/bin/env bash
# GPU model latency of the packaged students (see benchmarks/gpu_latency.py); results in OUT_DIR/gpu_latency.json.
# Usage: bash benchmarks/gpu_latency.sh OUT_DIR [--runs N] [--budget-s S]
set -euo pipefail
out="${1:?usage: gpu_latency.sh OUT_DIR [options]}"
shift
cd "$(dirname "$0")/.."
python_bin=python3
[ -x .venv/bin/python ] && python_bin=.venv/bin/python
# The script stops starting new variants after its budget; the hard limit guards against a hung driver.
exec timeout 300 "$python_bin" benchmarks/gpu_latency.py "$out" "$@"
