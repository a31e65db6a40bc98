"""A demo folder as the stages leave it, written by hand with tiny files, for the report's tests."""

from __future__ import annotations

import json

import numpy as np

from distill.data.nifti import write_nifti

SHAPE = (20, 18, 12)


def _summary(dice: float, hd95: float) -> dict:
    return {"n_cases": 1, "regions": ["WT", "TC", "ET"],
            "per_region": {r: {"dice": {"mean": dice - 0.1 * i}, "hd95": {"mean": hd95 + i}}
                           for i, r in enumerate(("WT", "TC", "ET"))}}  # fmt: skip


def _labels(shift: int = 0) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[6 + shift:14 + shift, 5:13, 3:9] = 2  # oedema
    labels[8 + shift:12 + shift, 7:11, 4:8] = 1  # core
    labels[9 + shift:11 + shift, 8:10, 5:7] = 4  # enhancing
    return labels


def write_fake_demo(out, with_uncertainty: bool = True, with_student_uncertainty: bool = False):
    """A demo folder as the stages leave it, with tiny hand-made files (the student's distilled
    map only with ``with_student_uncertainty``)."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(0)
    write_nifti(out / "case" / "flair.nii.gz", rng.normal(100, 10, SHAPE).astype(np.float32) + 50 * (_labels() > 0),
                affine)  # fmt: skip
    write_nifti(out / "case" / "seg.nii.gz", _labels(), affine)
    write_nifti(out / "pred" / "teacher.nii.gz", _labels(1), affine)
    write_nifti(out / "pred" / "student.nii.gz", _labels(-1), affine)
    if with_uncertainty:
        spread = np.zeros((3, *SHAPE), np.float16)
        spread[:, 5:15, 4:14, 2:10] = 0.2
        np.savez_compressed(out / "pred" / "spread.npz", uncertainty=spread)
    if with_student_uncertainty:
        distilled = np.zeros((3, *SHAPE), np.float16)
        distilled[:, 6:14, 5:13, 3:9] = 0.1
        np.savez_compressed(out / "pred" / "distilled.npz", uncertainty=distilled)
    for model, dice in (("teacher", 0.8), ("student", 0.7), ("threshold", 0.5)):
        (out / "evaluation" / model).mkdir(parents=True)
        (out / "evaluation" / model / "summary.json").write_text(json.dumps(_summary(dice, 4.0)))
    (out / "student").mkdir()
    card = {"parameters": 30_000, "macs_128": 400_000_000,
            "chain": [{"name": "link0_assistant", "parameters": 250_000, "steps": 4,
                       "validation": {"dice_gt/WT": 0.6, "dice_gt/TC": 0.5, "dice_gt/ET": 0.4}},
                      {"name": "link1_student", "parameters": 30_000, "steps": 4, "validation": {}}]}  # fmt: skip
    (out / "student" / "student.json").write_text(json.dumps(card))
    (out / "package").mkdir()
    (out / "package" / "model.json").write_text(json.dumps({"model": {"parameters": 30_000, "macs_128": 400_000_000}}))
    records = {
        "data": {"index": 1, "label": "1. data: phantoms"},
        "teacher": {"index": 2, "label": "2. teacher", "parameters_per_member": 1_000_000, "folds": [0, 1, 2, 3, 4],
                    "checkpoint_bytes": 20_000_000, "macs_128_per_pass": 9_000_000_000, "tta_passes": 8},
        "student": {"index": 3, "label": "3. train-student", "card": "student/student.json"},
        "export": {"index": 4, "label": "4. export", "package": "package", "package_bytes": 150_000},
        "serve": {"index": 5, "label": "5. serve", "round_trip_s": 0.4, "status": 200, "port": 45678,
                  "shape": list(SHAPE), "clean_shutdown": True},
        "predict": {"index": 6, "label": "6. predict",
                    "latency": {"teacher_tta_s": 4.0, "teacher_no_tta_s": 0.6, "student_s": 0.05, "threshold_s": 0.1,
                                "case": "Case_1", "threads": 2, "student_repeats": 3},
                    "report_case": {"id": "Case_1", "flair": "case/flair.nii.gz", "label": "case/seg.nii.gz",
                                    "label_convention": "brats2017", "teacher": "pred/teacher.nii.gz",
                                    "student": "pred/student.nii.gz",
                                    "uncertainty": "pred/spread.npz" if with_uncertainty else None,
                                    "uncertainty_source": "Uncertainty: hand-made.",
                                    **({"student_uncertainty": "pred/distilled.npz"}
                                       if with_student_uncertainty else {})}},
        "evaluate": {"index": 7, "label": "7. evaluate",
                     "summaries": {m: f"evaluation/{m}/summary.json" for m in ("teacher", "student", "threshold")}},
    }  # fmt: skip
    (out / "stages").mkdir()
    for stage, record in records.items():
        (out / "stages" / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": 1.5, **record}))
    (out / "demo.json").write_text(json.dumps({"machine": {"cpu": "Test CPU", "cores usable": 2}, "reused": ["data"],
                                               "budget": "--quick", "data": "phantoms"}))  # fmt: skip
    return out
