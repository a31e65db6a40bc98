"""``results.json``, ``RESULTS.md`` and the plots of the real-data benchmark, from its stage records."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")
TEACHER = "teacher_mirror8"


def median_seconds(record: dict, key: str = "total_seconds") -> float:
    return statistics.median(case[key] for case in record["per_case"].values())


def model_rows(p, names: list[str]) -> list[dict]:
    """One row per model: scores, size, latency and training cost."""
    teacher = p.done("teacher")
    rows = []
    for name in ("teacher_mirror8", "teacher_none", *names):
        scores = p.done(f"evaluate_{name}")
        prediction = p.done(f"predict_{name}")
        row = {"model": name, "dice": {r: scores["vs_ground_truth"]["mean"][r]["dice"] for r in REGIONS},
               "hd95_mm": {r: scores["vs_ground_truth"]["mean"][r]["hd95"] for r in REGIONS},
               "mean_dice": scores["vs_ground_truth"]["mean"]["mean_dice"],
               "per_case": scores["vs_ground_truth"]["per_case"],
               "latency_median_s": round(median_seconds(prediction), 3)}  # fmt: skip
        if name.startswith("teacher"):
            row.update(parameters=teacher["parameters_per_member"], members=prediction["folds"],
                       tta=prediction["tta"], macs_128=teacher["macs_128"])  # fmt: skip
        else:
            student = p.done(f"student_{name}")
            row.update(parameters=student["parameters"], macs_128=student["macs_128"], chain=student["chain"],
                       train_seconds=round(sum(link["seconds"] for link in student["links"]), 1),
                       steps_per_second=student["links"][-1]["steps_per_second"],
                       peak_memory_mb=max(link["peak_memory_mb"] for link in student["links"]),
                       model_latency_median_s=round(median_seconds(prediction, "model_seconds"), 3),
                       agreement_with_teacher={r: scores["vs_teacher"]["mean"][r]["dice"] for r in REGIONS},
                       package=p.done(f"export_{name}")["package"])  # fmt: skip
        rows.append(row)
    reference = rows[0]
    for row in rows:
        row["fraction_of_teacher_dice"] = round(row["mean_dice"] / reference["mean_dice"], 3) if reference["mean_dice"] else None
        row["speedup_vs_teacher"] = round(reference["latency_median_s"] / row["latency_median_s"], 1)
    return rows


def ladder_findings(rows: list[dict], sizes: list[int]) -> list[str]:
    """Plain statements: does each distillation step beat the one before it, and the targets."""
    by_name = {row["model"]: row for row in rows}
    teacher = by_name[TEACHER]
    lines = []
    steps = [("a_no_kd", "b_kd", "KD over no KD"), ("b_kd", "c_kd_chain", "assistant chain over direct KD"),
             ("c_kd_chain", "d_kd_chain_graphflow", "graph flow over the chain")]  # fmt: skip
    for size in sizes:
        prefix = f"{size // 1000}k_"
        for before, after, label in steps:
            a, b = by_name[prefix + before], by_name[prefix + after]
            delta = b["mean_dice"] - a["mean_dice"]
            verdict = "helps" if delta > 0.01 else ("hurts" if delta < -0.01 else "makes no difference (|delta| <= 0.01)")
            lines.append(f"- {size // 1000}k, {label}: mean Dice {a['mean_dice']:.3f} -> {b['mean_dice']:.3f} "
                         f"({delta:+.3f}): {verdict}.")  # fmt: skip
        best = max((r for r in rows if r["model"].startswith(prefix)), key=lambda r: r["mean_dice"])
        target = 0.95 if size >= 100_000 else 0.90
        met = "met" if best["fraction_of_teacher_dice"] and best["fraction_of_teacher_dice"] >= target else "NOT met"
        lines.append(f"- Best {size // 1000}k student ({best['model']}): {best['fraction_of_teacher_dice']:.0%} of the "
                     f"teacher's mean Dice {teacher['mean_dice']:.3f} (target {target:.0%}: {met}).")  # fmt: skip
    fastest = max((r for r in rows if not r["model"].startswith("teacher")), key=lambda r: r["mean_dice"])
    met = "met" if fastest["speedup_vs_teacher"] >= 100 else "NOT met"
    lines.append(f"- Best student overall ({fastest['model']}) is {fastest['speedup_vs_teacher']:.0f}x faster per case than "
                 f"the 5-fold x 8-TTA teacher, input NIfTI to label map (target 100x: {met}).")  # fmt: skip
    return lines


def plot(rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(REGIONS)
    for i, region in enumerate(REGIONS):
        ax.bar([x + i * width for x in range(len(rows))], [r["dice"][region] for r in rows], width, label=region)
    ax.set_xticks([x + width for x in range(len(rows))], [r["model"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("Dice vs expert labels (mean of 4 test cases)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "dice_per_region.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        ax.scatter(row["latency_median_s"], row["mean_dice"], marker="s" if row["model"].startswith("teacher") else "o")
        ax.annotate(row["model"], (row["latency_median_s"], row["mean_dice"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds per case, NIfTI in -> label map out (median, log scale)")
    ax.set_ylabel("mean Dice over WT, TC, ET")
    fig.tight_layout()
    fig.savefig(HERE / "dice_vs_latency.png", dpi=110)
    plt.close(fig)
    return ["dice_per_region.png", "dice_vs_latency.png"]


def cross_validation_by_region(per_fold: dict) -> dict:
    """nnU-Net's validation Dice per fold keyed WT/TC/ET (nnU-Net keys regions by label tuples, in the
    dataset's region order, which ``distill data convert`` writes as WT, TC, ET), plus the mean over folds."""
    named = {fold: dict(zip(REGIONS, scores.values())) for fold, scores in per_fold.items()}
    if named:
        named["mean"] = {r: round(sum(f[r] for f in named.values()) / len(named), 4) for r in REGIONS}
    return named


