"""Why distillation hurt the small students: their confidence, and where the teacher contradicts the labels.

Reads a finished run of ``run_realdata.py`` (its work folder) and the BraTS 2018 cases, and writes
``confidence.json`` and ``CONFIDENCE.md`` beside this file:

* every exported student (the committed packages and the work folder's replicates and
  alternatives) on one test case: the largest probability per region and how many voxels
  pass the package's threshold;
* the last logged KD loss of every student's final link;
* the teacher caches (out-of-fold and full): per training case, the largest cached teacher
  probability per region, next to the expert ET voxel count at 1 mm.

    python benchmarks/realdata/diagnose_confidence.py --data ../shared/data/brats18
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")


def student_confidence(packages: list[Path], case) -> dict[str, dict]:
    from distill.data.discovery import MODALITIES
    from distill.infer.predictor import Predictor

    out = {}
    for package in packages:
        predictor = Predictor.from_package(package, "onnxruntime", threads=2)
        result = predictor.segment(case.images, case.affine, modalities=MODALITIES, return_probabilities=True)
        flat = result.probabilities.reshape(3, -1)
        thresholds = np.asarray(predictor.package.thresholds).reshape(3, 1)
        out[package.name] = {"max_probability": dict(zip(REGIONS, np.round(flat.max(axis=1), 3).tolist())),
                             "voxels_over_threshold": dict(zip(REGIONS,
                                                               (flat > thresholds).sum(axis=1).tolist()))}  # fmt: skip
    return out


def final_kd_loss(students: Path) -> dict[str, float | None]:
    """The last ``kd/raw`` of each run's final link (None without KD)."""
    out = {}
    for run in sorted(p for p in students.iterdir() if (p / "links").is_dir()):
        final = sorted((run / "links").glob("link*"), key=lambda p: int(p.name[4:].split("_")[0]))[-1]
        rows = list(csv.DictReader(open(final / "log.csv")))
        value = rows[-1].get("kd/raw") if rows else None
        out[run.name] = round(float(value), 4) if value not in (None, "") else None
    return out


def teacher_extremes(cache_dir: Path, data: Path) -> dict[str, dict]:
    import nibabel as nib

    from distill.cache import TeacherCache

    cache = TeacherCache.open(cache_dir)
    out = {}
    for case_id in cache.case_ids:
        probabilities = cache.read_case(case_id).probabilities
        seg = next((data / case_id).glob("*_seg.nii*"))
        expert_et = int(np.count_nonzero(np.asarray(nib.load(str(seg)).dataobj) == 4))  # BraTS 2018: 4 = ET
        out[case_id] = {"max_probability": dict(zip(REGIONS,
                                                    np.round(probabilities.reshape(3, -1).max(axis=1), 3).tolist())),
                        "expert_et_voxels_1mm": expert_et}  # fmt: skip
    return out


def per_region(values: dict, spec: str) -> str:
    return " / ".join(format(values[r], spec) for r in REGIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="run_realdata.py's work folder")
    parser.add_argument("--case", default="Brats18_TCIA01_378_1", help="test case to score the students on")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from distill.data.case import load_case
    from distill.data.discovery import find_cases

    case = load_case(next(f for f in find_cases(args.data) if f.case_id == args.case), with_labels=False)
    packages = sorted((HERE / "packages").iterdir()) + sorted((args.work / "packages").iterdir())
    results = {
        "command": "python benchmarks/realdata/diagnose_confidence.py --data BRATS18_DIR",
        "students_on": args.case,
        "students": student_confidence(packages, case),
        "final_link_kd_loss": final_kd_loss(args.work / "students"),
        "teacher_cache": {mode: teacher_extremes(args.work / f"cache_{mode}", args.data) for mode in ("oof", "full")},
    }
    (HERE / "confidence.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Student confidence and teacher contradictions (real-data run)", "",
             f"Command: `{results['command']}`. Students on test case {args.case} (original 1 mm grid).", "",
             "| student | largest probability WT / TC / ET | voxels over threshold WT / TC / ET | final-link KD loss |",
             "|---|---|---|---|"]  # fmt: skip
    for name, entry in results["students"].items():
        kd = results["final_link_kd_loss"].get(name)
        lines.append(f"| {name} | {per_region(entry['max_probability'], '.3f')} | "
                     f"{per_region(entry['voxels_over_threshold'], 'd')} | {'-' if kd is None else kd} |")  # fmt: skip
    lines += ["", "Teacher caches, per training case: largest cached probability WT / TC / ET (2 mm grid), and the "
              "expert ET voxels at 1 mm.", "", "| case | out-of-fold | full | expert ET voxels |",
              "|---|---|---|---|"]  # fmt: skip
    for case_id, oof in results["teacher_cache"]["oof"].items():
        full = results["teacher_cache"]["full"][case_id]
        lines.append(f"| {case_id} | {per_region(oof['max_probability'], '.2f')} | "
                     f"{per_region(full['max_probability'], '.2f')} | {oof['expert_et_voxels_1mm']} |")  # fmt: skip
    (HERE / "CONFIDENCE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
