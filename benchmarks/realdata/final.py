"""The final real-data students: the recipe chosen on the protocol's validation cases, trained from
the 5-fold x 8-TTA teacher's cache of the 10 training cases, scored once on the 4 test cases.

protocol.py chooses the recipe on the held-out cases of nnU-Net's five folds; this script spends
the 4 test cases, which nothing was chosen on, on that one choice and on the label-only student
it must beat, and measures the latency of teacher and students side by side:

  teacher     the five committed folds (trained by nnU-Net's own trainer where one is missing),
              their sha256 and size.
  ensemble    the 5-fold teacher on the test cases at 1 mm, with 8 mirrorings (40 passes) and
              without (5 passes): its label maps, the reference every student is held against, and
              the seconds per case of each.
  threshold   the training-free threshold baseline on the same cases (the floor).
  cache       ``distill teacher-cache``: 5 folds x 8 mirrorings over the 10 training cases at 2 mm.
  students    per size and variant (protocol.VARIANTS on the size's recipe), once per seed: trained
              on the cache exactly as ``--recipe brats-<size>k`` trains (which keeps one of the 10
              cases for the card's validation scores, so 9 are learnt from, as 7 of 8 are in the
              protocol), exported (dropping WT components under 10 ml, WT_MIN_ML), run on the test
              cases (onnxruntime, per-case seconds; one pass and with the 8 mirrorings), scored
              against the experts and against the ensemble.
              The shipped variant's seed SHIP_SEED is exported into ``packages/brats-<size>k``
              beside this file (committed).
  summary     ``final/FINAL.json`` and ``final/FINAL.md``: per-region Dice and HD95, paired
              differences over the 4 cases and the seeds with a two-stage bootstrap interval,
              the retention of the teacher's mean Dice against the issue's goals, HD95 as a
              multiple of the teacher's, latency per case, and the conclusion those numbers give.

Every stage's record is mirrored into ``final/records/`` beside this file (commit it as it lands);
a stage finished before is not run again, so a lost machine costs at most the stage that was
running. Run it alone on the machine: the latency columns are its own timings.

    python benchmarks/realdata/final.py --data ../shared/data/brats18 --work benchmarks/realdata/work/t2000 \\
        --variants gt recipe_dice_kl --ship recipe_dice_kl --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import protocol as pr  # noqa: E402  (recipes per size, variants, record pipeline, scoring helpers)
import run_realdata as rr  # noqa: E402  (split, convert, teacher folds)

FOLDER = HERE / "final"
#: The seed whose student of the shipped variant is packaged, and the seeds and sizes FINAL.md covers
#: whatever one command trains (a ``--seeds 1`` resume must neither repackage nor shrink the report).
SHIP_SEED = 0
#: Every final student's package drops whole-tumour components under 10 ml (``distill export
#: --min-size-ml WT=10``): the one post-processing the protocol's validation cases support,
#: +0.009 [+0.004, +0.013] mean Dice at 100k and +0.005 [+0.002, +0.009] at 30k (protocol/SUMMARY.md)
WT_MIN_ML = 10.0
FINAL_SEEDS = (0, 1)
FINAL_SIZES = (100_000, 30_000)
TEACHER = "ensemble_mirror8"  # the 40-pass teacher: the reference for retention and agreement
TEACHER_FAST = "ensemble_none"  # the same 5 folds without mirroring (5 passes)


class FinalPipeline(pr.ProtocolPipeline):
    """The protocol's pipeline (records mirrored into ``--records``), knowing which work-folder files
    a final stage leaves for later ones, so a stage known only from its committed record runs again
    on a fresh clone when those are missing."""

    def local_outputs(self, stage: str) -> list[Path]:
        if stage == "final_teacher":
            model_dir = rr.teacher_model_dir(self)
            return [model_dir / f"fold_{k}" / "checkpoint_final.pth" for k in range(5)]
        if stage == f"final_{TEACHER}":  # the reference the students' agreement is scored against
            return [final_dir(self) / "predictions" / TEACHER / f"{case}.nii.gz" for case in rr.TEST_CASES]
        return super().local_outputs(stage)


def machine() -> dict:
    """Where a timed stage ran, and how busy the machine was as it began (a 1-minute load average
    above the core count means another job shared the cores)."""
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def final_dir(p: rr.Pipeline) -> Path:
    return p.work / "final"


def student_stage(size: int, variant: str, seed: int) -> str:
    return f"final_{size // 1000}k_{variant}_seed{seed}"


def shipped_package(size: int) -> Path:
    """Where the shipped student of ``size`` is committed (named by its recipe)."""
    return HERE / "packages" / pr.RECIPE_FOR_SIZE[size]


# --------------------------------------------------------------------------- stages


def stage_teacher(p: rr.Pipeline) -> dict:
    """The five folds (restored from the committed assets, or trained), with sha256 and size."""
    from distill.core.hashing import file_sha256

    folds = {f"fold_{k}": rr.train_teacher_fold(p, k) for k in range(5)}
    model_dir = rr.teacher_model_dir(p)
    checkpoints = [model_dir / f"fold_{k}" / "checkpoint_final.pth" for k in range(5)]
    return {"iterations_per_fold": p.args.teacher_iterations,
            "cross_validation": {name: record.get("cross_validation") for name, record in folds.items()},
            "checkpoint_sha256": {f"fold_{k}": file_sha256(path) for k, path in enumerate(checkpoints)},
            "checkpoints_total_mb": round(sum(path.stat().st_size for path in checkpoints) / 2**20, 1)}  # fmt: skip


def stage_ensemble(p: rr.Pipeline, tta: str) -> dict:
    """The 5-fold teacher (nnU-Net's predictor) on every test case: label maps, seconds per case."""
    from distill.data.conventions import get_convention
    from distill.infer.postprocess import enforce_hierarchy
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    torch.set_num_threads(p.args.threads)
    started_on = machine()
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=rr.teacher_model_dir(p), tta=tta))

    def segment(case):
        probabilities, _ = teacher.predict_timed(case)
        return get_convention("brats2017").from_regions(enforce_hierarchy(probabilities > 0.5)), {}

    name = f"ensemble_{tta}"
    seconds = {case: timing["total"] for case, timing in on_test_cases(p, name, segment).items()}
    passes = len(teacher.folds) * (2 ** len(teacher.mirror_axes) if tta == "mirror8" else 1)
    return {"folds": len(teacher.folds), "tta": tta, "passes_per_case": passes, "seconds_per_case": seconds,
            "threads": p.args.threads, "machine": started_on, "vs_ground_truth": score(p, name)}  # fmt: skip


