"""``distill demo``: the whole pipeline on embedded phantoms, no input needed.

1. a compact nnU-Net v2 teacher, planned, preprocessed and trained (5 folds, short fixed
   budget) by nnU-Net's own code on phantom cases (real MNI152 anatomy, synthetic tumours);
2. ``teacher-cache``: the 5 folds x 8 mirror TTA ensemble, cached once;
3. ``train-student``: a ~30k-parameter student distilled from the cache;
4. ``export``: a verified ONNX package (onnxruntime vs torch parity gate);
5. ``predict`` on held-out test phantoms with onnxruntime, beside the teacher ensemble and
   a training-free threshold baseline, all scored by ``evaluate`` against ground truth.

Every stage skips what an earlier run under the same ``out_dir`` already finished. The
default budget is small enough for a 2-core CPU in a few minutes, so the numbers show the
plumbing and the relative speed, not the accuracy a full training reaches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.core.paths import prepare_output_dir
from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import find_cases
from distill.data.nifti import write_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.data.preprocess import PreprocessConfig, preprocess, restore_labels
from distill.eval.evaluate import EvaluateConfig, evaluate
from distill.infer.threshold import threshold_regions

DEMO_DATASET_ID = 990
LABELS = "brats2017"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults take a few minutes on 2 CPU cores."""

    out_dir: Path = Path("distill-demo")
    n_cases: int = 6
    n_test: int = 2
    seed: int = 0
    phantom_shape: tuple[int, int, int] = (48, 48, 32)
    teacher_iterations: int = 20
    student_params: int = 30_000
    steps: int = 600  # a 30k student starts segmenting phantoms after a few hundred steps
    patch: int = 32
    progress: bool = True


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
            if exc[0] is None:
                steps.append(f"{label} ({time.perf_counter() - self.start:.1f} s)")
                if report is not None:
                    report(steps[-1])

    return _Timer()


def _write_labels(folder: Path, case_id: str, regions, case) -> None:
    write_nifti(folder / f"{case_id}.nii.gz", get_convention(LABELS).from_regions(regions), case.affine)


def _teacher_predictions(teacher, test_dir: Path, out: Path, progress: bool) -> float:
    """The teacher ensemble's labels for the test cases; returns seconds per case."""
    start, cases = time.perf_counter(), find_cases(test_dir)
    with tqdm(cases, desc="teacher", unit="case", disable=not progress) as bar:
        for files in bar:
            case = load_case(files, with_labels=False)
            _write_labels(out, files.case_id, teacher.predict(case).probabilities > 0.5, case)
    return (time.perf_counter() - start) / len(cases)


def _threshold_predictions(test_dir: Path, out: Path) -> float:
    start, cases = time.perf_counter(), find_cases(test_dir)
    for files in cases:
        case = load_case(files, with_labels=False)
        prepared = preprocess(case.images, case.affine, config=PreprocessConfig(), source=files.case_id)
        regions = threshold_regions(prepared.images, prepared.brain_mask)
        labels = restore_labels(get_convention(LABELS).from_regions(regions), prepared.record)
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    return (time.perf_counter() - start) / len(cases)


def _score(predictions: Path, test_dir: Path, out: Path, progress: bool) -> dict[str, Any]:
    return evaluate(EvaluateConfig(pred_dir=predictions, gt_dir=test_dir, out_dir=out, pred_convention=LABELS,
                                   progress=progress)).summary  # fmt: skip


def run_demo(config: DemoConfig, report: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage under ``config.out_dir``; resumable. ``report`` receives a line as each
    stage starts and ends (the first, the nnU-Net teacher, runs for a minute or more)."""
    from distill.export.run import ExportConfig, export_package
    from distill.infer.backends import BackendSpec
    from distill.infer.predict import PredictConfig, predict_folder
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache
    from distill.train import TrainConfig, train_student

    out = prepare_output_dir(Path(config.out_dir).resolve(), "demo folder")
    result = DemoResult(out_dir=out)
    steps = result.steps
    test_dir = out / "test_phantoms"

    with _timed(steps, "1. compact nnU-Net teacher built and trained by nnU-Net (5 folds)", report):
        teacher = build_compact_nnunet(
            CompactTeacherConfig(work_dir=out / "teacher", dataset_id=DEMO_DATASET_ID, dataset_name="DistillDemo",
                                 n_cases=config.n_cases, seed=config.seed, phantom_shape=config.phantom_shape,
                                 base_features=8, max_features=64, iterations=config.teacher_iterations),
            log_path=out / "teacher_build.log",
        )  # fmt: skip
    with _timed(steps, "2. teacher-cache: 5 folds x 8 mirror TTA", report):
        cached = run_teacher_cache(TeacherCacheConfig(model_dir=teacher.model_dir, images=teacher.raw_dataset_dir,
                                                      out=out / "cache", progress=config.progress))  # fmt: skip
    with _timed(steps, f"3. train-student --params {config.student_params}", report):
        student = train_student(TrainConfig(cache=cached.cache_dir, out=out / "student", params=config.student_params,
                                            steps=config.steps, patch_size=(config.patch,) * 3, seed=config.seed,
                                            progress=config.progress))  # fmt: skip
    write_phantoms(test_dir, n_cases=config.n_test, seed=config.seed + 1000,
                   config=PhantomConfig(shape=config.phantom_shape), progress=False)  # fmt: skip
    package = out / "package"
    with _timed(steps, "4. export: ONNX package with parity gate", report):
        export_package(ExportConfig(run_dir=out / "student", out=package, held_out=test_dir, overwrite=True))

    predictions = out / "predictions"
    with _timed(steps, "5. predict (onnxruntime), teacher and threshold baseline on test phantoms", report):
        predicted = predict_folder(PredictConfig(package=package, input_dir=test_dir,
                                                 output_dir=predictions / "student",
                                                 backend=BackendSpec.parse("onnxruntime"), label_convention=LABELS,
                                                 progress=config.progress))  # fmt: skip
        ensemble = NnUNetTeacher(NnUNetTeacherConfig(model_dir=teacher.model_dir))
        teacher_seconds = _teacher_predictions(ensemble, test_dir, predictions / "teacher", config.progress)
        threshold_seconds = _threshold_predictions(test_dir, predictions / "threshold")

    student_seconds = predicted.seconds / max(1, len(predicted.written))
    for name, folder, params, seconds in (
        ("teacher: nnU-Net 5x8 TTA", "teacher", teacher.parameters_per_member, teacher_seconds),
        ("student (onnxruntime)", "student", student.parameters, student_seconds),
        ("threshold baseline", "threshold", None, threshold_seconds),
    ):
        summary = _score(predictions / folder, test_dir, out / "evaluation" / folder, config.progress)
        result.rows.append(DemoRow(name, params, seconds, summary))
    steps.append(f"6. evaluation: {out / 'evaluation'} (per-case CSV and summary JSON per model)")
    return result
