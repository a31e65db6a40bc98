"""GPU model latency of the ~30k and ~100k students on a whole 1 mm BraTS volume (one prepared script).

Run it through ``bash benchmarks/gpu_latency.sh OUT_DIR`` (its header says how to prepare a
bare GPU machine), or from the repository root as
``PYTHONPATH=. python benchmarks/gpu_latency.py OUT_DIR``.

Input: one synthetic ``1x4x240x240x155`` volume padded to the network divisor (240x240x160),
random values, random weights: latency depends on neither. Variants per student, all through
Distill's own backends (``distill.infer.backends``):

* torch fp32 / fp16 / bf16 (norm layers kept in FP32), CUDA graphs (fp32, fp16),
  ``torch.compile`` (fp16): these need torch alone (no nibabel, zarr or nilearn);
* onnxruntime with the CUDA provider and with its TensorRT provider (fp16), and native TensorRT
  fp16 / fp32 engines: these need a model package, so the student is exported once (parity on
  one small synthetic NIfTI case, not the nilearn phantoms), which needs the serving wheels
  (nibabel, scipy, onnx, zarr). Native engines are built by ``distill export-engine``'s library
  function into ``OUT_DIR/engines`` (kept for reruns; the build time is the row's ``setup_s``).

Each variant: warm-up, then ``--runs`` timed calls, synchronised; p50/p95/p99 in ms; target p50
under 20 ms. A variant that cannot run is a row ``failed: <reason>`` and the others go on. After
every variant ``OUT_DIR/gpu_latency.json`` is rewritten atomically (``"complete": false`` until
the end), so a hard timeout keeps what finished. A time budget (default 270 s) stops starting
new variants. ``--device cpu`` runs the same bookkeeping on CPU variants (for tests).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.atomic import atomic_write_json
from distill.infer.backends import (
    BackendSpec,
    TorchBackend,
    cpu_name,
    latency_stats,
    library_versions,
    one_line,
    time_calls,
)

SIZES = {"student-30k": 30_000, "student-100k": 100_000}
VOLUME = (240, 240, 155)
TARGET_P50_MS = 20.0
GPU_VARIANTS = ("torch:cuda:fp32", "torch:cuda:fp16", "torch:cuda:bf16", "torch:cuda:fp32:graphs",
                "torch:cuda:fp16:graphs", "torch:cuda:fp16:compile", "onnxruntime:cuda", "tensorrt:fp16",
                "onnxruntime:tensorrt:fp16", "tensorrt:fp32")  # fmt: skip
CPU_VARIANTS = ("torch:cpu:fp32", "torch:cpu:bf16", "onnxruntime:cpu")
WHEELS_HINT = "the package variants need Distill's serving wheels: see the header of benchmarks/gpu_latency.sh"


class Report:
    """``gpu_latency.json``, rewritten atomically after every change so that a hard timeout keeps what finished."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data = {**header, "complete": False, "students": []}
        self.write()

    def student(self, name: str, parameters: int) -> list[dict[str, Any]]:
        entry = {"name": name, "parameters": parameters, "results": []}
        self.data["students"].append(entry)
        self.write()
        return entry["results"]

    def add(self, results: list[dict[str, Any]], row: dict[str, Any]) -> None:
        results.append(row)
        self.write()

    def finish(self) -> None:
        self.data["complete"] = True
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


class Student:
    """A random-weight student: the torch module now, its package (ONNX) only when a variant needs one."""

    def __init__(self, name: str, target: int, work: Path, threads: int | None) -> None:
        from distill.students import build_student, config_for_params, count_parameters

        torch.manual_seed(0)  # the weights save_untrained_student gives the package too
        self.name, self.target, self.work, self.threads = name, target, work, threads
        self.config = config_for_params("unet", target)
        self.model = build_student(self.config).eval()
        self.parameters = count_parameters(self.model)
        self._package: Path | None = None
        self._package_error: Exception | None = None

    def package(self) -> Path:
        """Exported on first use; a failure is remembered, so later variants fail at once with the same reason."""
        if self._package_error is not None:
            raise self._package_error
        if self._package is None:
            try:
                self._package = self._export()
            except Exception as exc:
                self._package_error = exc
                raise
        return self._package

    def _export(self) -> Path:
        from distill.export.run import ExportConfig, export_package
        from distill.train.chain import save_untrained_student

        run = save_untrained_student(self.work / self.name, self.target)
        config = ExportConfig(run_dir=run, out=self.work / f"{self.name}-pkg", held_out=self.held_out(), max_held_out=1,
                              threads=self.threads)  # fmt: skip
        return export_package(config).package_dir

    def held_out(self) -> Path:
        """One small synthetic BraTS-named case (NIfTI) for the parity gates: brain box of noise, zeros around."""
        from distill.data.nifti import write_nifti

        folder = self.work / "held_out"
        if not folder.is_dir():
            rng = np.random.default_rng(0)
            for modality in ("t1", "t1ce", "t2", "flair"):
                image = np.zeros((64, 64, 48), dtype=np.float32)
                image[8:56, 8:56, 6:42] = rng.normal(100.0, 15.0, size=(48, 48, 36))
                write_nifti(folder / "Synthetic_000" / f"Synthetic_000_{modality}.nii.gz", image, np.eye(4))
        return folder


