"""``distill demo``: what Distill gains, end to end, no input needed, ending in a visual report.

Stages, each announced as it starts and ends:

0. data: phantoms at a CPU-friendly resolution (real MNI152 anatomy, synthetic gliomas), or
   real labelled BraTS cases given with ``cases`` (any layout :func:`find_cases` reads), split
   deterministically into training and held-out cases;
1. a compact nnU-Net v2 teacher, planned, preprocessed and trained (5 folds) by nnU-Net's own
   code, its iteration budget split into nnU-Net epochs so the poly learning rate anneals;
2. ``teacher-cache``: the 5 folds x 8 mirror TTA ensemble with its per-voxel uncertainty;
3. ``train-student``: a ~100k-parameter student (``brats-100k``, or ``brats-30k`` below 65k:
   the recipes the real-data benchmark ships), from the cache, directly or behind teacher
   assistants (``assistants``);
4. ``export``: a verified ONNX package (onnxruntime vs torch parity gate);
5. ``serve``: the real service on a free loopback port, one held-out case POSTed to
   ``/segment`` over HTTP, then a SIGTERM and a clean shutdown;
6. predict: the student (onnxruntime), the teacher ensemble (with its uncertainty) and the
   threshold baseline on the held-out cases, and each model's latency on this machine;
7. ``evaluate``: teacher, student and baseline against the ground truth;
8. the report: ``report.html`` (self-contained) and ``report.md`` (:mod:`distill.report`).

Every finished stage leaves ``stages/<stage>.json`` (atomically), and a rerun with the same
options skips it, so a rerun is fast and an interrupted run resumes (the stage that was
interrupted resumes from what it wrote itself). Once a stage runs again, every later one runs
again too. The default budgets fit a 2-core CPU in about 15 minutes, so the numbers show the
plumbing and the relative speed, not the accuracy a full training reaches;
``quick`` cuts every budget to the least that still runs each stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.core.atomic import atomic_write_json
from distill.core.paths import prepare_output_dir
from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import MODALITIES, CaseFiles, find_cases
from distill.data.nifti import write_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.errors import DistillError
from distill.eval.evaluate import EvaluateConfig, evaluate
from distill.infer.threshold import threshold_labels

DEMO_DATASET_ID = 990
DATASET_NAME = "DistillDemo"
LABELS = "brats2017"
STAGES_DIR = "stages"
MIN_TRAINING_CASES = 5  # one per fold
#: the student recipe per size, as benchmarks/realdata's protocol ships them (RECIPE_FOR_SIZE there)
RECIPE_30K, RECIPE_100K, RECIPE_SWITCH = "brats-30k", "brats-100k", 65_000
STUDENT_TIMING_REPEATS = 3


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults take about 15 minutes on 2 CPU cores.

    Attributes:
        cases: labelled BraTS cases to use instead of phantoms (any supported layout).
        cases_spacing: real cases are resampled to this spacing (mm) first, to stay CPU-sized.
        n_cases: training phantoms (at least 5, one per fold).
        n_test: held-out cases (phantoms, or taken from ``cases``).
        teacher_iterations: nnU-Net training iterations per fold (split into nnU-Net epochs).
        student_params, steps, patch, assistants: the student run (steps per link).
        uncertainty_head: train the student with the distilled-uncertainty head (``uncertainty_head``).
        quick: the budgets were cut by :meth:`quick`; recorded in the report.
        serve: run the HTTP stage (skipped anyway, with a line, without the ``serve`` extra).
    """

    out_dir: Path = Path("distill-demo")
    # 16 training phantoms rather than 6 (4-5 per fold); more cases cost only preprocessing and
    # cache time. The teacher still paints false tumours on held-out ones (benchmarks/demo)
    n_cases: int = 16
    n_test: int = 4  # two held-out cases let one case without ET swing the mean by 0.15
    seed: int = 0
    phantom_shape: tuple[int, int, int] = (48, 48, 32)
    # 20 epochs of 25 under nnU-Net's poly decay, about 0.2 s an iteration on 2 cores. One fold
    # scored 0.43 mean Dice on the held-out phantoms after 200 iterations, 0.56 after 500 and 0.60
    # after 1,000 (benchmarks/demo/TEACHER_PROBES.md): 500 is what the ~15-minute budget affords
    teacher_iterations: int = 500
    # 100k with brats-100k: on the 500-iteration teacher (0.588 mean Dice) a 30k student kept 74 %
    # of it after 1,500 steps (83 % after 3,000), a 100k one 87 % after 1,500 for about the same time
    # per step (benchmarks/demo/RESULTS.md); 2,500 steps fit the ~15-minute budget
    student_params: int = 100_000
    steps: int = 2500
    patch: int = 32
    assistants: str = "0"  # direct, as the shipped recipes train; chains are measured apart
    # the distilled-uncertainty head (issue 15): the report shows its one-pass map beside the
    # teacher's 40-pass spread
    uncertainty_head: bool = True
    cases: Path | None = None
    cases_spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    quick: bool = False
    serve: bool = True
    progress: bool = True

    @classmethod
    def quick_run(cls, **options: Any) -> DemoConfig:
        """The least that still exercises every stage (no accuracy promise); ``options`` win."""
        return cls(**{"n_cases": 5, "n_test": 1, "teacher_iterations": 1, "steps": 4, "quick": True, **options})

    def budget(self) -> str:
        return (f"{'--quick, ' if self.quick else ''}{self.teacher_iterations} nnU-Net iterations per fold, "
                f"{self.steps} student steps per link")  # fmt: skip


