"""GPU model latency of the ~30k and ~100k students on a whole 1 mm BraTS volume (one prepared script).

For a machine with an NVIDIA GPU and a CUDA build of torch; onnxruntime-gpu and TensorRT are
used when importable and reported as skipped (with the reason) otherwise. Input: one
1x4x240x240x155 volume, padded as the packages say (to a multiple of the network divisor:
240x240x160), random z-scored values (latency does not depend on them); students have random
weights for the same reason.

Variants per student, all through Distill's own backends (``distill.infer.backends``):
torch fp32 / fp16 / bf16 (norm layers kept in FP32), CUDA graphs (fp32, fp16),
``torch.compile`` (fp16), onnxruntime with the CUDA provider, TensorRT fp32 / fp16 engines
(built here, parity-gated against torch on a phantom, cached in ``<out>/engines``).
Each: warm-up, then ``--runs`` timed calls, synchronised; p50/p95/p99 in ms. Target: p50 under
20 ms. A time budget (default 270 s) skips what would not fit, so the run ends within 5 minutes.

    python benchmarks/gpu_latency.py OUT_DIR            # or: bash benchmarks/gpu_latency.sh OUT_DIR

Writes ``OUT_DIR/gpu_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {"student-30k": 30_000, "student-100k": 100_000}
VOLUME = (240, 240, 155)
TARGET_P50_MS = 20.0
TORCH_VARIANTS = ("torch:cuda:fp32", "torch:cuda:fp16", "torch:cuda:bf16", "torch:cuda:fp32:graphs", "torch:cuda:fp16:graphs",
                  "torch:cuda:fp16:compile")  # fmt: skip
PACKAGE_VARIANTS = ("onnxruntime:cuda", "tensorrt:fp32", "tensorrt:fp16")


def padded_input(divisor: int, device: torch.device) -> torch.Tensor:
    shape = [-(-n // divisor) * divisor for n in VOLUME]
    generator = torch.Generator().manual_seed(0)
    return torch.randn((1, 4, *shape), generator=generator).to(device)


def write_random_student(folder: Path, target_params: int) -> Path:
    from distill.train.chain import save_untrained_student

    return save_untrained_student(folder, target_params)

def time_variant(package: Path, text: str, engine_cache: Path, runs: int, warmup: int) -> dict:
    from distill.infer.backends import BackendSpec
    from distill.infer.bench import latency_stats, time_calls
    from distill.infer.predictor import Predictor

    start = time.perf_counter()
    tensorrt = text.startswith("tensorrt")
    spec = BackendSpec.parse(text, **({"engine_cache": engine_cache, "build_engine": True} if tensorrt else {}))
    # The timed warm-up below runs at the real shape; a predictor warm-up on a small shape would
    # only cost torch.compile an extra compilation.
    predictor = Predictor.from_package(package, spec, warm_up=False)
    setup_s = time.perf_counter() - start  # includes building a TensorRT engine when none is cached
    x = padded_input(predictor.package.preprocess_config.divisor, predictor.backend.device)
    stats = latency_stats(time_calls(lambda: predictor.backend(x), runs, warmup, predictor.backend.synchronize))
    return {"backend": spec.label, **predictor.backend.describe(), "input": list(x.shape), **stats,
            "meets_target": stats["p50_ms"] < TARGET_P50_MS, "setup_s": round(setup_s, 1)}  # fmt: skip


def run_student(name: str, target: int, work: Path, out: Path, deadline: float, runs: int, warmup: int) -> dict:
    from distill.errors import DistillError
    from distill.export.run import ExportConfig, export_package

    exported = export_package(ExportConfig(run_dir=write_random_student(work / name, target), out=work / f"{name}-pkg",
                                           n_phantoms=1, phantom_spacing=4.0))  # fmt: skip
    results = []
    for text in (*TORCH_VARIANTS, *PACKAGE_VARIANTS):
        if time.monotonic() > deadline:
            results.append({"backend": text, "skipped": "time budget spent"})
            continue
        try:
            results.append(time_variant(exported.package_dir, text, out / "engines", runs, warmup))
        except (DistillError, ImportError, RuntimeError) as exc:  # a missing runtime or an unsupported option on this GPU
            results.append({"backend": text, "skipped": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(results[-1]), flush=True)
    return {"name": name, "parameters": exported.parameters, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_latency.json (and cached engines)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new variants after this many seconds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU visible to torch", file=sys.stderr)
        return 1
    from distill.infer.bench import library_versions

    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        students = [run_student(name, target, Path(tmp), args.out, deadline, args.runs, args.warmup) for name, target in SIZES.items()]
    major, minor = torch.cuda.get_device_capability()
    report = {
        "benchmark": "benchmarks/gpu_latency.py", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda,
        "versions": library_versions(), "volume": list(VOLUME), "runs": args.runs, "warmup": args.warmup,
        "target_p50_ms": TARGET_P50_MS, "students": students,
    }  # fmt: skip
    (args.out / "gpu_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    for student in students:
        for entry in student["results"]:
            figure = entry.get("skipped") or f"p50 {entry['p50_ms']:.2f} ms, p95 {entry['p95_ms']:.2f} ms"
            print(f"{student['name']:14} {entry['backend']:28} {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
