"""Per-case time of ``Predictor.segment`` before and after a predictor change, side by side.

This loads the predictor and preprocessing modules of an older commit (``--old``) next to the
current ones, runs both on the same package and real 1 mm cases in one process, alternating,
and reports medians, their ratio and how many label voxels differ. Two changes were measured:

* commit 175ba70 (``--old 175ba70~1``, the default) moved the z-score after resampling,
  resampled with torch instead of scipy's zoom and post-processed inside the brain's box:

      python benchmarks/latency/bench_preprocessing_change.py --data ../shared/data/brats18

  writes ``preprocessing_change.json`` / ``.md`` beside this file;
* the tumour-box change (labels resampled back only where a map can cross its threshold,
  faster masked statistics) against the commit before it: the command is in
  ``tumour_box_change.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = REPO / "benchmarks" / "realdata" / "packages" / "100k_d_kd_chain_graphflow"
CASES = ("Brats18_TCIA01_378_1", "Brats18_CBICA_ALU_1")  # real-data test cases
THREADS = 2


def module_from_commit(commit: str, path: str, name: str, replace: dict[str, str], folder: Path):
    """Import ``path`` as it was at ``commit`` under the module name ``name``."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for old, new in replace.items():
        source = source.replace(old, new)
    file = folder / f"{name.replace('.', '_')}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder")
    parser.add_argument("--old", default="175ba70~1", help="commit holding the code before the change")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=CASES, help="real-data test cases to time")
    parser.add_argument("--name", default="preprocessing_change", help="stem of the JSON and markdown written here")
    parser.add_argument("--change", default="the resampling change", help="what changed, for the report's title")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    from distill.data.case import load_case
    from distill.data.discovery import MODALITIES, find_cases
    from distill.infer.predictor import Predictor

    with tempfile.TemporaryDirectory() as folder:
        module_from_commit(args.old, "distill/data/preprocess.py", "old_distill_preprocess", {}, Path(folder))
        old_module = module_from_commit(args.old, "distill/infer/predictor.py", "old_distill_predictor",
                                        {"from distill.data.preprocess import": "from old_distill_preprocess import"},
                                        Path(folder))  # fmt: skip
        predictors = {"before": old_module.Predictor.from_package(PACKAGE, "onnxruntime", threads=THREADS),
                      "after": Predictor.from_package(PACKAGE, "onnxruntime", threads=THREADS)}  # fmt: skip
        files = {f.case_id: f for f in find_cases(args.data)}
        results = {}
        for case_id in args.cases:
            case = load_case(files[case_id], with_labels=False)
            seconds: dict[str, list[float]] = {name: [] for name in predictors}
            labels = {}
            for _ in range(args.runs):
                for name, predictor in predictors.items():  # alternate, so drift hits both alike
                    start = time.perf_counter()
                    labels[name] = predictor.segment(case.images, case.affine, modalities=MODALITIES).labels
                    seconds[name].append(time.perf_counter() - start)
            medians = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
            results[case_id] = {"median_seconds": medians, "ratio": round(medians["before"] / medians["after"], 2),
                                "differing_label_voxels": int(np.count_nonzero(labels["before"]
                                                                               != labels["after"]))}  # fmt: skip
    command = "python benchmarks/latency/bench_preprocessing_change.py --data BRATS18_DIR"
    if args.name != "preprocessing_change":
        command += f" --old {args.old} --cases {' '.join(args.cases)} --name {args.name} --change '{args.change}'"
    report = {"command": command, "old_commit": args.old, "change": args.change,
              "package": str(PACKAGE.relative_to(REPO)), "threads": THREADS, "runs": args.runs,
              "cases": results}  # fmt: skip
    (HERE / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Predictor.segment before and after {args.change} (one process, alternating runs)", "",
             f"Command: `{report['command']}`; old code from `{args.old}`; package `{report['package']}`; "
             f"{THREADS} threads; median of {args.runs} runs per case, arrays in -> labels on the 1 mm grid.", "",
             "| case | before (s) | after (s) | ratio | differing label voxels |", "|---|---|---|---|---|"]  # fmt: skip
    for case_id, r in results.items():
        lines.append(f"| {case_id} | {r['median_seconds']['before']:.3f} | {r['median_seconds']['after']:.3f} | "
                     f"{r['ratio']:.2f}x | {r['differing_label_voxels']} |")  # fmt: skip
    (HERE / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