@dataclass
class DemoRow:
    model: str
    parameters: int | None
    seconds_per_case: float
    summary: dict[str, Any]

    def dice(self, region: str) -> float:
        return self.summary["per_region"][region]["dice"]["mean"]


@dataclass
class DemoResult:
    out_dir: Path
    rows: list[DemoRow] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    report: Path | None = None

    def table(self) -> str:
        lines = [f"{'model':<28}{'params':>10}{'s/case':>9}{'Dice WT':>9}{'TC':>7}{'ET':>7}"]
        for row in self.rows:
            params = f"{row.parameters:,}" if row.parameters else "-"
            lines.append(f"{row.model:<28}{params:>10}{row.seconds_per_case:>9.2f}"
                         f"{row.dice('WT'):>9.3f}{row.dice('TC'):>7.3f}{row.dice('ET'):>7.3f}")  # fmt: skip
        return "\n".join(lines)


def _timed(steps: list[str], label: str, report: Callable[[str], None] | None = None):
    """Context manager: ``report`` the step as it starts and ends; append it with its time to ``steps``."""

    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            if report is not None:
                report(f"{label} ...")
            return self

        def __exit__(self, *exc):
            self.seconds = time.perf_counter() - self.start
            if exc[0] is None:
                steps.append(f"{label} ({self.seconds:.1f} s)")
                if report is not None:
                    report(steps[-1])

    return _Timer()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class StageRunner:
    """Runs the demo's stages in order; skips one whose record (same options) an earlier run left.

    Once a stage runs, every later stage runs too (its inputs may have changed).
    """

    def __init__(self, out: Path, steps: list[str], report: Callable[[str], None] | None) -> None:
        self.out, self.steps, self.report = out, steps, report
        self.index, self.fresh, self.reused = 0, False, []

    def path(self, stage: str) -> Path:
        return self.out / STAGES_DIR / f"{stage}.json"

    def previous(self, stage: str, options: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(stage)
        if self.fresh or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("options") == options else None

    def run(self, stage: str, label: str, options: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict:
        self.index += 1
        label = f"{self.index}. {label}"
        options = _jsonable(options)
        record = self.previous(stage, options)
        if record is not None:
            self.reused.append(stage)
            self.steps.append(f"{label}: reused from an earlier run ({record['seconds']:.1f} s then)")
            if self.report is not None:
                self.report(self.steps[-1])
            return record
        self.fresh = True
        with _timed(self.steps, label, self.report) as timer:
            made = work()
        record = {"stage": stage, "index": self.index, "label": label, "options": options,
                  "seconds": round(timer.seconds, 3),
                  "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **_jsonable(made)}  # fmt: skip
        atomic_write_json(self.path(stage), record)
        return record


# --------------------------------------------------------------------------- data


def held_out_split(case_ids: list[str], n_test: int) -> tuple[list[str], list[str]]:
    """``(training, held-out)``: the ``n_test`` ids with the smallest SHA-256 are held out (stable
    whatever order the files are listed in, and independent of the other cases' names)."""
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    return sorted(ranked[n_test:]), sorted(ranked[:n_test])


def _write_raw_dataset(cases: list[CaseFiles], folder: Path, spacing) -> None:
    from distill.data.convert import NnUNetDatasetWriter, convert_case, nnunet_region_fields

    writer = NnUNetDatasetWriter(folder)
    for files in cases:
        if not all(p.is_file() for p in writer.case_paths(files.case_id)):
            convert_case(files, folder, "auto", spacing)
    writer.write_dataset_json({**nnunet_region_fields(len(cases)), "name": DATASET_NAME,
                               "description": "BraTS cases for distill demo (nnU-Net labels: 1 ED, 2 NCR, 3 ET)"})


def prepare_data(config: DemoConfig, out: Path) -> dict[str, Any]:
    """Held-out cases in ``out/data/held_out``; for real cases also the training set as an nnU-Net raw dataset."""
    held_out = out / "data" / "held_out"
    if config.cases is None:
        write_phantoms(held_out, n_cases=config.n_test, seed=config.seed + 1000,
                       config=PhantomConfig(shape=config.phantom_shape), progress=False)  # fmt: skip
        return {"source": "phantoms", "held_out": str(held_out), "train_raw": None,
                "held_out_cases": [c.case_id for c in find_cases(held_out)], "n_training": config.n_cases}  # fmt: skip
    cases = {c.case_id: c for c in find_cases(config.cases, require_labels=True)}
    if len(cases) < MIN_TRAINING_CASES + config.n_test:
        raise DistillError(f"{config.cases}: {len(cases)} labelled case(s); the demo needs {MIN_TRAINING_CASES} to "
                           f"train 5 folds plus {config.n_test} held out")  # fmt: skip
    train_ids, test_ids = held_out_split(list(cases), config.n_test)
    train_raw = out / "data" / "train" / f"Dataset{DEMO_DATASET_ID:03d}_{DATASET_NAME}"
    _write_raw_dataset([cases[c] for c in train_ids], train_raw, config.cases_spacing)
    _write_raw_dataset([cases[c] for c in test_ids], held_out, config.cases_spacing)
    return {"source": str(Path(config.cases).resolve()), "held_out": str(held_out), "train_raw": str(train_raw),
            "held_out_cases": test_ids, "training_cases": train_ids, "n_training": len(train_ids)}  # fmt: skip


# --------------------------------------------------------------------------- teacher, cache, student, export


def build_teacher(config: DemoConfig, out: Path, data: dict[str, Any]) -> dict[str, Any]:
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet, epoch_schedule

    teacher = build_compact_nnunet(
        CompactTeacherConfig(work_dir=out / "teacher", dataset_id=DEMO_DATASET_ID, dataset_name=DATASET_NAME,
                             n_cases=config.n_cases, seed=config.seed, phantom_shape=config.phantom_shape,
                             base_features=8, max_features=64, iterations=config.teacher_iterations,
                             raw_dataset=Path(data["train_raw"]) if data["train_raw"] else None,
                             progress_plot_every_epoch=False),
        log_path=out / "teacher_build.log",
    )  # fmt: skip
    checkpoints = [teacher.model_dir / f"fold_{f}" / "checkpoint_final.pth" for f in teacher.folds]
    epochs, per_epoch = epoch_schedule(config.teacher_iterations) if config.teacher_iterations else (0, 0)
    return {"model_dir": str(teacher.model_dir), "raw_dataset_dir": str(teacher.raw_dataset_dir),
            "parameters_per_member": teacher.parameters_per_member, "folds": list(teacher.folds),
            "checkpoint_bytes": sum(p.stat().st_size for p in checkpoints if p.is_file()),
            "epochs": epochs, "iterations_per_epoch": per_epoch, "build_seconds": teacher.seconds,
            "macs_128_per_pass": teacher_macs(teacher.model_dir), "tta_passes": 8}  # fmt: skip


def teacher_macs(model_dir: Path) -> int | None:
    """MACs of one forward pass of one fold's network on a 128^3 tile (as the students are counted)."""
    try:
        from distill.students.sizing import count_macs
        from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

        network = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, tta="none")).predictor.network
        return int(count_macs(network, (1, 4, 128, 128, 128)))
    except Exception:  # noqa: BLE001 - a size in the report, never a reason to fail the demo
        return None


def train(config: DemoConfig, out: Path, cache_dir: str) -> dict[str, Any]:
    from distill.train import train_student
    from distill.train.recipes import build_config

    recipe = RECIPE_100K if config.student_params >= RECIPE_SWITCH else RECIPE_30K
    # build_config keeps the recipe's warm-ups in proportion to these steps
    overrides = {"params": config.student_params, "steps": config.steps, "patch_size": (config.patch,) * 3,
                 "seed": config.seed, "progress": config.progress, "assistants": config.assistants,
                 "uncertainty_head": config.uncertainty_head}  # fmt: skip
    config = build_config(Path(cache_dir), out / "student", recipe, overrides)
    discard_other_run(out / "student", config.training_hash())
    trained = train_student(config)
    return {"run_dir": str(out / "student"), "card": str(trained.card), "parameters": trained.parameters,
            "macs_128": trained.macs_128, "recipe": recipe, "chain": list(trained.chain)}  # fmt: skip


def discard_other_run(run_dir: Path, training_hash: str) -> None:
    """Remove a student run folder made with other training options. ``distill train-student``
    refuses to resume such a folder; the demo owns its folder, so a rerun with other student
    options retrains from scratch, while the same options still resume an interrupted run."""
    import shutil

    record = run_dir / "run.json"
    if not record.is_file():
        return
    try:
        stored = json.loads(record.read_text()).get("training_hash")
    except (OSError, ValueError, AttributeError):
        stored = None
    if stored != training_hash:
        shutil.rmtree(run_dir)


def export(out: Path, run_dir: str, held_out: str) -> dict[str, Any]:
    from distill.export.run import ExportConfig, export_package

    made = export_package(ExportConfig(run_dir=Path(run_dir), out=out / "package", held_out=Path(held_out),
                                       max_held_out=1, overwrite=True))  # fmt: skip
    return {"package": str(made.package_dir), "package_bytes": made.package_bytes, "onnx_bytes": made.onnx_bytes,
            "parity_passed": bool(made.parity["onnxruntime"]["passed"])}  # fmt: skip


# --------------------------------------------------------------------------- serve


def serve_missing() -> str | None:
    """Why the serve stage cannot run here, or ``None``."""
    missing = [m for m in ("fastapi", "uvicorn", "multipart", "pydantic_settings", "onnxruntime")
               if importlib.util.find_spec(m) is None]  # fmt: skip
    if not missing:
        return None
    return f"the serve extra is not installed (missing {', '.join(missing)}; pip install '.[serve]')"


def multipart_body(fields_: dict[str, Path]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file part per field."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, path in fields_.items():
        parts += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.nii.gz\"\r\n"
                  "Content-Type: application/gzip\r\n\r\n".encode(), path.read_bytes(), b"\r\n"]  # fmt: skip
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class _Server:
    """``distill serve PACKAGE --port 0`` in a child process; the port from its ``listening`` line."""

    def __init__(self, package: Path, threads: int, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_SERVE_")}
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "distill", "serve", str(package), "--host", "127.0.0.1", "--port", "0",
             "--threads", str(threads)], stdout=self.log, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        self.port: int | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.write(line)
            if line.startswith('{"event": "listening"'):
                self.port = int(json.loads(line)["port"])
                self._listening.set()
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> float:
        start = time.perf_counter()
        self._listening.wait(timeout)
        while time.perf_counter() - start < timeout and self.port is not None and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise DistillError(f"distill serve did not get ready in {timeout:.0f} s (exit code {self.process.poll()}); "
                           f"see {self.log.name}")  # fmt: skip

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM, then wait; killed (and said so) only if it does not exit in ``timeout``."""
        start = time.perf_counter()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
            killed = False
        except subprocess.TimeoutExpired:
            self.process.kill()
            code, killed = self.process.wait(), True
        self._reader.join(10)  # stderr ends with the process; then nothing writes to the log any more
        self.log.close()
        return {"exit_code": code, "shutdown_s": round(time.perf_counter() - start, 3),
                "clean_shutdown": not killed and code in (0, -signal.SIGTERM)}  # fmt: skip


def serve_round_trip(package: Path, case: CaseFiles, out: Path, threads: int = 1, timeout: float = 180.0) -> dict:
    """Serve ``package``, POST ``case`` to ``/segment``, check the label map, shut the server down."""
    import gzip

    import nibabel as nib
    import numpy as np

    body, content_type = multipart_body({m: case.images[m] for m in MODALITIES})
    server = _Server(package, threads, out / "serve.log")
    try:
        ready_s = server.wait_ready(timeout)
        request = urllib.request.Request(server.url + "/segment", data=body, method="POST",
                                         headers={"Content-Type": content_type})  # fmt: skip
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, timing = response.status, response.read(), response.headers.get("Server-Timing", "")
        round_trip = time.perf_counter() - start
    finally:
        stopped = server.stop()
    labels = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(payload)).dataobj)
    expected = nib.load(case.images["flair"]).shape
    if tuple(labels.shape) != tuple(expected):
        raise DistillError(f"POST /segment returned labels of shape {labels.shape}, the case is {expected}")
    allowed = set(get_convention(LABELS).labels) | {0}
    found = sorted(int(v) for v in np.unique(labels))
    if not set(found) <= allowed:
        raise DistillError(f"POST /segment returned labels {found}, not {LABELS} labels {sorted(allowed)}")
    (out / "serve").mkdir(parents=True, exist_ok=True)
    from distill.core.atomic import atomic_write_bytes

    atomic_write_bytes(out / "serve" / f"{case.case_id}.nii.gz", payload)
    return {"case": case.case_id, "port": server.port, "status": status, "ready_s": round(ready_s, 3),
            "round_trip_s": round(round_trip, 4), "server_timing": timing, "shape": list(labels.shape),
            "labels_found": found, "tumour_voxels": int((labels > 0).sum()), "response_bytes": len(payload),
            **stopped}  # fmt: skip


# --------------------------------------------------------------------------- predict and evaluate


def _write_labels(folder: Path, case_id: str, regions, case) -> None:
    write_nifti(folder / f"{case_id}.nii.gz", get_convention(LABELS).from_regions(regions), case.affine)


def _teacher_predictions(teacher, test_dir: Path, out: Path, spread_dir: Path, progress: bool) -> float:
    """The teacher ensemble's labels and per-voxel spread for the test cases; returns seconds per case."""
    import numpy as np

    start, cases = time.perf_counter(), find_cases(test_dir)
    spread_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(cases, desc="teacher", unit="case", disable=not progress) as bar:
        for files in bar:
            case = load_case(files, with_labels=False)
            soft = teacher.predict(case)
            _write_labels(out, files.case_id, soft.probabilities > 0.5, case)
            np.savez_compressed(spread_dir / f"{files.case_id}.npz", uncertainty=soft.uncertainty.astype(np.float16),
                                n_passes=soft.n_passes)  # fmt: skip
    return (time.perf_counter() - start) / len(cases)


def _threshold_predictions(test_dir: Path, out: Path) -> float:
    start, cases = time.perf_counter(), find_cases(test_dir)
    for files in cases:
        case = load_case(files, with_labels=False)
        labels = threshold_labels(case, LABELS, source=files.case_id)
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    return (time.perf_counter() - start) / len(cases)


def measure_latency(teacher_tta, model_dir: Path, package: Path, files: CaseFiles, threads: int) -> dict[str, Any]:
    """Seconds for one case: the teacher with 5x8 TTA and without TTA (nnU-Net's own prediction, no
    spread recorded), and the student's median over a few runs after a warm-up."""
    from distill.infer.predictor import Predictor
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    case = load_case(files, with_labels=False)
    latency: dict[str, Any] = {"case": files.case_id, "threads": threads, "student_repeats": STUDENT_TIMING_REPEATS}
    _, timings = teacher_tta.predict_timed(case)
    latency["teacher_tta_s"] = sum(timings.values())
    plain = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, tta="none"))
    _, timings = plain.predict_timed(case)
    latency["teacher_no_tta_s"] = sum(timings.values())
    predictor = Predictor.from_package(package, "onnxruntime", threads=threads)
    predictor.segment(case.images, case.affine)
    runs = []
    for _ in range(STUDENT_TIMING_REPEATS):
        start = time.perf_counter()
        predictor.segment(case.images, case.affine)
        runs.append(time.perf_counter() - start)
    latency["student_s"] = statistics.median(runs)
    return latency


