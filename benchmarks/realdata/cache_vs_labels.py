"""How closely a fold's cached teacher maps match the expert labels on its own training cases,
and whether a one-voxel shift along any axis matches better (a misalignment check).

    python benchmarks/realdata/cache_vs_labels.py benchmarks/realdata/work/t2000/protocol/fold_1/cache

Prints per case the Dice of the teacher's maps > 0.5 against the cached expert regions (WT, TC,
ET), their mean, and the best mean over the six one-voxel shifts (value, axis, shift).
"""

import sys

import numpy as np

from distill.cache import TeacherCache


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 2 * (a & b).sum() / total if total else float("nan")


def main() -> None:
    cache = TeacherCache.open(sys.argv[1])
    for case_id in sorted(cache.case_ids):
        case = cache.read_case(case_id)
        teacher, truth = case.probabilities > 0.5, case.regions.astype(bool)
        base = [round(float(dice(teacher[k], truth[k])), 3) for k in range(3)]
        shifted = [(round(float(np.mean([dice(np.roll(teacher[k], step, axis), truth[k]) for k in range(3)])), 3),
                    axis, step) for axis in range(3) for step in (-1, 1)]  # fmt: skip
        print(case_id, base, "mean", round(float(np.mean(base)), 3), "best shift", max(shifted))


if __name__ == "__main__":
    main()
