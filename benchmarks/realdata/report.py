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


def variant_and_seed(name: str, first_seed: int) -> tuple[str, int]:
    """``100k_b_kd_seed1`` -> (``100k_b_kd``, 1); a name without a suffix is the first seed's."""
    variant, _, seed = name.partition("_seed")
    return variant, int(seed) if seed else first_seed


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
               "latency_median_s": round(median_seconds(prediction), 3),
               "model_latency_median_s": round(median_seconds(prediction, "model_seconds"), 3)}  # fmt: skip
        if name.startswith("teacher"):
            row.update(parameters=teacher["parameters_per_member"], members=prediction["folds"],
                       tta=prediction["tta"], macs_128=teacher["macs_128"])  # fmt: skip
        else:
            student = p.done(f"student_{name}")
            variant, seed = variant_and_seed(name, p.args.seeds[0])
            row.update(variant=variant, seed=seed, parameters=student["parameters"], macs_128=student["macs_128"],
                       chain=student["chain"],
                       train_seconds=round(sum(link["seconds"] for link in student["links"]), 1),
                       steps_per_second=student["links"][-1]["steps_per_second"],
                       peak_memory_mb=max(link["peak_memory_mb"] for link in student["links"]),
                       agreement_with_teacher={r: scores["vs_teacher"]["mean"][r]["dice"] for r in REGIONS},
                       package=p.done(f"export_{name}")["package"])  # fmt: skip
        rows.append(row)
    reference = rows[0]
    for row in rows:
        row["fraction_of_teacher_dice"] = (
            round(row["mean_dice"] / reference["mean_dice"], 3) if reference["mean_dice"] else None
        )
        row["speedup_vs_teacher"] = round(reference["latency_median_s"] / row["latency_median_s"], 1)
        row["model_speedup_vs_teacher"] = round(reference["model_latency_median_s"] / row["model_latency_median_s"], 1)
    return rows


def is_first_seed_student(row: dict) -> bool:
    """A student of the first seed (ladder students of that seed are the packaged ones)."""
    return row.get("variant") == row["model"]


def ladder_variant(name: str, ladder: list[str]) -> bool:
    return name.split("_", 1)[1] in ladder


def seed_summary(rows: list[dict]) -> dict[str, dict]:
    """Per student variant: mean Dice of each seed, and the mean over seeds (overall and per region)."""
    summary: dict[str, dict] = {}
    for row in rows:
        if "variant" in row:
            summary.setdefault(row["variant"], {"seeds": {}, "regions": []})
            summary[row["variant"]]["seeds"][row["seed"]] = row["mean_dice"]
            summary[row["variant"]]["regions"].append(row["dice"])
    for entry in summary.values():
        regions = entry.pop("regions")
        entry["dice"] = {r: round(statistics.mean(d[r] for d in regions), 4) for r in REGIONS}
        entry["mean_dice"] = round(statistics.mean(entry["seeds"].values()), 4)
    return summary


def step_verdict(deltas: list[float]) -> str:
    """A step helps (hurts) only if the mean gain is over 0.01 and every seed moves the same way."""
    mean = statistics.mean(deltas)
    if mean > 0.01 and all(d > 0 for d in deltas):
        return "helps"
    if mean < -0.01 and all(d < 0 for d in deltas):
        return "hurts"
    if abs(mean) <= 0.01:
        return "makes no difference (|mean delta| <= 0.01)"
    return "no consistent effect (the seeds disagree in sign)"


def extra_finding(summary: dict[str, dict], prefix: str, extra: str) -> str:
    """An alternative to direct KD (first seed only) against no KD and KD of the same seed."""
    seed = min(summary[prefix + extra]["seeds"])
    value = summary[prefix + extra]["seeds"][seed]
    no_kd, kd = summary[prefix + "a_no_kd"]["seeds"][seed], summary[prefix + "b_kd"]["seeds"][seed]
    return (f"- {prefix[:-1]}, tried instead of KD: {extra}: mean Dice {value:.3f} (seed {seed}; no KD {no_kd:.3f}, "
            f"KD {kd:.3f}; {value - no_kd:+.3f} over no KD).")