def on_test_cases(p: rr.Pipeline, name: str, segment) -> dict[str, dict[str, float]]:
    """``segment(case) -> (labels, extra timings)`` on every test case, timed from the loaded arrays
    to the label map on their 1 mm grid; the maps go to prediction folder ``name`` for scoring."""
    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti

    out = final_dir(p) / "predictions" / name
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for files in find_cases(test_cases(p)):
        case = load_case(files, with_labels=False)
        start = time.perf_counter()
        labels, extra = segment(case)
        seconds[files.case_id] = {"total": round(time.perf_counter() - start, 3),
                                  **{key: round(value, 3) for key, value in extra.items()}}  # fmt: skip
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    return seconds


def stage_threshold(p: rr.Pipeline) -> dict:
    from distill.infer.threshold import threshold_labels

    on_test_cases(p, "threshold", lambda case: (threshold_labels(case, "brats2017"), {}))
    return {"vs_ground_truth": score(p, "threshold")}


def ensure_cache(p: rr.Pipeline) -> Path:
    """The 5-fold x 8-TTA cache over the 10 training cases (the cache runner resumes a partial one)."""
    from distill.cache import TeacherCache
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    folder = final_dir(p) / "cache"
    try:
        TeacherCache.open(folder)
        return folder
    except Exception:  # absent or unfinished
        pass
    raw = p.work / "nnunet_raw" / f"Dataset{rr.DATASET_ID:03d}_{rr.DATASET_NAME}"
    result = run_teacher_cache(TeacherCacheConfig(model_dir=rr.teacher_model_dir(p), images=raw, out=folder,
                                                  mode="full", target_spacing=(2.0, 2.0, 2.0), progress=False))
    if not result.complete:
        raise SystemExit(f"{folder}: teacher cache incomplete: {result.failed}")
    return folder


def stage_cache(p: rr.Pipeline) -> dict:
    start = time.perf_counter()
    folder = ensure_cache(p)
    stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"cases": list(rr.TRAIN_CASES), "members": [f"fold_{k}" for k in range(5)], "tta": "mirror8",
            "stored_bytes": stored, "seconds_this_run": round(time.perf_counter() - start, 1)}  # fmt: skip


