"""Teacher and packaged students timed side by side on the real-data test cases, in one process.

The pipeline (``run_realdata.py``) times each model in its own stage, minutes apart; on a shared
machine that makes the speed-up ratio drift with whatever else ran. This script loads the
5-fold nnU-Net teacher and every committed student package once, then times them on the same
loaded 1 mm cases in interleaved rounds (the order rotates each round), and reports per-model
medians and the teacher/student ratio.

    python benchmarks/realdata/bench_latency.py --data ../shared/data/brats18 --work WORK

``WORK`` is a pipeline work folder whose ``teacher`` stage is done (its record names the nnU-Net
model folder). The teacher's cost does not depend on its weights: nnU-Net's predictor runs the
same sliding windows and mirrorings whatever they hold. So a teacher rebuilt with the same plan
and fewer iterations (``run_realdata.py --teacher-iterations 1 --until teacher``, ~2 minutes)
times exactly like the trained one; the record says which was used.

Writes ``latency.json`` and ``LATENCY.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_realdata import TEST_CASES  # noqa: E402 (after the path insert) the split is written once, in the pipeline


class TeacherRunner:
    """nnU-Net's own predictor over every fold, as the pipeline's teacher prediction stage runs it."""

    def __init__(self, model_dir: Path, tta: str) -> None:
        from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

        self.teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, tta=tta))

    def __call__(self, case) -> dict[str, float]:
        from distill.data.conventions import get_convention
        from distill.infer.postprocess import enforce_hierarchy

        probabilities, timings = self.teacher.predict_timed(case)
        get_convention("brats2017").from_regions(enforce_hierarchy(probabilities > 0.5))
        return timings


class StudentRunner:
    """A committed package through Distill's predictor on onnxruntime (CPU), as ``distill predict`` runs it."""

    def __init__(self, package: Path, threads: int) -> None:
        from distill.infer.predictor import Predictor

        self.predictor = Predictor.from_package(package, "onnxruntime", threads=threads)

    def __call__(self, case) -> dict[str, float]:
        from distill.data.discovery import MODALITIES

        return self.predictor.segment(case.images, case.affine, modalities=MODALITIES).timings


def load_test_cases(data: Path) -> dict:
    from distill.data.case import load_case
    from distill.data.discovery import find_cases

    found = {files.case_id: files for files in find_cases(data)}
    missing = [case for case in TEST_CASES if case not in found]
    if missing:
        raise SystemExit(f"{data}: test cases missing: {', '.join(missing)}")
    return {case: load_case(found[case], with_labels=False) for case in TEST_CASES}


def timed_rounds(runners: dict, cases: dict, rounds: int) -> dict[str, dict[str, list[dict]]]:
    """``{model: {case: [timings per round]}}``; each round visits every case, models in rotating order."""
    names = list(runners)
    times: dict[str, dict[str, list[dict]]] = {name: {case: [] for case in cases} for name in names}
    for name in names:  # warm-up: first calls pay for allocations and lazy initialisation
        runners[name](next(iter(cases.values())))
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for case_id, case in cases.items():
            for name in order:
                start = time.perf_counter()
                timings = runners[name](case)
                times[name][case_id].append({"total": time.perf_counter() - start, **timings})
    return times


