"""``export``, ``export-engine``, ``predict``, ``bench`` and ``serve``; :func:`register` adds them to the main app.

Same style as :mod:`distill.cli`: each command turns its options into a config, calls one
library function and prints the small result it returns. Input errors are
:class:`distill.errors.DistillError`, which ``distill.cli.main`` shows as one line with exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from distill.data.conventions import CONVENTIONS
from distill.data.nifti import DEFAULT_MAX_VOXELS

console = Console(stderr=True)
CONVENTION_HELP = "Output label convention: " + ", ".join(CONVENTIONS)
ENGINE_CACHE_HELP = ("tensorrt: folder of engines from `distill export-engine --engine-cache`; onnxruntime:tensorrt: "
                     "onnxruntime's engine cache folder (default: under ~/.cache/distill).")
BACKEND_HELP = (
    "torch, onnxruntime or tensorrt; options may follow after colons, e.g. torch:cuda:fp16:graphs, "
    "onnxruntime:cuda, tensorrt:int8, torch:compile."
)


def _backend_spec(backend: str, device: Optional[str], precision: Optional[str], threads: Optional[int],
                  cuda_graphs: bool, compile_model: bool, engine_cache: Optional[Path]):
    from distill.infer.backends import BackendSpec

    options = {"device": device, "precision": precision, "threads": threads, "engine_cache": engine_cache,
               "cuda_graphs": cuda_graphs or None, "compile": compile_model or None}  # fmt: skip
    return BackendSpec.parse(backend, **{k: v for k, v in options.items() if v is not None})


def _triple(text: Optional[str], option: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise typer.BadParameter(f"{option} takes three positive sizes like 240,240,155, got {text!r}")
    return values  # type: ignore[return-value]


THRESHOLDS_HELP = ("Probability threshold per region WT,TC,ET, e.g. 0.5,0.4,0.35 (default: the thresholds the "
                   "student card calibrated on validation cases, else 0.5 each).")


def _thresholds(text: Optional[str]) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 < v < 1.0 for v in values):
        raise typer.BadParameter(f"--thresholds takes three probabilities strictly between 0 and 1 (WT,TC,ET), "
                                 f"got {text!r}")
    return values  # type: ignore[return-value]


def _region_volumes(items, regions) -> dict[str, float]:
    """``["WT=10", ...]`` -> ``{"WT": 10.0}``; a bad item is a one-line usage error."""
    volumes = {}
    for item in items:
        region, sep, value = item.partition("=")
        try:
            ml = float(value)
        except ValueError:
            ml = -1.0
        if not sep or region not in regions or not ml >= 0:
            raise typer.BadParameter(f"{item!r}: expected REGION=ML with REGION one of {', '.join(regions)} and "
                                     "ML a volume >= 0", param_hint="--min-size-ml")  # fmt: skip
        volumes[region] = ml
    return volumes


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="Student run folder (student.pt + student.json from train-student).")],
    out: Annotated[Path, typer.Argument(help="Package folder to create.")],
    held_out: Annotated[
        Optional[Path], typer.Option(help="Held-out BraTS cases for the parity gate (default: synthetic phantoms).")
    ] = None,
    max_held_out: Annotated[int, typer.Option(min=1, help="Use at most this many held-out cases.")] = 3,
    n_phantoms: Annotated[
        int, typer.Option(min=1, help="Phantoms for the parity gate when no --held-out is given.")
    ] = 2,
    label_convention: Annotated[str, typer.Option(help=CONVENTION_HELP)] = "brats2017",
    enforce_hierarchy: Annotated[bool, typer.Option(help="Post-process: clip TC to WT and ET to TC.")] = True,
    keep_largest: Annotated[
        Optional[list[str]],
        typer.Option(help="Post-process: keep only the largest connected component of this region (WT, TC or "
                          "ET; repeatable), as nnU-Net's post-processing does where it helped on validation."),
    ] = None,
    min_size_ml: Annotated[
        Optional[list[str]],
        typer.Option(help="Post-process: drop components of a region under a volume, REGION=ML (e.g. WT=10; "
                          "repeatable)."),
    ] = None,
    simplify: Annotated[
        bool, typer.Option("--simplify", help="Apply onnxruntime's basic (portable) graph optimisations.")
    ] = False,
    tensorrt: Annotated[
        Optional[list[str]],
        typer.Option(help="Also build a TensorRT engine: fp32, fp16 or int8 (repeatable; needs a GPU)."),
    ] = None,
    calibration_cache: Annotated[Optional[Path], typer.Option(help="Teacher cache for INT8 calibration tiles.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for the parity gate.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing package.")] = False,
    thresholds: Annotated[Optional[str], typer.Option(help=THRESHOLDS_HELP)] = None,
) -> None:
    """Export a trained student to a verified model package (ONNX + preprocessing + label mapping)."""
    from distill.data.conventions import REGIONS
    from distill.export.run import ExportConfig, export_package
    from distill.infer.postprocess import PostprocessConfig

    unknown = sorted(set(keep_largest or ()) - set(REGIONS))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)} is not a region; use {', '.join(REGIONS)}",
                                 param_hint="--keep-largest")  # fmt: skip
    min_size = _region_volumes(min_size_ml or (), REGIONS)
    postprocess = PostprocessConfig(enforce_hierarchy=enforce_hierarchy, keep_largest=tuple(keep_largest or ()),
                                    min_size=min_size, min_size_unit="ml")  # fmt: skip
    config = ExportConfig(
        run_dir=run_dir, out=out, held_out=held_out, max_held_out=max_held_out, n_phantoms=n_phantoms,
        label_convention=label_convention, postprocess=postprocess,
        simplify=simplify, tensorrt=tuple(tensorrt or ()), calibration_cache=calibration_cache, threads=threads,
        overwrite=overwrite, thresholds=_thresholds(thresholds),
    )  # fmt: skip
    console.print(str(export_package(config)), highlight=False, soft_wrap=True)


def predict_command(
    package: Annotated[Path, typer.Argument(help="Model package folder (from distill export).")],
    input_dir: Annotated[Path, typer.Argument(help="Cases to segment (BraTS 2017-21, 2023+ or nnU-Net raw layout).")],
    output_dir: Annotated[Path, typer.Argument(help="Receives <case>.nii.gz label maps.")],
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "torch",
    device: Annotated[
        Optional[str], typer.Option(help="cpu or cuda (onnxruntime: also tensorrt, its provider).")
    ] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, fp16, bf16 (torch) or int8 (tensorrt).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads.")] = None,
    cuda_graphs: Annotated[
        bool, typer.Option("--cuda-graphs", help="torch on CUDA: replay captured CUDA graphs.")
    ] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch: run through torch.compile.")] = False,
    engine_cache: Annotated[Optional[Path], typer.Option(help=ENGINE_CACHE_HELP)] = None,
    label_convention: Annotated[
        Optional[str], typer.Option(help=CONVENTION_HELP + " (default: the package's).")
    ] = None,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="Also write <case>_probabilities.npz.")
    ] = False,
    save_uncertainty: Annotated[
        bool, typer.Option("--save-uncertainty",
                           help="Also write <case>_uncertainty.nii.gz: the distilled teacher spread, float32 "
                                "(X, Y, Z, WT/TC/ET) in [0, 0.5] (packages trained with uncertainty_head only).")
    ] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Leave cases whose label map exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    continue_on_error: Annotated[
        bool, typer.Option("--continue-on-error",
                           help="Go on after a failing case; failures are listed in OUTPUT_DIR/failures.json "
                                "and the exit code is 1.")
    ] = False,
    max_voxels: Annotated[
        int, typer.Option(min=1, help="Refuse input files whose header claims more voxels (checked before reading).")
    ] = DEFAULT_MAX_VOXELS,
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation: none (one pass) or mirror8 (nnU-Net's 8 mirrorings "
                               "averaged, 8x the network time).")
    ] = "none",
) -> None:
    """Segment every case of a folder with a model package."""
    from distill.infer.predict import PredictConfig, predict_folder

    config = PredictConfig(
        package=package, input_dir=input_dir, output_dir=output_dir,
        backend=_backend_spec(backend, device, precision, threads, cuda_graphs, compile_model, engine_cache),
        label_convention=label_convention, save_probabilities=save_probabilities, save_uncertainty=save_uncertainty,
        skip_existing=skip_existing,
        progress=progress, continue_on_error=continue_on_error, max_voxels=max_voxels, tta=tta,
    )  # fmt: skip
    result = predict_folder(config)
    for case_id, reason in result.failed.items():
        console.print(f"failed {case_id}: {reason}", highlight=False, soft_wrap=True, markup=False)
    console.print(str(result), highlight=False, soft_wrap=True, markup=False)
    if result.failed:
        raise typer.Exit(1)


def bench_command(
    package: Annotated[Path, typer.Argument(help="Model package folder.")],
    input_dir: Annotated[
        Optional[Path], typer.Option("--input", help="BraTS cases; the first is timed (default: a 1 mm phantom).")
    ] = None,
    backend: Annotated[
        Optional[list[str]],
        typer.Option(help="Backend to time (repeatable; default: every one available). " + BACKEND_HELP),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Model-only repetitions after warm-up.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    e2e_runs: Annotated[int, typer.Option(min=1, help="End-to-end repetitions (NIfTI in -> NIfTI out).")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch and onnxruntime.")] = 2,
    full_shape: Annotated[
        Optional[str], typer.Option(help="Also time the model on the case padded to this grid, e.g. 240,240,155.")
    ] = None,
    engine_cache: Annotated[Optional[Path], typer.Option(help=ENGINE_CACHE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Latency of a package on each available backend side by side: p50/p95/p99, model-only and end-to-end."""
    from distill.infer.backends import BackendSpec
    from distill.infer.bench import BenchConfig, run_bench

    specs = tuple(BackendSpec.parse(b, threads=threads, engine_cache=engine_cache) for b in backend or ())
    config = BenchConfig(package=package, input_dir=input_dir, backends=specs, runs=runs, warmup=warmup,
                         e2e_runs=e2e_runs, threads=threads, full_shape=_triple(full_shape, "--full-shape"), out=out,
                         engine_cache=engine_cache)  # fmt: skip
    result = run_bench(config, report=lambda line: console.print(line, highlight=False, markup=False))
    typer.echo(result.table())
    if result.path is not None:
        console.print(f"results: {result.path}", highlight=False)