def ladder_findings(rows: list[dict], sizes: list[int], summary: dict[str, dict], ladder: list[str],
                    extras: list[str]) -> list[str]:
    """Plain statements: does each distillation step beat the one before it (over every seed), and the targets."""
    teacher = next(row for row in rows if row["model"] == TEACHER)
    lines = []
    steps = [("a_no_kd", "b_kd", "KD over no KD"), ("b_kd", "c_kd_chain", "assistant chain over direct KD"),
             ("c_kd_chain", "d_kd_chain_graphflow", "graph flow over the chain")]  # fmt: skip
    for size in sizes:
        prefix = f"{size // 1000}k_"
        for before, after, label in steps:
            a, b = summary[prefix + before], summary[prefix + after]
            seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
            deltas = [b["seeds"][s] - a["seeds"][s] for s in seeds]
            per_seed = ", ".join(f"seed {s} {d:+.3f}" for s, d in zip(seeds, deltas))
            lines.append(f"- {size // 1000}k, {label}: mean Dice {a['mean_dice']:.3f} -> {b['mean_dice']:.3f} "
                         f"({statistics.mean(deltas):+.3f}; {per_seed}): {step_verdict(deltas)}.")  # fmt: skip
        for extra in extras:
            lines.append(extra_finding(summary, prefix, extra))
        best = max((v for v in summary if v.startswith(prefix) and ladder_variant(v, ladder)),
                   key=lambda v: summary[v]["mean_dice"])  # fmt: skip
        fraction = summary[best]["mean_dice"] / teacher["mean_dice"]
        target = 0.95 if size >= 100_000 else 0.90
        lines.append(f"- Best {size // 1000}k variant ({best}, mean over seeds {summary[best]['mean_dice']:.3f}): "
                     f"{fraction:.0%} of the teacher's mean Dice {teacher['mean_dice']:.3f} "
                     f"(target {target:.0%}: {'met' if fraction >= target else 'NOT met'}).")  # fmt: skip
    packaged = [r for r in rows if is_first_seed_student(r) and ladder_variant(r["model"], ladder)]
    fastest = max(packaged, key=lambda r: r["mean_dice"])
    met = "met" if fastest["speedup_vs_teacher"] >= 100 else "NOT met"
    lines.append(f"- Best packaged student ({fastest['model']}) is {fastest['speedup_vs_teacher']:.0f}x "
                 f"faster per case than the 5-fold x 8-TTA teacher, input arrays to label map (target 100x: {met}); "
                 f"{fastest['model_speedup_vs_teacher']:.0f}x counting the networks' forward passes only "
                 f"({fastest['model_latency_median_s']:.3f} s vs {teacher['model_latency_median_s']:.2f} s), "
                 "timed in the pipeline's own stages.")  # fmt: skip
    lines += side_by_side_finding(fastest["model"], HERE / fastest["package"])
    return lines


def side_by_side_finding(student: str, package: Path) -> list[str]:
    """The speed-up from ``bench_latency.py`` (teacher and students in one process), when it has
    run on this very package (a rerun of the pipeline makes new packages that it did not time)."""
    from distill.package import ModelPackage

    path = HERE / "latency.json"
    if not path.is_file():
        return []
    latency = json.loads(path.read_text())
    row = latency["models"].get(student)
    if row is None or latency.get("onnx_sha256", {}).get(student) != ModelPackage.open(package).onnx_sha256:
        return []
    met = "met" if row["speed_up"] >= 100 else "NOT met"
    return [f"- Side by side in one process with the current predictor (`LATENCY.md`): {student} is "
            f"{row['speed_up']:.0f}x faster per case than the 5-fold x 8-TTA teacher (target 100x: {met}); "
            f"{row['model_speed_up']:.0f}x in the networks alone."]  # fmt: skip


