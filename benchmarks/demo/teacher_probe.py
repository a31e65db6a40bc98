"""How good one fold of the demo's nnU-Net teacher gets for a budget, before spending five.

Trains fold 0 of the demo's compact teacher (``distill.teacher.nnunet_build``, nnU-Net's own
planner and trainer, the demo's widths 8-64 and its 16 training phantoms) for ``--iterations``,
then scores it alone with 8-mirror TTA on the demo's held-out phantoms (seed 1000), beside the
threshold baseline on the same cases: mean Dice per region, both-empty counting 1 as in
``distill evaluate``. One JSON line per probe is appended to ``teacher_probes.jsonl`` beside this
file and ``TEACHER_PROBES.md`` is rewritten from all of them. Run one probe at a time on idle
cores; the seconds are the fold's training alone (planning excluded)::

    python benchmarks/demo/teacher_probe.py --work WORK --name w0_500 --iterations 500
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import find_cases
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.data.preprocess import PreprocessConfig, preprocess, restore_labels
from distill.demo import DATASET_NAME, DEMO_DATASET_ID, DemoConfig
from distill.infer.threshold import threshold_regions
from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig
from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "teacher_probes.jsonl"
CONVENTION = get_convention("brats2017")


def dice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice per region of ``(3, ...)`` boolean maps; both empty counts 1."""
    return [1.0 if not p.any() and not t.any() else float(2 * (p & t).sum() / (p.sum() + t.sum()))
            for p, t in zip(pred, truth)]  # fmt: skip


def teacher_scores(model_dir: Path, held_out: Path) -> list[list[float]]:
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, folds=("fold_0",), tta="mirror8"))
    rows = []
    for files in find_cases(held_out):
        case = load_case(files)
        rows.append(dice(teacher.predict(case).probabilities > 0.5, CONVENTION.to_regions(case.labels) != 0))
    return rows


def threshold_scores(held_out: Path) -> list[list[float]]:
    rows = []
    for files in find_cases(held_out):
        case = load_case(files)
        prepared = preprocess(case.images, case.affine, config=PreprocessConfig(), source=files.case_id)
        labels = restore_labels(CONVENTION.from_regions(threshold_regions(prepared.images, prepared.brain_mask)),
                                prepared.record)  # fmt: skip
        rows.append(dice(CONVENTION.to_regions(labels) != 0, CONVENTION.to_regions(case.labels) != 0))
    return rows


def write_table(records: list[dict], path: Path) -> None:
    lines = ["# The demo teacher: one fold against its budget", "",
             "Written by `benchmarks/demo/teacher_probe.py` (its docstring has the command). Fold 0 of the demo's "
             "compact nnU-Net teacher, trained alone on 2 idle cores, scored alone with 8-mirror TTA on the demo's 4 "
             "held-out phantoms; the threshold baseline on the same cases. Mean Dice per region.", "",
             "| probe | phantoms | iterations | augmentation workers | fold seconds | teacher WT / TC / ET | mean "
             "| threshold mean | run by |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in records:
        wt, tc, et = r["teacher_dice"]
        threshold = f"{r['threshold_mean']:.3f}" if r.get("threshold_mean") is not None else "-"
        lines.append(f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['iterations']} | {r['workers']} | "
                     f"{r['fold_seconds']:.0f} | {wt:.3f} / {tc:.3f} / {et:.3f} | {r['teacher_mean']:.3f} | "
                     f"{threshold} | {r.get('script', 'this script')} |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Scratch folder (one subfolder per probe)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--augmentation-workers", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=DemoConfig.phantom_shape)
    args = parser.parse_args()
    shape, defaults = tuple(args.shape), DemoConfig()
    held_out = args.work / f"held_out_{'x'.join(map(str, shape))}"
    if not held_out.is_dir():
        write_phantoms(held_out, n_cases=defaults.n_test, seed=defaults.seed + 1000, config=PhantomConfig(shape=shape),
                       progress=False)  # fmt: skip
    work = args.work / args.name
    planned = args.work / f"planned_{'x'.join(map(str, shape))}"
    if (planned / "nnUNet_preprocessed").is_dir() and not work.exists():  # the same plan: skip replanning
        for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
            shutil.copytree(planned / sub, work / sub, symlinks=True)
    built = build_compact_nnunet(
        CompactTeacherConfig(work_dir=work, dataset_id=DEMO_DATASET_ID, dataset_name=DATASET_NAME,
                             n_cases=defaults.n_cases, seed=defaults.seed, phantom_shape=shape, base_features=8,
                             max_features=64, iterations=args.iterations, folds=(0,),
                             augmentation_workers=args.augmentation_workers, progress_plot_every_epoch=False),
        log_path=work / "build.log")  # fmt: skip
    if not planned.exists():
        planned.mkdir(parents=True)
        for sub in ("nnUNet_raw", "nnUNet_preprocessed"):
            shutil.copytree(work / sub, planned / sub, symlinks=True)
    torch.set_num_threads(2)
    start = time.perf_counter()
    teacher, threshold = np.asarray(teacher_scores(built.model_dir, held_out)), np.asarray(threshold_scores(held_out))
    record = {"name": args.name, "shape": list(shape), "iterations": args.iterations,
              "workers": args.augmentation_workers, "fold_seconds": round(built.seconds["fold_0"], 1),
              "teacher_dice": [round(float(x), 3) for x in teacher.mean(axis=0)],
              "teacher_mean": round(float(teacher.mean()), 3), "teacher_per_case": teacher.round(3).tolist(),
              "threshold_dice": [round(float(x), 3) for x in threshold.mean(axis=0)],
              "threshold_mean": round(float(threshold.mean()), 3),
              "scoring_seconds": round(time.perf_counter() - start, 1),
              "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    print(json.dumps(record))
    with RECORDS.open("a") as out:
        out.write(json.dumps(record) + "\n")
    records = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    write_table(records, HERE / "TEACHER_PROBES.md")


if __name__ == "__main__":
    main()