def stage_seconds(p, names: list[str]) -> dict:
    stages = ["split", "convert", "teacher", "cache_full", "cache_oof", *(f"student_{n}" for n in names),
              *(f"export_{n}" for n in names), "predict_teacher_mirror8", "predict_teacher_none",
              *(f"predict_{n}" for n in names)]  # fmt: skip
    return {stage: p.done(stage)["seconds"] for stage in stages}


def write_report(p, names: list[str]) -> None:
    a = p.args
    rows = model_rows(p, names)
    teacher = p.done("teacher")
    seconds = stage_seconds(p, names)
    command = (f"python benchmarks/realdata/run_realdata.py --data BRATS18_DIR --teacher-iterations {a.teacher_iterations} "
               f"{'--teacher-patch ' + ' '.join(map(str, a.teacher_patch)) + ' ' if a.teacher_patch else ''}--steps {a.steps} --patch {a.patch}")  # fmt: skip
    results = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": a.threads},
        "split": p.done("split"),
        "teacher": {key: teacher[key] for key in ("parameters_per_member", "macs_128", "compact_plan", "iterations_per_fold",
                                                   "build_seconds", "checkpoint_sha256", "checkpoints_total_mb")},
        "teacher_cross_validation_dice": cross_validation_by_region(teacher["cross_validation"]),
        "caches": {mode: p.done(f"cache_{mode}") for mode in ("full", "oof")},
        "students": {"steps_per_link": a.steps, "patch": a.patch, "batch": 2, "seed": a.seed, "cache": "oof"},
        "stage_seconds": seconds,
        "models": rows,
        "findings": ladder_findings(rows, list(a.sizes)),
    }  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plots = plot(rows)
    cv = results["teacher_cross_validation_dice"].get("mean")
    cv_mean = " / ".join(f"{cv[g]:.3f}" for g in REGIONS) if cv else ""
    n_folds = len(results["teacher_cross_validation_dice"]) - 1
    table = ["| model | params | GMACs/128³ | Dice WT / TC / ET | mean | HD95 mm WT / TC / ET | agreement w/ teacher WT / TC / ET "
             "| s/case | speed-up | train s |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        agreement = " / ".join(f"{r['agreement_with_teacher'][g]:.3f}" for g in REGIONS) if "agreement_with_teacher" in r else "-"
        hd95 = " / ".join("-" if r["hd95_mm"][g] is None else f"{r['hd95_mm'][g]:.1f}" for g in REGIONS)
        dice = " / ".join(f"{r['dice'][g]:.3f}" for g in REGIONS)
        table.append(f"| {r['model']} | {r['parameters']:,}{' x5' if r['model'].startswith('teacher') else ''} | "
                     f"{r['macs_128'] / 1e9:.2f} | {dice} | "
                     f"{r['mean_dice']:.3f} | {hd95} | {agreement} | {r['latency_median_s']:.2f} | "
                     f"{r['speedup_vs_teacher']:.0f}x | {r.get('train_seconds', '-')} |")  # fmt: skip
    lines = [
        "# Real-data benchmark: BraTS 2018, compact nnU-Net teacher, distilled students",
        "",
        f"Reproduce: `{command}` (BRATS18_DIR: the 14 BraTS 2018 cases; {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {a.threads} threads). Every stage is resumable; numbers below are one run.",
        "",
        f"Split: train {', '.join(c.removeprefix('Brats18_') for c in results['split']['train'])}; "
        f"test {', '.join(c.removeprefix('Brats18_') for c in results['split']['test'])}.",
        "",
        f"Teacher: nnU-Net v2 compact plan ({teacher['compact_plan']['rule']}; features "
        f"{teacher['compact_plan']['features_per_stage']['compact']}, patch {teacher['compact_plan']['patch_size']['compact']} "
        f"instead of nnU-Net's {teacher['compact_plan']['patch_size']['default']}), {teacher['parameters_per_member']:,} "
        f"parameters per fold, {teacher['iterations_per_fold']} iterations per fold by nnUNetTrainer; five checkpoints "
        f"{teacher['checkpoints_total_mb']} MB together (hashes in results.json).",
        *([f"nnU-Net's own cross-validation (each fold on its 2 held-out training cases, 2 mm): Dice WT/TC/ET "
           f"{cv_mean} (mean of {n_folds} folds)."] if cv_mean else []),
        "",
        "Scores on the 4 test cases at their original 1 mm grid against the expert labels (mean over cases; HD95 follows "
        "the BraTS empty-mask convention: 373.13 mm for a region present on one side only). Latency: median seconds per case on this CPU from the NIfTI arrays to "
        "the label map; speed-up relative to the 5-fold x 8-TTA teacher.",
        "",
        *table,
        "",
        "## Findings",
        "",
        *results["findings"],
        "",
        "## Time per stage (seconds)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {value:.0f} |" for stage, value in seconds.items()],
        "",
        *[f"![{name}]({name})" for name in plots],
    ]  # fmt: skip
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