def predict_all(config: DemoConfig, out: Path, teacher: dict, package: str, data: dict) -> dict[str, Any]:
    from distill.infer.backends import BackendSpec
    from distill.infer.predict import PredictConfig, predict_folder
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    test_dir, predictions, threads = Path(data["held_out"]), out / "predictions", max(1, min(2, os.cpu_count() or 1))
    predicted = predict_folder(PredictConfig(package=Path(package), input_dir=test_dir,
                                             output_dir=predictions / "student",
                                             backend=BackendSpec.parse("onnxruntime", threads=threads),
                                             label_convention=LABELS, progress=config.progress))  # fmt: skip
    ensemble = NnUNetTeacher(NnUNetTeacherConfig(model_dir=Path(teacher["model_dir"])))
    spread_dir = predictions / "teacher_uncertainty"
    teacher_seconds = _teacher_predictions(ensemble, test_dir, predictions / "teacher", spread_dir, config.progress)
    threshold_seconds = _threshold_predictions(test_dir, predictions / "threshold")
    files = find_cases(test_dir)[0]
    latency = measure_latency(ensemble, Path(teacher["model_dir"]), Path(package), files, threads)
    latency["threshold_s"] = threshold_seconds
    distilled = _student_uncertainty(Path(package), files, predictions / "student_uncertainty", threads)
    n_passes = len(teacher["folds"]) * teacher["tta_passes"]
    case = {"id": files.case_id, "flair": str(files.images["flair"]), "label": str(files.label),
            "label_convention": "auto", "label_layout": files.layout,
            "teacher": str(predictions / "teacher" / f"{files.case_id}.nii.gz"),
            "student": str(predictions / "student" / f"{files.case_id}.nii.gz"),
            "uncertainty": str(spread_dir / f"{files.case_id}.npz"),
            "uncertainty_source": (f"Uncertainty: the teacher's own spread on this held-out case, the standard "
                                   f"deviation of the {n_passes} passes' probabilities (5 folds x 8 mirror flips; "
                                   "largest over WT/TC/ET), computed by the teacher at prediction time: the cache "
                                   "holds only the training cases."),
            **({"student_uncertainty": str(distilled)} if distilled else {})}  # fmt: skip
    return {"seconds_per_case": {"teacher": teacher_seconds, "threshold": threshold_seconds,
                                 "student": predicted.seconds / max(1, len(predicted.written))},
            "latency": latency, "report_case": case, "predictions": str(predictions)}  # fmt: skip