def stage_student(p: rr.Pipeline, size: int, variant: str, seed: int) -> dict:
    """Train one student on the cache, export it, time and score it on the test cases."""
    from distill.export.run import ExportConfig, export_package
    from distill.infer.postprocess import PostprocessConfig
    from distill.train import train_student
    from distill.train.recipes import build_config

    name = student_stage(size, variant, seed).removeprefix("final_")
    run = final_dir(p) / "students" / name
    overrides = {"params": size, "seed": seed, "progress": False, **pr.VARIANTS[variant]}
    if overrides.pop("live_teacher", False):
        overrides.update(teacher_model_dir=str(rr.teacher_model_dir(p)))
    config = build_config(ensure_cache(p), run, pr.RECIPE_FOR_SIZE[size], overrides)
    trained = train_student(config)
    ships = variant == p.args.ship and seed == SHIP_SEED
    package = shipped_package(size) if ships else final_dir(p) / "packages" / name
    postprocess = PostprocessConfig(enforce_hierarchy=True, min_size={"WT": WT_MIN_ML}, min_size_unit="ml")
    exported = export_package(ExportConfig(run_dir=run, out=package, held_out=test_cases(p), max_held_out=1,
                                           postprocess=postprocess, overwrite=True))  # fmt: skip
    started_on = machine()
    seconds = predict_timed(p, package, name)
    # the same network with the teacher's 8 mirrorings: reported beside the one pass, chosen (or
    # not) on the protocol's validation cases, never here
    mirrored = {"seconds_per_case": predict_timed(p, package, f"{name}_mirror8", tta="mirror8"),
                "vs_ground_truth": score(p, f"{name}_mirror8"),
                "vs_teacher": score(p, f"{name}_mirror8", against=TEACHER)}  # fmt: skip
    card = json.loads(trained.card.read_text())
    return {"size": size, "variant": variant, "seed": seed, "recipe": pr.RECIPE_FOR_SIZE[size],
            "overrides": {k: v for k, v in overrides.items() if k not in ("progress", "teacher_model_dir")},
            "parameters": trained.parameters, "macs_128": trained.macs_128, "steps": config.steps,
            "train_seconds": round(sum(link.get("seconds", 0) for link in card["chain"]), 1),
            "package": str(package.relative_to(HERE)) if ships else None, "package_bytes": exported.package_bytes,
            "postprocess": {"enforce_hierarchy": True, "wt_min_ml": WT_MIN_ML},
            "seconds_per_case": seconds, "threads": p.args.threads, "machine": started_on,
            "vs_ground_truth": score(p, name), "vs_teacher": score(p, name, against=TEACHER),
            "mirror8": mirrored}  # fmt: skip


def predict_timed(p: rr.Pipeline, package: Path, name: str, tta: str = "none") -> dict:
    """Per test case: seconds end to end (arrays in, labels on the 1 mm grid out) and of the network
    alone, with onnxruntime on the CPU."""
    from distill.data.discovery import MODALITIES
    from distill.infer.predictor import Predictor

    predictor = Predictor.from_package(package, "onnxruntime", threads=p.args.threads, tta=tta)

    def segment(case):
        result = predictor.segment(case.images, case.affine, modalities=MODALITIES, label_convention="brats2017")
        return result.labels, {"model": result.timings["model"]}

    return on_test_cases(p, name, segment)


def test_cases(p: rr.Pipeline) -> Path:
    return p.work / "split" / "test"


def score(p: rr.Pipeline, name: str, against: str | None = None) -> dict:
    """Scores of prediction folder ``name`` against the experts, or against folder ``against``."""
    reference = test_cases(p) if against is None else final_dir(p) / "predictions" / against
    tag = name if against is None else f"{name}_vs_{against}"
    return pr.evaluate_folder(final_dir(p) / "predictions" / name, reference, final_dir(p) / "evaluation" / tag)


# --------------------------------------------------------------------------- summary


