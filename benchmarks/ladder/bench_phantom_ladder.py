"""The distillation ladder on phantoms, at a size this 2-core machine trains in well under an hour.

Teacher: a compact nnU-Net v2 (nnU-Net's own planner, preprocessing and trainer; features
8..64 per stage) trained 5-fold on phantom cases, cached with ``distill teacher-cache``
(5 folds x 8 mirror TTA). Students at ~100k and ~30k parameters, each trained with the same
step budget per link, seed, patch and batch:

  (a) no KD (ground truth only)   (b) KD   (c) KD + one assistant   (d) KD + assistant + graph flow

Scores: per-region Dice of each student on held-out test phantoms (never seen by teacher or
students) against ground truth and against the teacher ensemble's own prediction; training
throughput (steps/s) and peak memory from the student cards. Rerun:

    python benchmarks/ladder/bench_phantom_ladder.py --work /tmp/ladder

Writes ``results.json`` and ``RESULTS.md`` beside this file. Everything is resumable: a
rerun with the same --work skips finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "a_no_kd": dict(kd_weight=0.0, assistants="0"),
    "b_kd": dict(kd_weight=0.7, assistants="0"),
    "c_kd_chain": dict(kd_weight=0.7, assistants="1"),
    "d_kd_chain_graphflow": dict(kd_weight=0.7, assistants="1", graph_flow_weight=1.0),
}


def build_teacher_and_cache(work: Path, args) -> tuple:
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    teacher = build_compact_nnunet(
        CompactTeacherConfig(work_dir=work / "teacher", dataset_id=994, dataset_name="LadderPhantoms",
                             n_cases=args.train_cases, seed=args.seed, phantom_shape=tuple(args.shape),
                             base_features=8, max_features=64, iterations=args.teacher_iterations),
        log_path=work / "teacher_build.log",
    )  # fmt: skip
    start = time.perf_counter()
    cache = run_teacher_cache(TeacherCacheConfig(model_dir=teacher.model_dir, images=teacher.raw_dataset_dir,
                                                 out=work / "cache", progress=False))  # fmt: skip
    return teacher, cache, time.perf_counter() - start


def test_cases(work: Path, args):
    """Held-out phantoms from another seed (never used by teacher or students)."""
    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.data.phantoms import PhantomConfig, write_phantoms

    folder = work / "test_phantoms"
    write_phantoms(folder, n_cases=args.test_cases, seed=args.seed + 1000,
                   config=PhantomConfig(shape=tuple(args.shape)), progress=False)  # fmt: skip
    return [load_case(files) for files in find_cases(folder)]


def region_dice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    from distill.eval.dice import dice

    return [dice(pred[i], truth[i]) for i in range(3)]


def student_regions(run: Path, case) -> np.ndarray:
    from distill.data.preprocess import PreprocessConfig, preprocess, restore_probabilities
    from distill.students import StudentConfig, build_student

    card = json.loads((run / "student.json").read_text())
    model = build_student(StudentConfig.from_dict(card["student"]))
    model.load_state_dict(torch.load(run / "student.pt", weights_only=True))
    model.eval()
    prepared = preprocess(case.images, case.affine, config=PreprocessConfig())
    with torch.inference_mode():
        probs = torch.sigmoid(model(torch.from_numpy(prepared.images[None])))[0].numpy()
    return restore_probabilities(probs, prepared.record) > 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 40))
    parser.add_argument("--train-cases", type=int, default=10)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--teacher-iterations", type=int, default=60)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="Rewrite RESULTS.md from results.json")
    args = parser.parse_args()
    if args.report_only:
        write_markdown(json.loads((HERE / "results.json").read_text()))
        return
    torch.set_num_threads(2)

    from distill.data.conventions import get_convention
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig
    from distill.train import TrainConfig, train_student
    from distill.train.chain import share_first_link

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher_build, cache_result, cache_seconds = build_teacher_and_cache(work, args)
    teacher_seconds = time.perf_counter() - start
    cases = test_cases(work, args)
    convention = get_convention("brats2017")
    truths = {c.case_id: convention.to_regions(c.labels) for c in cases}
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=teacher_build.model_dir))
    teacher_regions = {c.case_id: teacher.predict(c).probabilities > 0.5 for c in cases}
    teacher_dice = np.mean([region_dice(teacher_regions[c.case_id], truths[c.case_id]) for c in cases], axis=0)

    rows = []
    for size in args.sizes:
        for variant, options in VARIANTS.items():
            run = work / "students" / f"{size}_{variant}"
            t0 = time.perf_counter()
            if variant == "d_kd_chain_graphflow":
                share_first_link(work / "students" / f"{size}_c_kd_chain", run)
            result = train_student(TrainConfig(cache=work / "cache", out=run, params=size, steps=args.steps,
                                               patch_size=(args.patch,) * 3, batch_size=2, seed=args.seed, val_cases=0,
                                               progress=False, **options))  # fmt: skip
            card = json.loads(result.card.read_text())
            vs_gt = np.mean([region_dice(student_regions(run, c), truths[c.case_id]) for c in cases], axis=0)
            vs_teacher = np.mean(
                [region_dice(student_regions(run, c), teacher_regions[c.case_id]) for c in cases], axis=0
            )
            rows.append({
                "size": size, "variant": variant, "parameters": result.parameters, "macs_128": result.macs_128,
                "chain": result.chain, "dice_gt": dict(zip(("WT", "TC", "ET"), vs_gt.round(4).tolist())),
                "dice_gt_mean": float(vs_gt.mean()),
                "dice_teacher": dict(zip(("WT", "TC", "ET"), vs_teacher.round(4).tolist())),
                "steps_per_second_final_link": card["chain"][-1]["steps_per_second"],
                "peak_memory_mb": max(link["peak_memory_mb"] for link in card["chain"]),
                "wall_seconds": round(time.perf_counter() - t0, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

    results = {
        "command": f"python benchmarks/ladder/bench_phantom_ladder.py --work WORK --steps {args.steps} "
                   f"--patch {args.patch} "
                   f"--teacher-iterations {args.teacher_iterations} --shape {' '.join(map(str, args.shape))}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__, "threads": 2},
        "teacher": {"parameters_per_member": teacher_build.parameters_per_member, "folds": 5, "tta": "mirror8",
                    "iterations_per_fold": args.teacher_iterations,
                    "build_and_cache_seconds": round(teacher_seconds, 1),
                    "cache_seconds": round(cache_seconds, 1),
                    "dice_gt": dict(zip(("WT", "TC", "ET"), teacher_dice.round(4).tolist())),
                    "dice_gt_mean": float(teacher_dice.mean())},
        "setup": {"train_cases": args.train_cases, "test_cases": args.test_cases, "shape": list(args.shape),
                  "steps_per_link": args.steps, "patch": args.patch, "batch": 2, "seed": args.seed},
        "students": rows,
    }  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)


def findings(results: dict) -> list[str]:
    """Plain statements: does each distillation step beat the one before it."""
    rows = {(r["size"], r["variant"]): r for r in results["students"]}
    teacher = results["teacher"]["dice_gt"]
    lines = [f"- Teacher ensemble on the test phantoms, Dice WT/TC/ET {teacher['WT']:.3f} / {teacher['TC']:.3f} / "
             f"{teacher['ET']:.3f} (mean {results['teacher']['dice_gt_mean']:.3f})."]  # fmt: skip
    steps = [("a_no_kd", "b_kd", "KD over no KD"), ("b_kd", "c_kd_chain", "assistant chain over direct KD"),
             ("c_kd_chain", "d_kd_chain_graphflow", "graph flow over the chain")]  # fmt: skip
    for size in sorted({r["size"] for r in results["students"]}, reverse=True):
        for before, after, label in steps:
            if (size, before) not in rows or (size, after) not in rows:
                continue
            a, b = rows[(size, before)]["dice_gt_mean"], rows[(size, after)]["dice_gt_mean"]
            verdict = "helps" if b - a > 0.01 else ("hurts" if b - a < -0.01 else "no difference (|delta| <= 0.01)")
            lines.append(f"- {size:,}: {label}: mean Dice {a:.3f} -> {b:.3f} ({b - a:+.3f}), {verdict}.")
    return lines


def write_markdown(results: dict) -> None:
    setup, teacher, rows = results["setup"], results["teacher"], results["students"]
    lines = [
        "# Distillation ladder on phantoms",
        "",
        f"Command: `{results['command']}` ({results['machine']['cpus']} CPU cores, "
        f"torch {results['machine']['torch']}, "
        f"{results['machine']['threads']} threads).",
        f"Teacher: compact nnU-Net, {teacher['parameters_per_member']:,} parameters per member, 5 folds x 8 TTA, "
        f"{teacher['iterations_per_fold']} iterations per fold.",
        f"Students: {setup['steps_per_link']} steps per link, batch {setup['batch']}, patch {setup['patch']}³, seed "
        f"{setup['seed']}; {setup['train_cases']} training and {setup['test_cases']} held-out test phantoms of shape "
        f"{tuple(setup['shape'])}.",
        "",
        "| size | variant | params | chain | Dice GT WT/TC/ET | mean | Dice vs teacher WT/TC/ET | steps/s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['size']:,} | {r['variant']} | {r['parameters']:,} | {' > '.join(f'{c:,}' for c in r['chain'])} | "
          f"{' / '.join(f'{v:.3f}' for v in r['dice_gt'].values())} | {r['dice_gt_mean']:.3f} | "
          f"{' / '.join(f'{v:.3f}' for v in r['dice_teacher'].values())} | {r['steps_per_second_final_link']:.2f} | "
          f"{r['peak_memory_mb']:.0f} |" for r in rows],
        "",
        "## Findings",
        "",
        *findings(results),
        *([""] + results["notes"] if results.get("notes") else []),
    ]  # fmt: skip
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