def _student_uncertainty(package: Path, files: CaseFiles, folder: Path, threads: int) -> Path | None:
    """The student's distilled uncertainty on one case, stored as the teacher's spread is (``.npz``,
    key ``uncertainty``, ``(3, X, Y, Z)``), or ``None`` for a package without the head."""
    import numpy as np

    from distill.infer.backends import BackendSpec
    from distill.infer.predictor import Predictor

    predictor = Predictor.from_package(package, BackendSpec.parse("onnxruntime", threads=threads))
    if not predictor.has_distilled_uncertainty:
        return None
    case = load_case(files, with_labels=False)
    result = predictor.segment(case.images, case.affine, label_convention=LABELS, return_distilled_uncertainty=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{files.case_id}.npz"
    np.savez_compressed(path, uncertainty=result.distilled_uncertainty.astype(np.float16))
    return path


def evaluate_all(config: DemoConfig, out: Path, predictions: str, data: dict) -> dict[str, Any]:
    summaries = {}
    for model in ("teacher", "student", "threshold"):
        folder = out / "evaluation" / model
        evaluate(EvaluateConfig(pred_dir=Path(predictions) / model, gt_dir=Path(data["held_out"]), out_dir=folder,
                                pred_convention=LABELS, progress=config.progress))  # fmt: skip
        summaries[model] = str(folder / "summary.json")
    return {"summaries": summaries}


# --------------------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    """What this machine is, for the report (no host names or user names)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for package in ("torch", "onnxruntime", "nnunetv2"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001
            versions[package] = "not installed"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores usable": usable, "memory": memory, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), **versions}  # fmt: skip


def _config_record(config: DemoConfig) -> dict[str, Any]:
    return _jsonable({f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("out_dir", "progress")})


def run_demo(config: DemoConfig, report: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage under ``config.out_dir``; resumable. ``report`` receives a line as each
    stage starts and ends (the first, the nnU-Net teacher, runs for a minute or more)."""
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    out = prepare_output_dir(Path(config.out_dir).resolve(), "demo folder")
    result = DemoResult(out_dir=out)
    stages = StageRunner(out, result.steps, report)
    options = _config_record(config)

    data = stages.run("data", "data: " + ("phantoms" if config.cases is None else f"cases from {config.cases}"),
                      {k: options[k] for k in ("cases", "cases_spacing", "n_test", "n_cases", "seed", "phantom_shape")},
                      lambda: prepare_data(config, out))  # fmt: skip
    teacher = stages.run("teacher", "teacher: compact nnU-Net v2 planned and trained by nnU-Net (5 folds)",
                         {"iterations": config.teacher_iterations}, lambda: build_teacher(config, out, data))
    cached = stages.run("teacher_cache", "teacher-cache: 5 folds x 8 mirror TTA, with uncertainty", {},
                        lambda: _cache(run_teacher_cache, TeacherCacheConfig, teacher, out, config.progress))
    student = stages.run("student", f"train-student --params {config.student_params} (assistants {config.assistants})",
                         {k: options[k] for k in ("student_params", "steps", "patch", "assistants", "seed",
                                                  "uncertainty_head")},
                         lambda: train(config, out, cached["cache_dir"]))  # fmt: skip
    exported = stages.run("export", "export: ONNX package with parity gate", {},
                          lambda: export(out, student["run_dir"], data["held_out"]))
    missing = serve_missing() if config.serve else "turned off (--no-serve)"
    first_case = find_cases(data["held_out"])[0]
    stages.run("serve", "serve: POST /segment over HTTP on 127.0.0.1" + (f" (skipped: {missing})" if missing else ""),
               {"skip": missing}, lambda: {"skipped": missing} if missing else
               serve_round_trip(Path(exported["package"]), first_case, out))  # fmt: skip
    predicted = stages.run("predict", "predict: student (onnxruntime), teacher ensemble, threshold baseline; latency",
                           {}, lambda: predict_all(config, out, teacher, exported["package"], data))
    stages.run("evaluate", "evaluate: teacher, student and baseline against the ground truth", {},
               lambda: evaluate_all(config, out, predicted["predictions"], data))

    atomic_write_json(out / "demo.json", {
        "config": options, "machine": machine(), "reused": stages.reused, "budget": config.budget(),
        "data": "phantoms (MNI152 anatomy, synthetic gliomas)" if config.cases is None else
                f"{len(data.get('training_cases', []))} training and {len(data['held_out_cases'])} held-out cases "
                f"from {config.cases}",
        "accuracy_note": ("--quick: every stage ran on the smallest budgets; the scores carry no accuracy promise."
                          if config.quick else "The budgets are small: the scores show the pipeline and the speed-up, "
                          "not the accuracy of a full training."),
    })  # fmt: skip
    if importlib.util.find_spec("matplotlib") is None:
        result.steps.append(f"{stages.index + 1}. report skipped: matplotlib is not installed "
                            "(pip install '.[report]')")
    else:
        with _timed(result.steps, f"{stages.index + 1}. report", report):
            from distill.report import build_report

            result.report = build_report(out).html
        result.steps.append(f"report: {result.report} and {out / 'report.md'}")
    if report is not None:
        report(result.steps[-1])
    _rows(result, out, teacher, student, predicted)
    return result


def _cache(run_teacher_cache, config_class, teacher: dict, out: Path, progress: bool) -> dict[str, Any]:
    cached = run_teacher_cache(config_class(model_dir=Path(teacher["model_dir"]),
                                            images=Path(teacher["raw_dataset_dir"]), out=out / "cache",
                                            progress=progress))  # fmt: skip
    return {"cache_dir": str(cached.cache_dir), "n_cases": cached.n_cases, "bytes_written": cached.bytes_written}


def _rows(result: DemoResult, out: Path, teacher: dict, student: dict, predicted: dict) -> None:
    seconds = predicted["seconds_per_case"]
    for name, model, params in (("teacher: nnU-Net 5x8 TTA", "teacher", teacher["parameters_per_member"]),
                                ("student (onnxruntime)", "student", student["parameters"]),
                                ("threshold baseline", "threshold", None)):  # fmt: skip
        summary = json.loads((out / "evaluation" / model / "summary.json").read_text())
        result.rows.append(DemoRow(name, params, seconds[model], summary))


__all__ = ["DemoConfig", "DemoResult", "held_out_split", "run_demo"]
