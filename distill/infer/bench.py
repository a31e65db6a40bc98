"""``distill bench``: latency of a package on every backend available here, side by side, in one run.

Per backend, after warm-up runs:

* ``model_only``: the backend alone on the case's preprocessed volume (one whole-volume pass,
  or the tiled pass the predictor would make), ``runs`` times; optionally also on the
  preprocessed volume zero-padded to a full field of view (``full_shape``, e.g. 240x240x155);
* ``end_to_end``: NIfTI files in -> NIfTI label map out, ``e2e_runs`` times, split into
  ``decode`` (read the four files), ``preprocess``, ``model`` (inference + sigmoid, device work
  finished), ``postprocess`` (back to the input grid, thresholds, clean-up, labels) and
  ``encode`` (write the label map).

Every figure is given as p50/p95/p99 (with n, mean, min, max) in milliseconds; percentiles of
few runs are interpolated, so read p99 of 20 runs as "about the worst". Each result names its
device, thread count and library versions, as does the whole file. A backend that cannot run
or fails is one row ``failed: <reason>`` and the others are still timed. Model-only and end-to-end
times are reported apart because they tell different stories (a 2 ms network can sit in a
400 ms pipeline).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.atomic import atomic_write_json
from distill.core.paths import prepare_output_file
from distill.data.case import load_case
from distill.data.discovery import CaseFiles, find_cases
from distill.data.nifti import write_nifti
from distill.data.preprocess import pad, padding_for
from distill.infer.backends import (
    BackendSpec,
    available_backend_specs,
    cpu_name,
    create_backend,
    latency_stats,
    library_versions,
    one_line,
    time_calls,
)
from distill.infer.predictor import Predictor
from distill.infer.sliding_window import predict_logits
from distill.package import ModelPackage

STAGES = ("decode", "preprocess", "model", "postprocess", "encode")


@dataclass(frozen=True)
class BenchConfig:
    """What to time.

    Attributes:
        package: a model package folder.
        input_dir: BraTS cases (any layout); the first case is timed. ``None``: one synthetic
            1 mm phantom, written as NIfTI files to a temporary folder.
        backends: what to compare; empty = every backend available here.
        runs, warmup: model-only repetitions, after ``warmup`` untimed ones.
        e2e_runs: end-to-end repetitions (after one untimed run).
        threads: CPU threads for torch and onnxruntime.
        full_shape: also time the model on the case zero-padded to this grid.
        out: JSON file to write (``None``: only returned).
        engine_cache: TensorRT engine folder for the default backend list (see ``distill export-engine``).
    """

    package: Path
    input_dir: Path | None = None
    backends: tuple[BackendSpec, ...] = ()
    runs: int = 20
    warmup: int = 3
    e2e_runs: int = 5
    threads: int | None = 2
    full_shape: tuple[int, int, int] | None = None
    out: Path | None = None
    engine_cache: Path | None = None


@dataclass(frozen=True)
class BenchResult:
    data: dict[str, Any]
    path: Path | None

    def table(self) -> str:
        """A plain-text table of p50 per backend: model-only, full field of view, end-to-end."""
        lines = [f"{'backend':34} {'model p50 ms':>13} {'full-FOV p50 ms':>16} {'e2e p50 ms':>11}"]
        for entry in self.data["results"]:
            if "failed" in entry:
                lines.append(f"{entry['backend']:34} failed: {entry['failed']}")
                continue
            full = entry.get("model_only_full_shape", {}).get("p50_ms")
            lines.append(f"{entry['backend']:34} {entry['model_only']['p50_ms']:13.1f} "
                         f"{'-' if full is None else f'{full:.1f}':>16} "
                         f"{entry['end_to_end']['total']['p50_ms']:11.1f}")  # fmt: skip
        return "\n".join(lines)


def host_description() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}  # fmt: skip


# ---------------------------------------------------------------------------------------------


def run_bench(config: BenchConfig, report: Callable[[str], None] | None = None) -> BenchResult:
    """Time every backend in ``config`` (see the module docstring); write JSON if ``config.out``.

    ``report`` receives a line as each backend starts and ends (a run takes minutes)."""
    report = report or (lambda line: None)
    if config.out is not None:
        prepare_output_file(config.out, "benchmark file")  # before the timing: a bad --out loses nothing
    package = ModelPackage.open(config.package)
    specs = list(config.backends) or available_backend_specs(config.threads, config.engine_cache)
    with tempfile.TemporaryDirectory() as tmp:
        if config.input_dir is None:
            report("writing a 1 mm phantom to time on ...")
        files = _case_files(config.input_dir, Path(tmp))
        case = load_case(files, with_labels=False)

        def bench_reported(spec: BackendSpec) -> dict[str, Any]:
            report(f"{spec.label}: {config.warmup} warm-up + {config.runs} model runs, "
                   f"{config.e2e_runs} end-to-end ...")
            entry = _bench_backend(package, spec, files, case, config, Path(tmp) / "out")
            report(f"{spec.label}: model p50 {entry['model_only']['p50_ms']:.1f} ms")
            return entry

        results = bench_each(specs, bench_reported)
    data = {
        "benchmark": "distill bench",
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "package": {"path": str(package.root), "parameters": package.parameters,
                    "macs_128": package.manifest.model.macs_128, "onnx_sha256": package.onnx_sha256,
                    "size_bytes": package.size_bytes()},  # fmt: skip
        "case": {"id": case.case_id, "source": "synthetic 1 mm phantom" if config.input_dir is None else "input folder",
                 "shape": list(case.shape), "spacing_mm": [round(s, 4) for s in case.spacing]},  # fmt: skip
        "settings": {"runs": config.runs, "warmup": config.warmup, "e2e_runs": config.e2e_runs,
                     "threads": config.threads,
                     "full_shape": list(config.full_shape) if config.full_shape else None},  # fmt: skip
        "host": host_description(),
        "versions": library_versions(),
        "results": results,
    }
    if config.out is not None:
        atomic_write_json(config.out, data)
    return BenchResult(data, config.out)


def _case_files(input_dir: Path | None, tmp: Path) -> CaseFiles:
    if input_dir is not None:
        return find_cases(input_dir)[0]
    from distill.data.phantoms import PhantomConfig, write_phantoms

    write_phantoms(tmp / "phantom", n_cases=1, seed=0, config=PhantomConfig(spacing_mm=1.0), progress=False)
    return find_cases(tmp / "phantom")[0]


def bench_each(specs: Iterable[BackendSpec], bench: Callable[[BackendSpec], dict[str, Any]]) -> list[dict[str, Any]]:
    """``bench(spec)`` for every spec; one that raises becomes a row ``{"backend", "failed": reason}``.

    Any exception, not only "unavailable": a backend that loads and then fails (an engine
    that does not fit, a CUDA error, a provider that fell back) must not cost the figures of
    the others.
    """
    results = []
    for spec in specs:
        try:
            results.append(bench(spec))
        except Exception as exc:
            results.append({"backend": spec.label, "failed": one_line(exc)})
    return results


def _bench_backend(
    package: ModelPackage, spec: BackendSpec, files: CaseFiles, case, config: BenchConfig, out_dir: Path
) -> dict[str, Any]:
    predictor = Predictor(package, create_backend(package, spec))
    predictor.warm_up()
    backend = predictor.backend
    prepared = predictor.prepare(case.images, case.affine)
    tile = predictor.tile_for(prepared.images.shape[1:])
    entry: dict[str, Any] = {
        **backend.describe(),
        "preprocessed_shape": list(prepared.images.shape[1:]),
        "tiled": tile is not None,
    }
    model_call = _model_call(predictor, prepared.images, tile)
    entry["model_only"] = latency_stats(time_calls(model_call, config.runs, config.warmup, backend.synchronize))
    if config.full_shape is not None:
        full = _padded_to(prepared.images, config.full_shape, package.preprocess_config.divisor)
        full_tile = predictor.tile_for(full.shape[1:])
        entry["full_shape"] = list(full.shape[1:])
        entry["model_only_full_shape"] = latency_stats(
            time_calls(_model_call(predictor, full, full_tile), config.runs, config.warmup,
                       backend.synchronize))  # fmt: skip
    entry["end_to_end"] = _end_to_end(predictor, files, config.e2e_runs, out_dir)
    return entry


def _model_call(predictor: Predictor, images: np.ndarray, tile) -> Callable[[], Any]:
    batch = torch.from_numpy(np.ascontiguousarray(images[None], dtype=np.float32)).to(predictor.backend.device)
    if tile is None:
        return lambda: predictor.backend(batch)
    return lambda: predict_logits(predictor.backend, batch, tile, predictor.settings.overlap)


def _padded_to(images: np.ndarray, shape: Sequence[int], divisor: int) -> np.ndarray:
    """``images`` zero-padded (centred) to ``shape`` rounded up to ``divisor``, never cropped."""
    target = [max(n, s) for n, s in zip(images.shape[1:], shape)]
    pads = padding_for(target, divisor)
    target = [t + a + b for t, (a, b) in zip(target, pads)]
    extra = [(t - n) for t, n in zip(target, images.shape[1:])]
    return pad(images, tuple((e // 2, e - e // 2) for e in extra))  # type: ignore[arg-type]


def _end_to_end(predictor: Predictor, files: CaseFiles, runs: int, out_dir: Path) -> dict[str, Any]:
    """NIfTI in -> NIfTI out, per stage; one untimed run first."""
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for run in range(runs + 1):
        marks = [time.perf_counter()]
        case = load_case(files, with_labels=False)
        marks.append(time.perf_counter())
        prepared = predictor.prepare(case.images, case.affine)
        marks.append(time.perf_counter())
        probabilities, _ = predictor.infer(prepared.images)
        predictor.backend.synchronize()
        marks.append(time.perf_counter())
        result = predictor.finish(prepared, probabilities, case.affine, predictor.package.convention, False, False)
        marks.append(time.perf_counter())
        write_nifti(out_dir / f"{case.case_id}.nii.gz", result.labels, case.affine)
        marks.append(time.perf_counter())
        if run == 0:
            continue
        for stage, begin, end in zip(STAGES, marks, marks[1:]):
            samples[stage].append(end - begin)
        samples["total"].append(marks[-1] - marks[0])
    return {stage: latency_stats(values) for stage, values in samples.items()}


def write_bench_json(result: BenchResult, path: Path) -> Path:
    """Write a bench result as indented JSON, atomically."""
    return atomic_write_json(path, result.data)


__all__ = ["BenchConfig", "BenchResult", "bench_each", "latency_stats", "library_versions", "run_bench", "time_calls",
           "write_bench_json"]