def summarise(times: dict[str, dict[str, list[dict]]], reference: str) -> dict[str, dict]:
    """Median over cases of each case's median over rounds, and the reference's ratio to it."""
    def median_of(name: str, key: str) -> float:
        return statistics.median(statistics.median(t[key] for t in runs) for runs in times[name].values())

    summary = {}
    for name in times:
        row = {key: round(median_of(name, key), 4) for key in ("total", "preprocess", "model", "postprocess")}
        per_case_ratio = [
            statistics.median(r["total"] for r in times[reference][case]) / statistics.median(r["total"] for r in runs)
            for case, runs in times[name].items()
        ]
        row["speed_up"] = round(median_of(reference, "total") / row["total"], 1)
        row["speed_up_per_case"] = [round(ratio, 1) for ratio in per_case_ratio]
        row["model_speed_up"] = round(median_of(reference, "model") / row["model"], 1)
        summary[name] = row
    return summary


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        "# Real-data latency: teacher and students side by side",
        "",
        f"Reproduce: `{record['command']}`",
        "",
        f"{record['machine']}; {record['threads']} threads; {len(record['cases'])} test cases at their 1 mm grid, "
        f"{record['rounds']} interleaved rounds after one warm-up call per model. Per model: the median over cases "
        "of each case's median over rounds, from the loaded arrays to the label map (`total`), and its stages. "
        f"Teacher: {record['teacher']['note']}",
        "",
        "| model | s/case | preprocess s | model s | postprocess s | speed-up | per case | model speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in record["models"].items():
        per_case = " / ".join(f"{ratio:g}" for ratio in row["speed_up_per_case"])
        lines.append(f"| {name} | {row['total']:.3f} | {row['preprocess']:.3f} | {row['model']:.3f} | "
                     f"{row['postprocess']:.3f} "
                     f"| {row['speed_up']:g}x | {per_case} | {row['model_speed_up']:g}x |")  # fmt: skip
    best = min(
        (name for name in record["models"] if not name.startswith("teacher")),
        key=lambda n: record["models"][n]["total"],
    )
    row = record["models"][best]
    verdict = "met" if row["speed_up"] >= 100 else "NOT met"
    lines += ["", f"Fastest student: {best}, {row['speed_up']:g}x faster per case than the 5-fold x 8-TTA teacher "
                  f"(target 100x: {verdict}); {row['model_speed_up']:g}x in the networks alone.", ""]  # fmt: skip
    path.write_text("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder holding the test cases")
    parser.add_argument("--work", type=Path, required=True, help="Pipeline work folder with the teacher stage done")
    parser.add_argument("--packages", type=Path, default=HERE / "packages", help="Folder of student packages")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE)
    return parser.parse_args()


def main() -> None:
    from distill.infer.backends import cpu_name

    args = parse_args()
    torch.set_num_threads(args.threads)
    teacher_record = json.loads((args.work / "stages" / "teacher.json").read_text())
    model_dir = Path(teacher_record["model_dir"])
    runners = {f"teacher_{tta}": TeacherRunner(model_dir, tta) for tta in ("mirror8", "none")}
    packages = sorted(path.parent for path in args.packages.glob("*/model.json"))
    runners.update({package.name: StudentRunner(package, args.threads) for package in packages})
    cases = load_test_cases(args.data)
    times = timed_rounds(runners, cases, args.rounds)
    iterations = teacher_record["iterations_per_fold"]
    record = {
        "command": f"python benchmarks/realdata/bench_latency.py --data BRATS18_DIR --work WORK --rounds {args.rounds}",
        "machine": f"{cpu_name()}, torch {torch.__version__}",
        "threads": args.threads, "rounds": args.rounds, "cases": list(cases),
        "teacher": {"parameters_per_member": teacher_record["parameters_per_member"], "iterations_per_fold": iterations,
                    "compact_plan": teacher_record["compact_plan"],
                    "note": (f"the compact nnU-Net plan of RESULTS.md ({teacher_record['parameters_per_member']:,} "
                             f"parameters per fold, 5 folds), weights from {iterations} nnUNetTrainer "
                             "iteration(s) per fold; "
                             "its cost does not depend on the weights.")},  # fmt: skip
        "models": summarise(times, reference="teacher_mirror8"),
        "onnx_sha256": {name: runner.predictor.package.onnx_sha256 for name, runner in runners.items()
                        if isinstance(runner, StudentRunner)},  # which packages these figures belong to
        "raw_seconds": {name: {case: [round(t["total"], 4) for t in runs] for case, runs in per_case.items()}
                        for name, per_case in times.items()},  # fmt: skip
    }
    (args.out / "latency.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record, args.out / "LATENCY.md")
    print((args.out / "LATENCY.md").read_text())


if __name__ == "__main__":
    main()
