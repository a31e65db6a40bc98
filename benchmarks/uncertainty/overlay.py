"""One held-out real case, sliced: expert labels, the head student's labels, the teacher's spread
and the student's distilled map on the teacher's colour scale (issue 15's picture).

Reads the teacher's spread that ``measure.py`` kept in its ``--work`` folder (``WORK/uncertainty``
here, WORK being the protocol's work folder; so run that first)
and runs the head package once on the case (its labels and its map, on the case's grid)::

    python benchmarks/uncertainty/overlay.py --case-dir WORK/protocol/fold_0/held_out/Brats18_TCIA02_606_1 \
        --teacher-spread WORK/uncertainty/teacher/fold0/Brats18_TCIA02_606_1.npz \
        --package WORK/protocol/fold_0/packages/fold0_30k_recipe_uncertainty_seed0 \
        --out benchmarks/uncertainty/heldout/overlay_Brats18_TCIA02_606_1.png

Both maps are shown as the largest standard deviation over WT/TC/ET at each voxel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import MODALITIES, find_cases
from distill.data.nifti import voxel_spacing
from distill.infer.backends import BackendSpec
from distill.infer.predictor import Predictor
from distill.report import figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case-dir", type=Path, required=True, help="One case folder with its expert labels")
    parser.add_argument("--teacher-spread", type=Path, required=True, help="measure.py's teacher map (.npz)")
    parser.add_argument("--package", type=Path, required=True, help="A package with the uncertainty head")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    (files,) = find_cases(args.case_dir, require_labels=True)
    case = load_case(files)
    predictor = Predictor.from_package(args.package, BackendSpec.parse("onnxruntime", threads=args.threads))
    result = predictor.segment(case.images, case.affine, label_convention="brats2017",
                               return_distilled_uncertainty=True)  # fmt: skip
    convention = get_convention("brats2017")
    truth = convention.to_regions(case.labels) != 0
    with np.load(args.teacher_spread) as stored:
        spread = stored["spread"].astype(np.float32)
    if spread.shape[1:] != truth.shape[1:]:
        raise SystemExit(f"{args.teacher_spread}: spread of shape {spread.shape[1:]}, the case is {truth.shape[1:]}")
    maps = {"teacher spread (8 passes)": spread.max(axis=0),
            "student, distilled (1 pass)": result.distilled_uncertainty.max(axis=0)}  # fmt: skip
    panels = {"expert labels": truth, "student labels": convention.to_regions(result.labels) != 0}
    flair = case.images[MODALITIES.index("flair")]
    png = figures.slice_figure(flair, panels, maps, voxel_spacing(case.affine), figures.centre_of_mass(truth[0]),
                               case_id=files.case_id)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
