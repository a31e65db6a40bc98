"""benchmarks/gpu_latency.py's bookkeeping, run on the CPU: a row per variant, the JSON rewritten after each one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_latency.py"


@pytest.fixture(scope="module")
def gpu_latency():
    spec = importlib.util.spec_from_file_location("gpu_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_json_is_rewritten_after_every_variant_and_a_failure_is_a_row(gpu_latency, tmp_path, monkeypatch):
    path = tmp_path / "out" / "gpu_latency.json"
    seen = []  # rows in the file when each variant starts
    timed = gpu_latency.time_variant

    def recording(student, text, args):
        data = json.loads(path.read_text())
        seen.append((text, [r["variant"] for s in data["students"] for r in s["results"]], data["complete"]))
        return timed(student, text, args)

    monkeypatch.setattr(gpu_latency, "time_variant", recording)
    # the CUDA one fails here (no GPU) and the last still runs
    variants = "torch:cpu:fp32,torch:cuda:fp16,onnxruntime:cpu"
    code = gpu_latency.main([str(tmp_path / "out"), "--device", "cpu", "--variants", variants, "--sizes", "student-30k",
                             "--volume", "20,20,12", "--runs", "2", "--warmup", "1", "--threads", "2"])  # fmt: skip
    assert code == 0
    assert seen == [("torch:cpu:fp32", [], False), ("torch:cuda:fp16", ["torch:cpu:fp32"], False),
                    ("onnxruntime:cpu", ["torch:cpu:fp32", "torch:cuda:fp16"], False)]  # fmt: skip
    data = json.loads(path.read_text())
    assert data["complete"] and data["students"][0]["name"] == "student-30k"
    fp32, cuda, ort = data["students"][0]["results"]
    assert fp32["backend"] == "torch-cpu-fp32" and fp32["input"] == [1, 4, 32, 32, 16] and fp32["n"] == 2
    assert "needs a CUDA GPU" in cuda["failed"] and "\n" not in cuda["failed"]
    assert (
        ort["backend"] == "onnxruntime-cpu-fp32" and ort["p50_ms"] > 0 and ort["providers"][0] == "CPUExecutionProvider"
    )
    assert not list(tmp_path.glob("out/.*partial*"))


def test_a_spent_budget_skips_the_rest_and_the_table_lists_every_row(gpu_latency, tmp_path, capsys):
    gpu_latency.main([str(tmp_path), "--device", "cpu", "--variants", "torch:cpu:fp32,torch:cpu:bf16",
                      "--sizes", "student-30k", "--volume", "16,16,8", "--runs", "1", "--warmup", "0",
                      "--budget-s", "0"])  # fmt: skip
    data = json.loads((tmp_path / "gpu_latency.json").read_text())
    assert [r.get("skipped") for r in data["students"][0]["results"]] == ["time budget spent"] * 2
    table = capsys.readouterr().out.splitlines()[-3:]  # after one JSON line per variant
    assert table[0].split() == ["student", "variant", "result"]
    assert [line.split()[:2] for line in table[1:]] == [
        ["student-30k", "torch:cpu:fp32"],
        ["student-30k", "torch:cpu:bf16"],
    ]
    assert all(line.endswith("skipped: time budget spent") for line in table[1:])


def test_the_torch_variants_run_without_nibabel_zarr_nilearn_or_scipy(tmp_path):
    code = "\n".join([
        "import runpy, sys",
        f"sys.argv = ['gpu_latency.py', {str(tmp_path)!r}, '--device', 'cpu', '--variants', 'torch:cpu:fp32',",
        "            '--sizes', 'student-30k', '--volume', '16,16,8', '--runs', '1', '--warmup', '0']",
        "try:",
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')",
        "except SystemExit as exit:",
        "    assert not exit.code, exit.code",
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nibabel', 'zarr', 'nilearn', 'scipy'}))",
    ])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "p50_ms" in json.loads((tmp_path / "gpu_latency.json").read_text())["students"][0]["results"][0]
