"""Labels from the predictor's labels-only path against the full restore, for every committed
real-data package on every real-data test case.

Without probabilities asked for, ``Predictor.segment`` resamples back to 1 mm only the box where
a map can cross its threshold; with them, it resamples the whole brain box and thresholds that.
The two must give the same labels up to voxels whose map lies within float rounding of the
threshold. This counts the differing voxels, and how many of them lie within 1e-5 of a threshold.

    python benchmarks/latency/check_labels_only_path.py --data ../shared/data/brats18

Writes ``labels_only_path.json`` and ``labels_only_path.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REALDATA = HERE.parent / "realdata"
sys.path.insert(0, str(REALDATA))

from run_realdata import TEST_CASES  # noqa: E402 (after the path insert) the split is written once, in the pipeline

THREADS = 2


def compare(predictor, case) -> dict:
    from distill.data.discovery import MODALITIES

    fast = predictor.segment(case.images, case.affine, modalities=MODALITIES)
    full = predictor.segment(case.images, case.affine, modalities=MODALITIES, return_probabilities=True)
    thresholds = np.asarray(predictor.package.thresholds, np.float32).reshape(-1, 1, 1, 1)
    near = np.any(np.abs(full.probabilities - thresholds) < 1e-5, axis=0)
    differ = fast.labels != full.labels
    return {"differing_voxels": int(differ.sum()), "differing_near_threshold": int((differ & near).sum()),
            "foreground_voxels": int((full.labels > 0).sum())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder holding the test cases")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.infer.predictor import Predictor

    found = {files.case_id: files for files in find_cases(args.data)}
    cases = {case_id: load_case(found[case_id], with_labels=False) for case_id in TEST_CASES}
    packages = sorted(path.parent for path in (REALDATA / "packages").glob("*/model.json"))
    results = {}
    for package in packages:
        predictor = Predictor.from_package(package, "onnxruntime", threads=THREADS)
        results[package.name] = {case_id: compare(predictor, case) for case_id, case in cases.items()}
    rows = [r for per_case in results.values() for r in per_case.values()]
    totals = {
        key: sum(r[key] for r in rows) for key in ("differing_voxels", "differing_near_threshold", "foreground_voxels")
    }
    record = {"command": "python benchmarks/latency/check_labels_only_path.py --data BRATS18_DIR", "threads": THREADS,
              "totals": totals, "packages": results}  # fmt: skip
    (HERE / "labels_only_path.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Labels-only path vs full restore (every real-data package x test case)", "",
             f"Command: `{record['command']}`. Differing voxels: {totals['differing_voxels']} of "
             f"{totals['foreground_voxels']:,} foreground voxels over {len(rows)} package-case pairs; "
             f"{totals['differing_near_threshold']} of them lie within 1e-5 of a threshold.", "",
             "| package | " + " | ".join(TEST_CASES) + " |", "|---|" + "---|" * len(TEST_CASES)]  # fmt: skip
    for name, per_case in results.items():
        lines.append(f"| {name} | " + " | ".join(str(per_case[c]["differing_voxels"]) for c in TEST_CASES) + " |")
    (HERE / "labels_only_path.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