def export_engine_command(
    package: Annotated[Path, typer.Argument(help="Model package folder (from distill export).")],
    precision: Annotated[
        Optional[list[str]], typer.Option(help="fp32, fp16 or int8 (repeatable; default fp16).")
    ] = None,
    engine_cache: Annotated[
        Optional[Path], typer.Option(help="Store engines in this folder, not in the package (read-only packages).")
    ] = None,
    held_out: Annotated[
        Optional[Path], typer.Option(help="Held-out BraTS cases for the parity gate (default: synthetic phantoms).")
    ] = None,
    max_held_out: Annotated[int, typer.Option(min=1, help="Use at most this many held-out cases.")] = 3,
    n_phantoms: Annotated[
        int, typer.Option(min=1, help="Phantoms for the parity gate when no --held-out is given.")
    ] = 2,
    calibration_cache: Annotated[Optional[Path], typer.Option(help="Teacher cache for INT8 calibration tiles.")] = None,
    calibration_tiles: Annotated[int, typer.Option(min=1, help="INT8 calibration tiles.")] = 32,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for the parity gate.")] = 2,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even when a matching engine is stored.")] = False,
) -> None:
    """Build TensorRT engines for a package on this GPU (minutes each), parity-gated against torch."""
    from distill.export.tensorrt_build import EngineExportConfig, export_engines

    config = EngineExportConfig(
        package=package, precisions=tuple(precision or ("fp16",)), engine_cache=engine_cache, held_out=held_out,
        max_held_out=max_held_out, n_phantoms=n_phantoms, calibration_cache=calibration_cache,
        calibration_tiles=calibration_tiles, threads=threads, rebuild=rebuild,
    )  # fmt: skip
    console.print(str(export_engines(config)), highlight=False, soft_wrap=True)