def synthetic_input(divisor: int, volume: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(1, 4, *volume)`` padded up to ``divisor``, as packages pad."""
    shape = [-(-n // divisor) * divisor for n in volume]
    return torch.randn((1, 4, *shape), generator=torch.Generator().manual_seed(0)).to(device)


def make_backend(student: Student, text: str, out: Path, threads: int | None):
    spec = BackendSpec.parse(text, threads=threads)
    if spec.name == "torch":
        return TorchBackend(copy.deepcopy(student.model), spec)  # a copy: the backend casts the module in place
    from distill.infer.backends import create_backend
    from distill.package import ModelPackage

    package = student.package()
    if spec.name == "tensorrt":
        from distill.export.tensorrt_build import EngineExportConfig, export_engines

        spec = replace(spec, engine_cache=out / "engines")
        export_engines(EngineExportConfig(package=package, precisions=(spec.precision,), engine_cache=spec.engine_cache,
                                          held_out=student.held_out(), max_held_out=1, threads=threads))  # fmt: skip
    elif spec.device == "tensorrt":
        spec = replace(spec, engine_cache=out / "onnxruntime-tensorrt")  # onnxruntime's own engines, kept for reruns
    return create_backend(ModelPackage.open(package), spec)


def time_variant(student: Student, text: str, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    backend = make_backend(student, text, args.out, args.threads)
    setup_s = time.perf_counter() - start  # includes exporting the package and building an engine when none is stored
    x = synthetic_input(student.config.divisor, args.volume, backend.device)
    stats = latency_stats(time_calls(lambda: backend(x), args.runs, args.warmup, backend.synchronize))
    return {"variant": text, **backend.describe(), "input": list(x.shape), **stats,
            "meets_target": stats["p50_ms"] < TARGET_P50_MS, "setup_s": round(setup_s, 1)}  # fmt: skip


def run_variant(student: Student, text: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    if time.monotonic() > deadline:
        return {"variant": text, "skipped": "time budget spent"}
    try:
        return time_variant(student, text, args)
    except Exception as exc:  # one variant's failure must not cost the others
        hint = f" ({WHEELS_HINT})" if isinstance(exc, ImportError) else ""
        return {"variant": text, "failed": one_line(exc) + hint}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table(data: dict[str, Any]) -> str:
    lines = [f"{'student':14} {'variant':28} result"]
    for student in data["students"]:
        for row in student["results"]:
            if "p50_ms" in row:
                figure = f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms" + (
                    "" if row["meets_target"] else " (over target)"
                )
            else:
                figure = f"failed: {row['failed']}" if "failed" in row else f"skipped: {row['skipped']}"
            lines.append(f"{student['name']:14} {row['variant']:28} {figure}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def sizes(text: str) -> tuple[int, ...]:
        return tuple(int(n) for n in text.replace("x", ",").split(","))

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_latency.json (and cached engines)")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the CPU variants, to check the bookkeeping"
    )
    parser.add_argument(
        "--variants", type=lambda t: tuple(v for v in t.split(",") if v), help="comma-separated backend specs"
    )
    parser.add_argument(
        "--sizes", type=lambda t: tuple(t.split(",")), default=tuple(SIZES), help="comma-separated student names"
    )
    parser.add_argument("--volume", type=sizes, default=VOLUME, help="input grid before padding, e.g. 240,240,155")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch, onnxruntime)")
    parser.add_argument(
        "--budget-s", type=float, default=270.0, help="stop starting new variants after this many seconds"
    )
    args = parser.parse_args(argv)
    args.variants = args.variants or (GPU_VARIANTS if args.device == "cuda" else CPU_VARIANTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch; nothing to time (--device cpu checks the bookkeeping)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    report = Report(args.out / "gpu_latency.json", {
        "benchmark": "benchmarks/gpu_latency.py", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name() if cuda else cpu_name(),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "cuda": torch.version.cuda, "versions": library_versions(), "volume": list(args.volume), "runs": args.runs,
        "warmup": args.warmup, "target_p50_ms": TARGET_P50_MS,
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            student = Student(name, SIZES[name], Path(tmp), args.threads)
            results = report.student(name, student.parameters)
            for text in args.variants:
                row = run_variant(student, text, args, deadline)
                report.add(results, row)
                print(json.dumps(row), flush=True)
    report.finish()
    print(table(report.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
