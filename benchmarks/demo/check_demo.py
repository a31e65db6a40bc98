"""Does the default ``distill demo`` show what Distill gains? Run it as a user would and check.

The demo's promise (what a newcomer's first command must show, on the held-out phantoms):

    teacher      mean Dice (WT/TC/ET) at least 0.10 above the training-free threshold baseline
    student      keeps at least 95 % of the teacher's mean Dice
    speed        the student at least 100x faster per case than the 5-fold x 8-TTA teacher
                 (both timed on the same case in the same run, after a warm-up for the student)
    wall clock   the whole run, install excluded, within about 15 minutes on 2 CPU cores

This script runs the real command (``distill demo --out WORK`` plus any demo options given
after ``--``) in a fresh folder, reads what the demo wrote (``evaluation/*/summary.json``,
``stages/*.json``, ``demo.json``) and writes ``results.json`` and ``RESULTS.md`` beside itself.
Nothing else may run on the machine meanwhile: the figures include timings.

    python benchmarks/demo/check_demo.py --work /tmp/demo-check
    python benchmarks/demo/check_demo.py --work /tmp/demo-try --out /tmp/demo-try-results -- --teacher-iterations 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")
TARGETS = {
    "teacher_minus_threshold": 0.10,  # mean Dice, at least
    "student_retention": 0.95,  # student / teacher mean Dice, at least
    "speedup": 100.0,  # teacher 5x8 TTA seconds / student seconds per case, at least
    "wall_seconds": 15 * 60,  # the whole demo, at most
}


def mean_dice(summary_path: Path) -> dict[str, float]:
    """Per-region mean Dice over the held-out cases and their mean, from ``distill evaluate``'s summary."""
    per_region = json.loads(summary_path.read_text())["per_region"]
    scores = {region: float(per_region[region]["dice"]["mean"]) for region in REGIONS}
    scores["mean"] = sum(scores[r] for r in REGIONS) / len(REGIONS)
    return scores


def run_demo(work: Path, demo_args: list[str]) -> float:
    """Run ``distill demo`` in ``work`` (which must not hold an earlier run) and return its wall seconds."""
    if work.exists():
        raise SystemExit(f"{work}: exists; give a fresh folder (a reused demo folder skips its stages)")
    command = [sys.executable, "-m", "distill", "demo", "--out", str(work), *demo_args]
    start = time.perf_counter()
    finished = subprocess.run(command, check=False)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        raise SystemExit(f"distill demo ended with exit code {finished.returncode}")
    return seconds


def checks(work: Path, wall_seconds: float) -> dict:
    """The four figures of the promise, each with its target and whether it was met."""
    scores = {model: mean_dice(work / "evaluation" / model / "summary.json")
              for model in ("teacher", "student", "threshold")}  # fmt: skip
    latency = json.loads((work / "stages" / "predict.json").read_text())["latency"]
    stage_seconds = {}
    for path in sorted((work / "stages").glob("*.json")):
        record = json.loads(path.read_text())
        stage_seconds[record["stage"]] = record["seconds"]
    figures = {
        "teacher_minus_threshold": scores["teacher"]["mean"] - scores["threshold"]["mean"],
        "student_retention": scores["student"]["mean"] / max(scores["teacher"]["mean"], 1e-9),
        "speedup": latency["teacher_tta_s"] / latency["student_s"],
        "wall_seconds": wall_seconds,
    }
    met = {name: (value <= TARGETS[name]) if name == "wall_seconds" else (value >= TARGETS[name])
           for name, value in figures.items()}  # fmt: skip
    demo = json.loads((work / "demo.json").read_text())
    student = json.loads((work / "stages" / "student.json").read_text())
    teacher = json.loads((work / "stages" / "teacher.json").read_text())
    return {
        "figures": {k: round(v, 4) for k, v in figures.items()}, "targets": TARGETS, "met": met,
        "all_met": all(met.values()), "dice": {m: {k: round(v, 4) for k, v in s.items()} for m, s in scores.items()},
        "latency_s": {k: latency[k] for k in ("teacher_tta_s", "teacher_no_tta_s", "student_s", "threshold_s")},
        "stage_seconds": stage_seconds, "config": demo["config"], "budget": demo["budget"], "machine": demo["machine"],
        "teacher": {k: teacher.get(k) for k in ("parameters_per_member", "epochs", "iterations_per_epoch")},
        "student": {k: student.get(k) for k in ("parameters", "recipe", "chain")},
    }  # fmt: skip