def summarise(p: rr.Pipeline, sizes, variants, seeds, shipped: str) -> dict:
    """Teacher, floor and every student recorded for ``sizes`` x ``variants`` x ``seeds`` on the test
    cases; differences paired over cases and seeds; retention and HD95 against the issue's goals."""
    from distill.eval.paired import paired_difference, retention

    teacher, fast = p.done(f"final_{TEACHER}"), p.done(f"final_{TEACHER_FAST}")
    cases = sorted(teacher["vs_ground_truth"]["per_case"])

    def column(record, metric="mean_dice", side="vs_ground_truth"):
        own = pr.case_scores(record, metric, side)
        return np.asarray([own[c] for c in cases])

    def seeds_of(size, variant):
        """The variant's records, one per seed; its ``+mirror8`` twin reads each record's mirrored scores."""
        name, _, tta = variant.partition("+")
        records = [p.done(student_stage(size, name, s)) for s in seeds]
        return [r[tta] if tta else r for r in records] if all(records) else None

    def matrix(size, variant, metric="mean_dice", side="vs_ground_truth"):
        return np.stack([column(record, metric, side) for record in seeds_of(size, variant)], axis=1)

    def describe(record):
        return {"mean_dice": round(float(column(record).mean()), 4),
                **{f"{r}_dice": round(float(column(record, r).mean()), 4) for r in rr.REGIONS},
                **{f"{r}_hd95": round(float(column(record, f"{r}_hd95").mean()), 2) for r in rr.REGIONS},
                "mean_hd95": round(float(column(record, "mean_hd95").mean()), 2)}  # fmt: skip

    summary = {"cases": cases, "seeds": list(seeds), "shipped": shipped, "teacher": describe(teacher),
               "teacher_passes": teacher["passes_per_case"], "sizes": {}}  # fmt: skip
    if fast:
        summary["teacher_no_tta"] = describe(fast)
    floor = p.done("final_threshold")
    if floor:
        summary["threshold"] = {**describe(floor), "teacher_minus_threshold": paired_difference(
            column(teacher), column(floor)).to_dict()}  # fmt: skip
    teacher_seconds = float(np.median(list(teacher["seconds_per_case"].values())))
    latency = {"teacher_seconds": round(teacher_seconds, 2)}
    if fast:
        latency["teacher_no_tta_seconds"] = round(float(np.median(list(fast["seconds_per_case"].values()))), 2)
    timed = [teacher, fast] + [p.done(student_stage(size, v, s)) for size in sizes for v in variants for s in seeds]
    latency["machines"] = sorted({json.dumps({k: r["machine"][k] for k in ("cpu", "cpu_count")})
                                  for r in timed if r and "machine" in r})  # fmt: skip
    latency["busiest_load_average"] = max((r["machine"]["load_average_1min"] for r in timed if r and "machine" in r),
                                          default=None)  # fmt: skip
    summary["latency"] = latency
    repeat = np.repeat(column(teacher)[:, None], len(seeds), axis=1)
    for size in sizes:
        present = [v for v in variants if seeds_of(size, v)]
        if pr.BASELINE not in present:
            continue
        present += [f"{v}+mirror8" for v in present if all("mirror8" in r for r in seeds_of(size, v))]
        entry = {"teacher_minus_gt": paired_difference(repeat, matrix(size, pr.BASELINE)).to_dict(), "variants": {}}
        for variant in present:
            records, trained = seeds_of(size, variant), seeds_of(size, variant.partition("+")[0])
            own = matrix(size, variant)
            totals = [c["total"] for r in records for c in r["seconds_per_case"].values()]
            models = [c["model"] for r in records for c in r["seconds_per_case"].values()]
            entry["variants"][variant] = {
                "parameters": trained[0]["parameters"], "package_bytes": trained[0]["package_bytes"],
                "mean_dice": round(float(own.mean()), 4),
                **{f"{r}_dice": round(float(matrix(size, variant, r).mean()), 4) for r in rr.REGIONS},
                **{f"{r}_hd95": round(float(matrix(size, variant, f"{r}_hd95").mean()), 2) for r in rr.REGIONS},
                "mean_hd95": round(float(matrix(size, variant, "mean_hd95").mean()), 2),
                "teacher_agreement": round(float(matrix(size, variant, side="vs_teacher").mean()), 4),
                "minus_gt": None if variant == pr.BASELINE
                else paired_difference(own, matrix(size, pr.BASELINE)).to_dict(),
                "retention_of_teacher": None if variant.partition("+")[0] in pr.LABEL_ONLY
                else pr.retention_against_goal(retention(own, column(teacher)), size),
                "hd95_ratio_to_teacher": pr.hd95_against_goal(retention(matrix(size, variant, "mean_hd95"),
                                                                        column(teacher, "mean_hd95"))),
                "seconds_per_case": round(float(np.median(totals)), 3),
                "model_seconds_per_case": round(float(np.median(models)), 3),
                "speedup_over_teacher": round(teacher_seconds / float(np.median(totals)), 1),
            }  # fmt: skip
        summary["sizes"][str(size)] = entry
    summary["conclusion"] = conclusion(summary)
    return summary


