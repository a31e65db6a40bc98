"""Two complete runs of the real-data pipeline, side by side: how much of the ladder survives a rerun.

Both runs use the same command, split, seeds and budgets; the second ran from a fresh clone on
another CPU. Between them the code changed only where arithmetic was reordered without changing
the maths (preprocessing), and the CPU changed; same seeds then do not give the same weights, so
the differences below are the whole pipeline's sensitivity to float-level perturbations: its
run-to-run noise.

    python benchmarks/realdata/compare_runs.py --first results.json --second rerun/results.json

Writes ``RERUN.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from report import step_verdict

HERE = Path(__file__).resolve().parent
STEPS = (("a_no_kd", "b_kd", "KD over no KD"), ("b_kd", "c_kd_chain", "chain over KD"),
         ("c_kd_chain", "d_kd_chain_graphflow", "graph flow over chain"))  # fmt: skip


def step_rows(run: dict, size: str) -> list[tuple[str, float, str]]:
    """(step, mean gain over seeds, verdict) for one parameter size of one run."""
    summary = run["students_over_seeds"]
    rows = []
    for before, after, label in STEPS:
        a, b = summary[f"{size}_{before}"]["seeds"], summary[f"{size}_{after}"]["seeds"]
        deltas = [b[seed] - a[seed] for seed in sorted(set(a) & set(b))]
        rows.append((label, statistics.mean(deltas), step_verdict(deltas)))
    return rows


def dice_table(first: dict, second: dict) -> list[str]:
    one = {row["model"]: row["mean_dice"] for row in first["models"]}
    two = {row["model"]: row["mean_dice"] for row in second["models"]}
    lines = ["| model | run 1 | run 2 | run 2 - run 1 |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {one[name]:.3f} | {two[name]:.3f} | {two[name] - one[name]:+.3f} |" for name in one if name in two
    ]
    students = [abs(two[n] - one[n]) for n in one if n in two and not n.startswith("teacher")]
    lines += ["", f"Students: median |run 2 - run 1| {statistics.median(students):.3f}, largest {max(students):.3f} "
                  f"(mean Dice over WT/TC/ET on the 4 test cases, same seed)."]  # fmt: skip
    return lines


def verdict_table(first: dict, second: dict) -> list[str]:
    lines = ["| size | step | run 1 | run 2 | same verdict |", "|---|---|---|---|---|"]
    for size in ("100k", "30k"):
        for (label, gain_1, verdict_1), (_, gain_2, verdict_2) in zip(step_rows(first, size), step_rows(second, size)):
            short_1, short_2 = verdict_1.split(" (")[0], verdict_2.split(" (")[0]
            lines.append(f"| {size} | {label} | {gain_1:+.3f} {short_1} | {gain_2:+.3f} {short_2} | "
                         f"{'yes' if short_1 == short_2 else 'NO'} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=Path, default=HERE / "results.json")
    parser.add_argument("--second", type=Path, default=HERE / "rerun" / "results.json")
    args = parser.parse_args()
    first, second = json.loads(args.first.read_text()), json.loads(args.second.read_text())
    cv_1, cv_2 = first["teacher_cross_validation_dice"]["mean"], second["teacher_cross_validation_dice"]["mean"]
    lines = [
        "# The real-data pipeline run twice",
        "",
        "Reproduce: `python benchmarks/realdata/compare_runs.py --first results.json --second rerun/results.json`",
        "",
        f"Run 1: `results.json` ({first['machine'].get('cpu', 'CPU not recorded')}; stages sum to "
        f"{sum(first['stage_seconds'].values()):,.0f} s, partly on shared cores). "
        "Run 2: `rerun/results.json`, the same "
        f"command from a fresh clone ({second['machine'].get('cpu', 'CPU not recorded')}, idle; stages sum to "
        f"{sum(second['stage_seconds'].values()):,.0f} s). Same split, seeds and budgets. The code differs only where "
        "preprocessing arithmetic was reordered without changing the maths (z-score after resampling and torch "
        "resampling from commit 175ba70, which run 1's cache and seed-0 students predate; "
        "masked statistics summed per line), so the "
        "differences are the pipeline's run-to-run noise. Run 2's student packages are not committed.",
        "",
        "Teacher cross-validation Dice WT/TC/ET (nnU-Net, mean of folds): run 1 "
        f"{cv_1['WT']:.4f} / {cv_1['TC']:.4f} / {cv_1['ET']:.4f}, "
        f"run 2 {cv_2['WT']:.4f} / {cv_2['TC']:.4f} / {cv_2['ET']:.4f}; "
        f"checkpoints identical: {first['teacher']['checkpoint_sha256'] == second['teacher']['checkpoint_sha256']}.",
        "",
        "## Mean Dice per model, same seed",
        "",
        *dice_table(first, second),
        "",
        "## Ladder verdicts (mean gain over seeds 0 and 1; helps/hurts only if both seeds agree and |gain| > 0.01)",
        "",
        *verdict_table(first, second),
        "",
    ]
    (HERE / "RERUN.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