TOKEN_HELP = "File holding the bearer token, one line (or set DISTILL_SERVE_TOKEN); never the token itself."


def serve_command(
    package: Annotated[Path, typer.Argument(help="Model package folder (from distill export).")],
    host: Annotated[Optional[str], typer.Option(help="Address (default 127.0.0.1); others need a token.")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port (default 8000; 0: any free one).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="Default onnxruntime. " + BACKEND_HELP)] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads of the backend.")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help=TOKEN_HELP)] = None,
    max_concurrency: Annotated[Optional[int], typer.Option(min=1, help="Requests handled at once (default 1).")] = None,
    max_queue: Annotated[Optional[int], typer.Option(min=0, help="Requests waiting beyond those (default 2).")] = None,
    max_body_mb: Annotated[Optional[float], typer.Option(help="Request body limit in MiB (default 64).")] = None,
    request_timeout: Annotated[Optional[float], typer.Option(help="Seconds per request (default 120).")] = None,
    drain: Annotated[Optional[float], typer.Option(help="Seconds of 503 readiness after SIGTERM (default 0).")] = None,
    tta: Annotated[Optional[str], typer.Option(help="none (default) or mirror8: the 8 mirrorings averaged.")] = None,
) -> None:
    """Serve a model package over HTTP: POST /segment (NIfTI), /segment/raw (.npy); /healthz, /readyz, /metrics.

    Options left out come from DISTILL_SERVE_* environment variables, else the defaults.
    """
    from serve.server import run
    from serve.settings import MiB

    options = {"package": package, "host": host, "port": port, "backend": backend, "threads": threads,
               "token_file": token_file, "max_concurrency": max_concurrency, "max_queue": max_queue,
               "max_body_bytes": int(max_body_mb * MiB) if max_body_mb is not None else None,
               "request_timeout_s": request_timeout, "drain_s": drain, "tta": tta}  # fmt: skip
    settings = _serve_settings({k: v for k, v in options.items() if v is not None})
    raise typer.Exit(run(settings))


def _serve_settings(options: dict):
    from pydantic import ValidationError

    from distill.errors import DistillError
    from serve.settings import ServeSettings

    try:
        return ServeSettings(**options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                             for e in exc.errors())  # fmt: skip
        raise DistillError(f"distill serve: {problems}") from None


def register(app: typer.Typer) -> None:
    """Add ``export``, ``export-engine``, ``predict``, ``bench`` and ``serve`` to ``app``."""
    app.command("export")(export_command)
    app.command("export-engine")(export_engine_command)
    app.command("predict")(predict_command)
    app.command("bench")(bench_command)
    app.command("serve")(serve_command)


__all__ = ["bench_command", "export_command", "export_engine_command", "predict_command", "register",
           "serve_command"]  # fmt: skip