def conclusion(summary: dict) -> list[str]:
    """One plain sentence per size about the shipped student, read off the intervals."""
    lines = []
    for size, entry in summary["sizes"].items():
        shipped = entry["variants"].get(summary["shipped"])
        if shipped is None:
            continue
        kept, over, hd = shipped["retention_of_teacher"], shipped["minus_gt"], shipped["hd95_ratio_to_teacher"]
        verdict = {"yes": "meets", "no": "misses", "not decided": "cannot yet be said to meet"}[kept["goal_reached"]]
        gain = ("beats the label-only student" if over["low"] > 0 else
                "is worse than the label-only student" if over["high"] < 0 else
                "is not distinguishable from the label-only student")  # fmt: skip
        seeds = ", ".join(map(str, summary["seeds"]))
        lines.append(f"{int(size) // 1000}k: the shipped recipe ({summary['shipped']}, seeds {seeds} pooled) keeps "
                     f"{kept['mean']:.1%} "
                     f"[{kept['low']:.1%}, {kept['high']:.1%}] of the teacher's mean Dice and {verdict} the "
                     f"{kept['goal']:.0%} goal; it {gain} ({interval(over)}); its HD95 is {hd['mean']:.2f}x "
                     f"the teacher's (goal <= {hd['goal']}: {hd['goal_reached']}); per case it runs "
                     f"{shipped['speedup_over_teacher']:.0f}x faster than the {summary['teacher_passes']}-pass "
                     f"teacher{fast_ratio(summary, shipped)}.")
    return lines


def latency_provenance(latency: dict) -> str:
    """Whether the latency rows are side by side: one machine, idle when each timed stage began."""
    machines = [json.loads(m) for m in latency.get("machines", [])]
    if not machines:
        return "Where these were timed is not recorded."
    where = "; ".join(f"{m['cpu']}, {m['cpu_count']} cores" for m in machines)
    busiest = latency.get("busiest_load_average")
    load = "" if busiest is None else f"; highest 1-minute load average as a timed stage began: {busiest:.1f}"
    if len(machines) == 1:
        return f"Every row timed on one machine ({where}{load})."
    return f"Timed on {len(machines)} different machines ({where}{load}): ratios across them are not side by side."


def fast_ratio(summary: dict, student: dict) -> str:
    """`` and 12x faster than its 5-pass version`` where the teacher was also timed without mirroring."""
    fast = summary["latency"].get("teacher_no_tta_seconds")
    return "" if fast is None else f" and {fast / student['seconds_per_case']:.0f}x faster than its 5-pass version"


def interval(difference: dict) -> str:
    """``+0.012 [-0.030, +0.051]``."""
    return f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"