def write_results(result: dict, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": command, **result}
    tmp = out / ".results.json.partial"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "results.json")
    f, t, m, d = result["figures"], result["targets"], result["met"], result["dice"]

    def verdict(name: str) -> str:
        return "met" if m[name] else "**missed**"

    lines = [
        "# `distill demo` on its embedded default: what a newcomer's first command shows", "",
        f"Command: `{command}` ({result['beside']}; {result['machine']['cpu']}, "
        f"{result['machine']['cores usable']} cores usable). Demo budget: {result['budget']}.", "",
        "| check | measured | target | |", "|---|---|---|---|",
        f"| teacher minus threshold baseline, mean Dice | {f['teacher_minus_threshold']:+.3f} "
        f"| >= +{t['teacher_minus_threshold']:.2f} | {verdict('teacher_minus_threshold')} |",
        f"| student / teacher mean Dice | {f['student_retention']:.1%} | >= {t['student_retention']:.0%} "
        f"| {verdict('student_retention')} |",
        f"| speed-up per case (teacher 5x8 TTA / student) | {f['speedup']:.0f}x | >= {t['speedup']:.0f}x "
        f"| {verdict('speedup')} |",
        f"| wall clock, whole demo ({result['wall_clock']}) | {f['wall_seconds'] / 60:.1f} min "
        f"| <= {t['wall_seconds'] / 60:.0f} min "
        f"| {verdict('wall_seconds')} |", "",
        "| model | Dice WT | TC | ET | mean | seconds per case |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    seconds = {"teacher": result["latency_s"]["teacher_tta_s"], "student": result["latency_s"]["student_s"],
               "threshold": result["latency_s"]["threshold_s"]}  # fmt: skip
    for model in ("teacher", "student", "threshold"):
        s = d[model]
        lines.append(f"| {model} | {s['WT']:.3f} | {s['TC']:.3f} | {s['ET']:.3f} | {s['mean']:.3f} "
                     f"| {seconds[model]:.3f} |")  # fmt: skip
    lines += ["", "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["stage_seconds"].items()) + ".", ""]
    (out / "RESULTS.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Fresh folder for the demo run")
    parser.add_argument("--out", type=Path, default=HERE, help="Where results.json and RESULTS.md go")
    parser.add_argument("--keep", action="store_true", help="Keep the demo folder (default: removed after)")
    parser.add_argument("--beside", default="nothing else running",
                        help="What else ran on the machine meanwhile, for the record")
    parser.add_argument("--existing", action="store_true",
                        help="Only read a finished demo folder (wall clock: the sum of its stage seconds)")
    parser.add_argument("demo_args", nargs="*", help="Options for distill demo (after --)")
    args = parser.parse_args()
    if args.existing:
        stages = [json.loads(p.read_text())["seconds"] for p in (args.work / "stages").glob("*.json")]
        wall = sum(stages)
    else:
        wall = run_demo(args.work, args.demo_args)
    result = checks(args.work, wall)
    shown = " ".join(["python benchmarks/demo/check_demo.py --work WORK", *(["--", *args.demo_args] if args.demo_args
                                                                              else [])])  # fmt: skip
    result["beside"] = args.beside
    result["wall_clock"] = "sum of the stage times of an earlier run" if args.existing else "measured around the run"
    write_results(result, args.out, shown)
    print(json.dumps({"figures": result["figures"], "met": result["met"]}, indent=2))
    if not (args.keep or args.existing):
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