def plot(rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(REGIONS)
    for i, region in enumerate(REGIONS):
        ax.bar([x + i * width for x in range(len(rows))], [r["dice"][region] for r in rows], width, label=region)
    ax.set_xticks([x + width for x in range(len(rows))], [r["model"] for r in rows], rotation=35, ha="right",
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("Dice vs expert labels\n(mean of 4 test cases; students: seed 0)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "dice_per_region.png", dpi=110)
    plt.close(fig)

    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, row in enumerate(rows):
        colour, marker = f"C{i % 10}", "s" if row["model"].startswith("teacher") else "o"
        whole, model = row["latency_median_s"], row["model_latency_median_s"]
        ax.plot([model, whole], [row["mean_dice"]] * 2, color=colour, linewidth=0.8, alpha=0.6)
        ax.scatter(whole, row["mean_dice"], marker=marker, color=colour)
        ax.scatter(model, row["mean_dice"], marker=marker, facecolors="none", edgecolors=colour)
        ax.annotate(row["model"], (whole, row["mean_dice"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("CPU seconds per case (median, log scale): filled = 1 mm arrays -> label map, "
                  "hollow = forward passes only")  # fmt: skip
    ax.xaxis.label.set_fontsize(8)
    ax.set_ylabel("mean Dice over WT, TC, ET (4 test cases)")
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


def portable_cache_record(record: dict) -> dict:
    """A cache stage record with its folder relative to this script's folder (no machine paths)."""
    return {**record, "cache_dir": os.path.relpath(record["cache_dir"], HERE)}


def stage_seconds(p, names: list[str]) -> dict:
    stages = ["split", "convert", "teacher", "cache_full", "cache_oof", *(f"student_{n}" for n in names),
              *(f"export_{n}" for n in names), "predict_teacher_mirror8", "predict_teacher_none",
              *(f"predict_{n}" for n in names), "evaluate_teacher_mirror8", "evaluate_teacher_none",
              *(f"evaluate_{n}" for n in names)]  # fmt: skip
    return {stage: p.done(stage)["seconds"] for stage in stages}


def grouped_seconds(seconds: dict, teacher: dict, seeds, ladder: list[str]) -> list[tuple[str, float]]:
    """Wall time by group of stages (every stage's own time is in results.json), teacher folds apart."""
    def total(keep) -> float:
        return sum(value for stage, value in seconds.items() if keep(stage))

    def is_ladder(stage: str) -> bool:
        return stage.removeprefix("student_").split("_seed")[0].split("_", 1)[1] in ladder

    build = teacher["build_seconds"]
    groups = [("split + convert to 2 mm", seconds["split"] + seconds["convert"]),
              ("teacher: nnU-Net plan and preprocess", build["plan_and_preprocess"])]  # fmt: skip
    groups += [(f"teacher: {fold.replace('_', ' ')} ({teacher['iterations_per_fold']} iterations + validation)", value)
               for fold, value in build.items() if fold.startswith("fold_")]  # fmt: skip
    groups += [("teacher cache, full (5 x 8 TTA)", seconds["cache_full"]),
               ("teacher cache, out-of-fold", seconds["cache_oof"])]  # fmt: skip
    for seed in seeds:
        tag = "" if seed == seeds[0] else f"_seed{seed}"
        groups.append((f"ladder students, seed {seed} (8 runs)", total(
            lambda st, tag=tag: st.startswith("student_") and is_ladder(st)
            and (st.endswith(tag) if tag else "_seed" not in st))))  # fmt: skip
    groups.append(("KD alternatives (4 runs)", total(lambda st: st.startswith("student_") and not is_ladder(st))))
    groups.append(("export (parity gate on a real 1 mm case)", total(lambda st: st.startswith("export_"))))
    groups.append(("teacher predictions at 1 mm (mirror8, none)",
                   seconds["predict_teacher_mirror8"] + seconds["predict_teacher_none"]))  # fmt: skip
    groups.append(("student predictions at 1 mm", total(lambda st: st.startswith("predict_") and "teacher" not in st)))
    groups.append(("evaluation (vs experts and vs teacher, HD95 at 1 mm)",
                   total(lambda st: st.startswith("evaluate_"))))  # fmt: skip
    groups.append(("total", sum(value for _, value in groups)))
    return groups


def seed_table(summary: dict[str, dict], seeds) -> list[str]:
    lines = [f"| variant | {' | '.join(f'seed {s}' for s in seeds)} | mean | mean Dice WT / TC / ET |",
             "|---|" + "---|" * (len(seeds) + 2)]  # fmt: skip
    for variant, entry in summary.items():
        per_seed = " | ".join(f"{entry['seeds'][s]:.3f}" if s in entry["seeds"] else "-" for s in seeds)
        regions = " / ".join(f"{entry['dice'][r]:.3f}" for r in REGIONS)
        lines.append(f"| {variant} | {per_seed} | {entry['mean_dice']:.3f} | {regions} |")
    return lines


def per_case_table(rows: list[dict], metric: str) -> list[str]:
    """One row per model, one column per test case, cells ``WT / TC / ET``."""
    cases = list(rows[0]["per_case"])
    lines = [f"| model | {' | '.join(c.removeprefix('Brats18_') for c in cases)} |", "|---|" + "---|" * len(cases)]
    fmt = "{:.3f}" if metric == "dice" else "{:.1f}"
    for row in rows:
        cells = [" / ".join(fmt.format(row["per_case"][c][r][metric]) for r in REGIONS) for c in cases]
        lines.append(f"| {row['model']} | {' | '.join(cells)} |")
    return lines


def patch_phrase(patch: dict) -> str:
    if patch["compact"] == patch["default"]:
        return f"nnU-Net's own patch {patch['compact']}"
    return f"patch {patch['compact']} instead of nnU-Net's {patch['default']}"


def reading() -> list[str]:
    """The hand-written interpretation (``reading.md`` beside this file), kept apart so a rerun of the
    report regenerates every number without losing it."""
    path = HERE / "reading.md"
    return ["", *path.read_text().rstrip().splitlines()] if path.is_file() else []


def write_report(p, names: list[str], ladder: list[str], extras: list[str]) -> None:
    from distill.infer.backends import cpu_name

    a = p.args
    rows = model_rows(p, names)
    summary = seed_summary(rows)
    shown = [r for r in rows if r["model"].startswith("teacher") or is_first_seed_student(r)]
    teacher = p.done("teacher")
    seconds = stage_seconds(p, names)
    command = (f"python benchmarks/realdata/run_realdata.py --data BRATS18_DIR --teacher-iterations "
               f"{a.teacher_iterations} "
               f"{'--teacher-patch ' + ' '.join(map(str, a.teacher_patch)) + ' ' if a.teacher_patch else ''}"
               f"--steps {a.steps} --patch {a.patch} "
               f"--seeds {' '.join(map(str, a.seeds))}")  # fmt: skip
    results = {
        "command": command,
        # the CPU when the report was written (a resumed run may span machines)
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
                    "torch": torch.__version__, "threads": a.threads},
        "split": p.done("split"),
        "teacher": {key: teacher[key] for key in ("parameters_per_member", "macs_128", "compact_plan",
                                                   "iterations_per_fold", "build_seconds", "checkpoint_sha256",
                                                   "checkpoints_total_mb")},
        "teacher_cross_validation_dice": cross_validation_by_region(teacher["cross_validation"]),
        "caches": {mode: portable_cache_record(p.done(f"cache_{mode}")) for mode in ("full", "oof")},
        "students": {"steps_per_link": a.steps, "patch": a.patch, "batch": 2, "seeds": list(a.seeds), "cache": "oof",
                     "packaged_seed": a.seeds[0]},
        "stage_seconds": seconds,
        "models": rows,
        "students_over_seeds": summary,
        "findings": ladder_findings(rows, list(a.sizes), summary, ladder, extras),
    }  # fmt: skip
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plots = plot(shown)
    cv = results["teacher_cross_validation_dice"].get("mean")
    cv_mean = " / ".join(f"{cv[g]:.3f}" for g in REGIONS) if cv else ""
    n_folds = len(results["teacher_cross_validation_dice"]) - 1
    table = ["| model | params | GMACs/128³ | Dice WT / TC / ET | mean | HD95 mm WT / TC / ET "
             "| agreement w/ teacher WT / TC / ET "
             "| s/case | speed-up | model s/case | model speed-up | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in shown:
        agreement = (
            " / ".join(f"{r['agreement_with_teacher'][g]:.3f}" for g in REGIONS)
            if "agreement_with_teacher" in r
            else "-"
        )
        hd95 = " / ".join("-" if r["hd95_mm"][g] is None else f"{r['hd95_mm'][g]:.1f}" for g in REGIONS)
        dice = " / ".join(f"{r['dice'][g]:.3f}" for g in REGIONS)
        table.append(f"| {r['model']} | {r['parameters']:,}{' x5' if r['model'].startswith('teacher') else ''} | "
                     f"{r['macs_128'] / 1e9:.2f} | {dice} | "
                     f"{r['mean_dice']:.3f} | {hd95} | {agreement} | {r['latency_median_s']:.2f} | "
                     f"{r['speedup_vs_teacher']:.0f}x | {r['model_latency_median_s']:.3f} | "
                     f"{r['model_speedup_vs_teacher']:.0f}x | "
                     f"{r.get('train_seconds', '-')} |")  # fmt: skip
    lines = [
        "# Real-data benchmark: BraTS 2018, compact nnU-Net teacher, distilled students",
        "",
        f"Reproduce: `{command}` (BRATS18_DIR: the 14 BraTS 2018 cases; {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {a.threads} threads). Every stage is resumable; every number below comes from one run "
        "of its stage.",
        "",
        f"Split: train {', '.join(c.removeprefix('Brats18_') for c in results['split']['train'])}; "
        f"test {', '.join(c.removeprefix('Brats18_') for c in results['split']['test'])}.",
        "",
        f"Teacher: nnU-Net v2 compact plan ({teacher['compact_plan']['rule']}; features "
        f"{teacher['compact_plan']['features_per_stage']['compact']} instead of nnU-Net's "
        f"{teacher['compact_plan']['features_per_stage']['default']}, "
        f"{patch_phrase(teacher['compact_plan']['patch_size'])}), "
        f"{teacher['parameters_per_member']:,} "
        f"parameters per fold, {teacher['iterations_per_fold']} iterations per fold by nnUNetTrainer; five checkpoints "
        f"{teacher['checkpoints_total_mb']} MB together (hashes in results.json).",
        *([f"nnU-Net's own cross-validation (each fold on its 2 held-out training cases, 2 mm): Dice WT/TC/ET "
           f"{cv_mean} (mean of {n_folds} folds)."] if cv_mean else []),
        "",
        "Scores on the 4 test cases at their original 1 mm grid against the expert labels (mean over cases; "
        "HD95 follows the BraTS empty-mask convention: 373.13 mm for a region present on one side only). "
        "Latency: median seconds per case on this CPU from the loaded "
        "1 mm arrays to the label map on the same grid (preprocessing, networks, resampling back, thresholds); "
        "model s/case: the forward passes alone "
        "(teacher: 5 folds x 8 mirrorings through nnU-Net's predictor; students: one onnxruntime pass); "
        "speed-ups relative to the 5-fold x 8-TTA teacher.",
        "",
        *table,
        "",
        f"Students above are seed {a.seeds[0]}'s (the ladder's are the committed packages; {', '.join(extras)} were "
        f"tried afterwards, first seed only). Every ladder variant was trained with seeds "
        f"{', '.join(map(str, a.seeds))} "
        f"(same steps, patch, batch and cache); mean Dice over the 4 test cases per seed:",
        "",
        *seed_table(summary, a.seeds),
        "",
        "Per test case, Dice WT / TC / ET:",
        "",
        *per_case_table(shown, "dice"),
        "",
        "Per test case, HD95 in mm WT / TC / ET (373.13: the region is empty on one side only):",
        "",
        *per_case_table(shown, "hd95"),
        "",
        "## Findings",
        "",
        "A step is said to help (hurt) only when its mean gain over the seeds exceeds 0.01 and every seed moves "
        "the same way.",
        "",
        *results["findings"],
        "",
        "## Time per stage (seconds)",
        "",
        "The teacher's folds 0-2 shared the 2 cores with another benchmark (oversubscribed threads); fold 4 ran alone. "
        "Every stage's own time is in results.json (`stage_seconds`).",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {value:.0f} |" for stage, value in grouped_seconds(seconds, teacher, a.seeds, ladder)],
        "",
        *[f"![{name}]({name})" for name in plots],
        *reading(),
    ]  # fmt: skip
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