def write_summary(summary: dict, folder: Path) -> None:
    """``FINAL.json`` and ``FINAL.md`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FINAL.json").write_text(json.dumps(summary, indent=2) + "\n")
    t, lat = summary["teacher"], summary["latency"]
    lines = ["# Final students on the 4 test cases", "",
             f"Cases: {', '.join(summary['cases'])}; seeds {summary['seeds']}. Mean Dice over WT/TC/ET against the "
             "expert labels at 1 mm; differences paired over cases and seeds with a 95 % two-stage bootstrap "
             f"interval. Teacher: 5 nnU-Net folds x 8 mirrorings ({summary['teacher_passes']} passes).", "",
             "## Conclusion", "", *[f"- {line}" for line in summary["conclusion"]], "",
             "## Scores", "",
             "| model | mean Dice | WT | TC | ET | HD95 WT | TC | ET | mean HD95 (mm) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def row(name, s):
        return (f"| {name} | {s['mean_dice']:.3f} | {s['WT_dice']:.3f} | {s['TC_dice']:.3f} | {s['ET_dice']:.3f} "
                f"| {s['WT_hd95']:.1f} | {s['TC_hd95']:.1f} | {s['ET_hd95']:.1f} | {s['mean_hd95']:.1f} |")

    lines.append(row(f"teacher ({summary['teacher_passes']} passes)", t))
    if "teacher_no_tta" in summary:
        lines.append(row("teacher, no mirroring (5 passes)", summary["teacher_no_tta"]))
    if "threshold" in summary:
        lines.append(row("threshold baseline", summary["threshold"]))
    for size, entry in summary["sizes"].items():
        for variant, v in entry["variants"].items():
            lines.append(row(f"{int(size) // 1000}k {variant}", v))
    lines += ["", "## Distillation against its goals", "",
              "| size | variant | minus label-only [95 % CI] | retention of the teacher [95 % CI] (goal) "
              "| HD95 multiple of the teacher's [95 % CI] (goal <= 1.2) | agreement with the teacher (Dice) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for size, entry in summary["sizes"].items():
        lines.append(f"| {int(size) // 1000}k | teacher | {interval(entry['teacher_minus_gt'])} | - | - | - |")
        for variant, v in entry["variants"].items():
            m, r, h = v["minus_gt"], v["retention_of_teacher"], v["hd95_ratio_to_teacher"]
            difference = "-" if m is None else interval(m)
            kept = "-" if r is None else (f"{r['mean']:.1%} [{r['low']:.1%}, {r['high']:.1%}] "
                                          f"({r['goal']:.0%}: {r['goal_reached']})")  # fmt: skip
            lines.append(f"| {int(size) // 1000}k | {variant} | {difference} | {kept} "
                         f"| {h['mean']:.2f}x [{h['low']:.2f}, {h['high']:.2f}] ({h['goal_reached']}) "
                         f"| {v['teacher_agreement']:.3f} |")
    lines += ["", "## Latency per case (median over the test cases and seeds, CPU)", "", latency_provenance(lat), "",
              "| model | parameters | package | seconds per case | network alone | speed-up over the teacher |",
              "|---|---|---|---|---|---|",
              f"| teacher ({summary['teacher_passes']} passes, nnU-Net's predictor) | - | - "
              f"| {lat['teacher_seconds']:.1f} | - | 1x |"]  # fmt: skip
    if "teacher_no_tta_seconds" in lat:
        lines.append(f"| teacher, no mirroring (5 passes) | - | - | {lat['teacher_no_tta_seconds']:.1f} | - "
                     f"| {lat['teacher_seconds'] / lat['teacher_no_tta_seconds']:.1f}x |")
    for size, entry in summary["sizes"].items():
        for variant, v in entry["variants"].items():
            lines.append(f"| {int(size) // 1000}k {variant} (onnxruntime) | {v['parameters']:,} "
                         f"| {v['package_bytes'] / 1024:.0f} KiB | {v['seconds_per_case']:.2f} "
                         f"| {v['model_seconds_per_case']:.2f} | {v['speedup_over_teacher']:.0f}x |")
    (folder / "FINAL.md").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder holding the 14 cases")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="Working folder (resumed; not committed)")
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000), choices=sorted(pr.RECIPE_FOR_SIZE))
    parser.add_argument("--variants", nargs="+", default=("gt", "recipe_dice_kl"), choices=sorted(pr.VARIANTS))
    parser.add_argument("--ship", default="recipe_dice_kl", choices=sorted(pr.VARIANTS),
                        help="The variant chosen on the protocol's validation cases; its first seed is packaged")
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1))
    parser.add_argument("--teacher-iterations", type=int, default=2000)
    parser.add_argument("--teacher-augmentation-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true", help="Only rebuild FINAL.md from the records")
    parser.add_argument("--records", type=Path, default=FOLDER / "records",
                        help="Where stage records are mirrored (default: final/records beside this file, committed)")
    args = parser.parse_args(argv)
    if args.ship not in args.variants or pr.BASELINE not in args.variants:
        parser.error(f"--variants must hold {pr.BASELINE} and the shipped variant {args.ship}")
    if args.ship in pr.LABEL_ONLY:
        parser.error(f"--ship {args.ship} learns from the labels alone: ship a distilled variant")
    args.teacher_patch, args.teacher_base_features, args.teacher_max_features = None, 8, 64
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    p = FinalPipeline(args=args, work=args.work.resolve())
    p.work.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        p.run("split", lambda: rr.stage_split(p))
        p.run("convert", lambda: rr.stage_convert(p))
        p.run("final_teacher", lambda: stage_teacher(p))
        for tta in ("mirror8", "none"):
            p.run(f"final_ensemble_{tta}", lambda tta=tta: stage_ensemble(p, tta))
        p.run("final_threshold", lambda: stage_threshold(p))
        p.run("final_cache", lambda: stage_cache(p))
        for seed in args.seeds:
            for size in args.sizes:
                for variant in args.variants:
                    p.run(student_stage(size, variant, seed), lambda a=(size, variant, seed): stage_student(p, *a))
    if p.done(f"final_{TEACHER}"):
        summary = summarise(p, FINAL_SIZES, args.variants, FINAL_SEEDS, args.ship)
        write_summary(summary, args.records.parent)
        print("\n".join(summary["conclusion"]))


if __name__ == "__main__":
    main()
