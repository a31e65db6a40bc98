"""``distill demo``: the pipeline built so far, end to end, on embedded phantoms.

Steps: write phantom cases (real MNI152 anatomy, synthetic tumours) in BraTS 2021 naming,
convert them to an nnU-Net raw dataset at 2 mm, segment each case on Distill's preprocessed
grid, put the labels back on the original grid in the BraTS 2017-21 convention, and score
them with the BraTS metrics. The segmenter is the training-free threshold baseline
(:mod:`distill.infer.threshold`) until the teacher-cache and student stages land; each later
stage extends this module rather than adding a second demo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.convert import ConvertConfig, convert_to_nnunet
from distill.data.discovery import find_cases
from distill.data.nifti import write_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.data.preprocess import PreprocessConfig, preprocess, restore_labels
from distill.eval.evaluate import EvaluateConfig, evaluate
from distill.infer.threshold import threshold_regions

DEMO_DATASET_ID = 990
DEMO_SPACING_MM = 2.0


@dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("distill-demo")
    n_cases: int = 6
    seed: int = 0
    progress: bool = True


@dataclass
class DemoResult:
    out_dir: Path
    summary: dict[str, Any]
    steps: list[str] = field(default_factory=list)


def segment_folder(cases_dir: Path, out_dir: Path, progress: bool = True) -> int:
    """Threshold-segment every case under ``cases_dir``; write ``<case>.nii.gz`` (BraTS 2017-21 labels)."""
    convention = get_convention("brats2017")
    cases = find_cases(cases_dir)
    for files in tqdm(cases, desc="segment", unit="case", disable=not progress):
        case = load_case(files, with_labels=False)
        prepared = preprocess(case.images, case.affine, config=PreprocessConfig(), source=files.case_id)
        regions = threshold_regions(prepared.images, prepared.brain_mask)
        labels = restore_labels(convention.from_regions(regions), prepared.record)
        write_nifti(out_dir / f"{files.case_id}.nii.gz", labels, case.affine)
    return len(cases)


def run_demo(config: DemoConfig) -> DemoResult:
    """Run every stage on ``config.n_cases`` phantoms under ``config.out_dir``; resumable."""
    out = Path(config.out_dir)
    steps: list[str] = []

    start = time.perf_counter()
    phantoms = write_phantoms(
        out / "phantoms", n_cases=config.n_cases, seed=config.seed,
        config=PhantomConfig(spacing_mm=DEMO_SPACING_MM), layout="brats2021", progress=config.progress,
    )  # fmt: skip
    steps.append(f"phantoms: {len(phantoms.case_ids)} cases in {out / 'phantoms'} ({time.perf_counter() - start:.1f} s)")

    converted = convert_to_nnunet(
        ConvertConfig(source=out / "phantoms", out_root=out / "nnUNet_raw", dataset_id=DEMO_DATASET_ID,
                      dataset_name="DistillDemo", progress=config.progress)
    )  # fmt: skip
    steps.append(f"nnU-Net raw dataset: {converted.dataset_dir} ({converted.seconds:.1f} s)")

    start = time.perf_counter()
    n = segment_folder(out / "phantoms", out / "predictions", progress=config.progress)
    steps.append(f"threshold baseline: {n} label maps in {out / 'predictions'} ({time.perf_counter() - start:.1f} s)")

    result = evaluate(
        EvaluateConfig(pred_dir=out / "predictions", gt_dir=out / "phantoms", out_dir=out / "evaluation",
                       pred_convention="brats2017", progress=config.progress)
    )  # fmt: skip
    steps.append(f"evaluation: {result.csv_path} and {result.json_path}")
    return DemoResult(out_dir=out, summary=result.summary, steps=steps)
