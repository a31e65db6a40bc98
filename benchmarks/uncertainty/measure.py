"""The distilled uncertainty measured: the head, the student's entropy and the teacher's spread side by side.

Issue 15, item 3. For student packages trained with ``--set uncertainty_head=true`` (each
optionally paired with the package of the same recipe and seed trained without it) on held-out
BraTS cases with expert labels, and the nnU-Net teacher that the students learnt from:

* agreement with the teacher: Spearman's rho (distill.eval.spearman) between the head's map and
  the teacher's per-pass spread, and between the student's binary entropy and that spread, per
  region, over the case's brain (every voxel non-zero in some modality,
  distill.data.preprocess.brain_mask);
* finding the student's own errors: a voxel is wrong for a region when the head package's
  segmentation (its thresholds and post-processing, as ``distill predict`` writes it) and the
  expert label disagree on it. Each of the three maps (head, entropy, teacher spread) is scored
  by its AUROC for those errors (distill.eval.auroc, ties count half) and by the fraction of
  the errors among its 5 % most uncertain brain voxels (distill.eval.top_fraction_capture,
  ties at the cutoff shared);
* Dice against the expert labels of the head package and of its no-head partner on the same
  cases (paired difference with a two-stage bootstrap, distill.eval.paired), and, from the
  fold-matched protocol's stage records, the same difference over its held-out cases
  (``--protocol-records``; see :func:`protocol_dice_difference`);
* latency, one case, in the same process, configurations alternating (the order rotates each
  round): the head package with its map, the head package labels only, and the no-head package.
  Neither backend leaves the head out when only the labels are fetched (the torch student
  computes both outputs in one pass, and onnxruntime inference builds run every node whatever
  the fetch list, microsoft/onnxruntime#16483), so the head's cost is read against the no-head
  package; "labels only" shows what asking for the map adds on top (resampling it back).

The teacher's spread is what distill.teacher.nnunet.NnUNetTeacher.predict returns: the
voxel-wise standard deviation of the per-pass sigmoid probabilities over the folds given and
their 8 mirrorings, resampled to the case's original grid the way nnU-Net resamples
probabilities (float32, not the cache's uint8). For the fold-matched protocol's held-out cases
that is the fold's own network (``--teacher-folds k``: 8 passes, what its cache held); for the
4 test cases the 5 folds (40 passes).

Resumable: one JSON per (group, package pair, case), written atomically, and the teacher's map of
each case in ``--work`` (not committed); a rerun skips what is done and refuses a record made
by other packages or another teacher. Every run rebuilds ``results.json`` and ``RESULTS.md`` in
``--out`` from all the records there, so groups run one command each pool into one summary
(the commands are listed at the top of RESULTS.md). The fold-matched protocol's held-out cases,
from the repository root, with WORK = benchmarks/realdata/work and the packages named as
benchmarks/realdata/protocol.py names them (``recipe_uncertainty`` being its recipe plus
``uncertainty_head: True``)::

    TEACHER=WORK/teacher/nnUNet_results/Dataset501_BraTS18Real/nnUNetTrainer__nnUNetPlans_distillCompact__3d_fullres
    for k in 0 1 2 3 4; do
      python benchmarks/uncertainty/measure.py --out benchmarks/uncertainty/heldout --group fold$k \
        --cases WORK/protocol/fold_$k/held_out --teacher-model $TEACHER --teacher-folds $k \
        --pair 30k:0 WORK/protocol/fold_$k/packages/fold${k}_30k_recipe_uncertainty_seed0 \
                     WORK/protocol/fold_$k/packages/fold${k}_30k_recipe_seed0 \
        --protocol-records benchmarks/realdata/protocol/records --protocol-sizes 30000 --protocol-seeds 0
    done

and the 4 test cases against the 5 folds (40 passes), in a folder of their own (8 and 40
passes do not pool)::

    python benchmarks/uncertainty/measure.py --out benchmarks/uncertainty/test --group test \
      --cases WORK/split/test --teacher-model $TEACHER --teacher-folds 0 1 2 3 4 \
      --pair 30k:0 HEAD_PACKAGE NO_HEAD_PACKAGE

Pass ``--pair METHOD:SEED HEAD_PACKAGE [NO_HEAD_PACKAGE]`` once per package; pairs with the same
METHOD are that method's seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = "benchmarks/uncertainty/measure.py"
MAPS = ("head", "entropy", "teacher")
MAP_NAMES = {"head": "distilled head", "entropy": "student's binary entropy", "teacher": "teacher's spread"}
FORMAT = 1


@dataclass(frozen=True)
class Pair:
    """A package with the uncertainty head and, optionally, the same recipe and seed without it."""

    method: str
    seed: int
    head: Path
    plain: Path | None

    @property
    def name(self) -> str:
        return f"{self.method}_seed{self.seed}"


def parse_pair(values: Sequence[str]) -> Pair:
    if len(values) not in (2, 3):
        raise SystemExit(f"--pair takes METHOD:SEED HEAD_PACKAGE [NO_HEAD_PACKAGE], got {list(values)}")
    method, _, seed = values[0].partition(":")
    if not method or not method.replace("-", "").replace("_", "").isalnum() or not (seed or "0").isdigit():
        raise SystemExit(f"--pair: {values[0]!r} is not METHOD:SEED (letters, digits, - and _; a whole seed)")
    return Pair(method, int(seed or 0), Path(values[1]), Path(values[2]) if len(values) == 3 else None)


def shown(path: Path | str | None) -> str | None:
    """A path as the records show it: relative to the repository root, never absolute."""
    return None if path is None else os.path.relpath(Path(path).resolve(), REPO)


# --------------------------------------------------------------------------- one case


def case_measures(truth: np.ndarray, brain: np.ndarray, segmented: np.ndarray, maps: dict[str, np.ndarray],
                  fraction: float = 0.05, plain_segmented: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """The measures of one case, per region.

    Args:
        truth: bool ``(3, *S)``, the expert regions WT, TC, ET.
        brain: bool ``S``, the voxels every measure runs over.
        segmented: bool ``(3, *S)``, the head package's regions; its errors are ``segmented != truth``.
        maps: ``head``, ``entropy`` and ``teacher``, each float ``(3, *S)``.
        fraction: the review budget of the capture, a share of the brain's voxels.
        plain_segmented: bool ``(3, *S)``, the no-head package's regions, for its Dice.
    """
    from distill.data.conventions import REGIONS
    from distill.eval.auroc import auroc
    from distill.eval.dice import dice
    from distill.eval.spearman import spearman
    from distill.eval.top_fraction_capture import top_fraction_capture

    regions = {}
    n_brain = int(np.count_nonzero(brain))
    for i, region in enumerate(REGIONS):
        errors = segmented[i] != truth[i]
        n_errors = int(np.count_nonzero(errors & brain))
        regions[region] = {
            "errors": n_errors,
            "error_fraction": n_errors / n_brain,
            "dice_head": dice(segmented[i], truth[i]),
            "dice_no_head": None if plain_segmented is None else dice(plain_segmented[i], truth[i]),
            "spearman_vs_teacher": {m: spearman(maps[m][i], maps["teacher"][i], brain) for m in ("head", "entropy")},
            "auroc": {m: auroc(maps[m][i], errors, brain) for m in MAPS},
            "capture": {m: top_fraction_capture(maps[m][i], errors, brain, fraction) for m in MAPS},
        }
    return {"brain_voxels": n_brain, "regions": regions}


def teacher_spread_on_regions(prediction, channels: Sequence[str]) -> np.ndarray:
    """A teacher's per-pass spread ``(K, *S)`` in its channel order -> ``(3, *S)`` float32 in WT, TC, ET order."""
    from distill.data.conventions import REGIONS

    missing = [r for r in REGIONS if r not in channels]
    if missing:
        raise SystemExit(f"the teacher's outputs are {list(channels)}, not the regions {list(REGIONS)} "
                         f"(missing {missing}); a region-based (sigmoid) BraTS teacher is needed")  # fmt: skip
    return np.ascontiguousarray(prediction.uncertainty[[list(channels).index(r) for r in REGIONS]], dtype=np.float32)


def build_teacher(model_dir: Path, folds: Sequence[str], tta: str, device: str):
    """The nnU-Net teacher (its own preprocessing, sliding window, mirroring and export)."""
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    return NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, folds=tuple(folds), tta=tta, device=device))


class TeacherMaps:
    """The teacher's spread per case, computed once and kept in ``work`` (the teacher loads on first need)."""

    def __init__(self, args: argparse.Namespace, spec: dict) -> None:
        self.args, self.spec, self._teacher = args, spec, None
        self.folder = args.work / "teacher" / args.group

    def get(self, case) -> tuple[np.ndarray, int]:
        from distill.core.atomic import atomic_path

        path = self.folder / f"{case.case_id}.npz"
        if path.is_file():
            with np.load(path) as stored:
                if json.loads(str(stored["spec"])) == self.spec:
                    return stored["spread"], int(stored["passes"])
        if self._teacher is None:
            self._teacher = build_teacher(self.args.teacher_model, self.args.teacher_folds, self.args.tta,
                                          self.args.device)  # fmt: skip
        prediction = self._teacher.predict(case)
        spread = teacher_spread_on_regions(prediction, self._teacher.info.channels)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, spread=spread, passes=prediction.n_passes, spec=json.dumps(self.spec))
        return spread, int(prediction.n_passes)


def package_identity(path: Path | None) -> dict | None:
    if path is None:
        return None
    from distill.package import ModelPackage

    package = ModelPackage.open(path, verify=False)
    return {"package": shown(path), "onnx_sha256": package.onnx_sha256, "parameters": package.parameters,
            "thresholds": list(package.thresholds), "uncertainty": package.has_uncertainty}  # fmt: skip


def record_path(out: Path, group: str, pair: Pair, case_id: str) -> Path:
    return out / "cases" / group / pair.name / f"{case_id}.json"


def read_record(path: Path, identity: dict) -> dict | None:
    """The finished record at ``path``; a record of other packages or another teacher is refused."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    differing = [k for k in identity if record.get(k) != identity[k]]
    if differing:
        raise SystemExit(f"{shown(path)}: made with other {', '.join(differing)}; delete it (or use another --out) "
                         "to measure these")  # fmt: skip
    return record


class Measurer:
    """Predictors and the teacher of one group, loaded on first need."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.teacher_spec = {"model": shown(args.teacher_model), "folds": list(args.teacher_folds), "tta": args.tta}
        self.teacher = TeacherMaps(args, self.teacher_spec)
        self._predictors: dict[Path, Any] = {}

    def predictor(self, path: Path):
        from distill.infer.predictor import Predictor

        if path not in self._predictors:
            self._predictors[path] = Predictor.from_package(path, self.args.backend, threads=self.args.threads)
        return self._predictors[path]

    def identity(self, pair: Pair) -> dict:
        return {"format": FORMAT, "group": self.args.group, "method": pair.method, "seed": pair.seed,
                "head": package_identity(pair.head), "no_head": package_identity(pair.plain),
                "teacher": self.teacher_spec, "fraction": self.args.fraction}  # fmt: skip

    def measure_case(self, files, pairs: Sequence[Pair]) -> None:
        from distill.core.atomic import atomic_write_json
        from distill.data.case import load_case
        from distill.data.conventions import resolve_convention
        from distill.data.preprocess import brain_mask

        case = load_case(files)
        convention = resolve_convention(self.args.gt_convention, np.unique(case.labels), files.layout,
                                        str(files.label), "--gt-convention")  # fmt: skip
        truth = convention.to_regions(case.labels, str(files.label), "--gt-convention")
        brain = brain_mask(case.images)
        start = time.perf_counter()
        teacher, passes = self.teacher.get(case)
        teacher_seconds = time.perf_counter() - start
        for pair in pairs:
            start = time.perf_counter()
            head = self.predictor(pair.head)
            result = head.segment(case.images, case.affine, return_uncertainty=True, return_distilled_uncertainty=True)
            plain = None
            if pair.plain is not None:
                plain_predictor = self.predictor(pair.plain)
                plain = plain_predictor.package.convention.to_regions(plain_predictor.segment(case.images,
                                                                                              case.affine).labels)
            maps = {"head": result.distilled_uncertainty, "entropy": result.uncertainty, "teacher": teacher}
            measures = case_measures(truth, brain, head.package.convention.to_regions(result.labels), maps,
                                     self.args.fraction, plain)  # fmt: skip
            record = {**self.identity(pair), "case": case.case_id, "gt_convention": convention.name,
                      "teacher_passes": passes, **measures,
                      "seconds": {"teacher": round(teacher_seconds, 2),
                                  "students_and_measures": round(time.perf_counter() - start, 2)}}  # fmt: skip
            atomic_write_json(record_path(self.args.out, self.args.group, pair, case.case_id), clean(record))
            teacher_seconds = 0.0  # the teacher ran for the first pair only

    def measure_latency(self, files, pair: Pair) -> dict:
        """Medians over ``--latency-repeats`` rounds; each round runs every configuration once, order rotating."""
        from distill.data.case import load_case

        case = load_case(files, with_labels=False)
        head = self.predictor(pair.head)
        configs: dict[str, Callable[[], Any]] = {
            "head_with_map": lambda: head.segment(case.images, case.affine, return_distilled_uncertainty=True),
            "head_labels_only": lambda: head.segment(case.images, case.affine),
        }
        if pair.plain is not None:
            plain = self.predictor(pair.plain)
            configs["no_head"] = lambda: plain.segment(case.images, case.affine)
        names = list(configs)
        for name in names:  # one untimed run each: first-call allocations are not latency
            configs[name]()
        timed: dict[str, dict[str, list[float]]] = {n: {"total_s": [], "model_s": []} for n in names}
        for round_index in range(self.args.latency_repeats):
            for name in names[round_index % len(names):] + names[: round_index % len(names)]:
                start = time.perf_counter()
                result = configs[name]()
                timed[name]["total_s"].append(time.perf_counter() - start)
                timed[name]["model_s"].append(result.timings["model"])
        medians = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in timed.items()}
        ratios = {}
        for stage in ("total_s", "model_s"):
            ratios[f"head_with_map_over_head_labels_only_{stage[:-2]}"] = (
                medians["head_with_map"][stage] / medians["head_labels_only"][stage])
            if "no_head" in medians:
                ratios[f"head_with_map_over_no_head_{stage[:-2]}"] = (
                    medians["head_with_map"][stage] / medians["no_head"][stage])
                ratios[f"head_labels_only_over_no_head_{stage[:-2]}"] = (
                    medians["head_labels_only"][stage] / medians["no_head"][stage])  # fmt: skip
        return {**self.identity(pair), "case": case.case_id, "shape": list(case.shape), "backend": self.args.backend,
                "threads": self.args.threads, "repeats": self.args.latency_repeats, "timings": timed,
                "medians": medians, "ratios": ratios}  # fmt: skip


def clean(value):
    """JSON-ready: NaN -> None (JSON has no NaN), numpy scalars -> Python, floats rounded to 6 digits."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- summary


def _interval(matrix: np.ndarray) -> dict:
    """Median over cases of the seeds' mean; mean with its two-stage bootstrap interval (cases, then seeds).

    ``matrix`` is ``(cases, seeds)`` with NaN where a measure is undefined (no error to find, a
    constant map); a case with any NaN is left out and counted in ``undefined_cases``.
    """
    from distill.eval.paired import paired_difference

    defined = matrix[np.isfinite(matrix).all(axis=1)]
    entry = {"undefined_cases": int(matrix.shape[0] - defined.shape[0])}
    if defined.shape[0] == 0:
        return {**entry, "median": None, "mean": None, "low": None, "high": None, "n_cases": 0}
    diff = paired_difference(defined, np.zeros_like(defined)).to_dict()  # the interval of the mean itself
    return {**entry, "median": round(float(np.median(defined.mean(axis=1))), 4),
            **{k: diff[k] for k in ("mean", "low", "high", "n_cases", "n_seeds")}}  # fmt: skip


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired ``a - b`` over the cases where both are defined (two-stage bootstrap, distill.eval.paired)."""
    from distill.eval.paired import paired_difference

    keep = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not keep.any():
        return {"mean": None, "low": None, "high": None, "n_cases": 0, "verdict": "undefined"}
    return paired_difference(a[keep], b[keep]).to_dict()


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def load_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cases").glob("*/*/*.json"))]


def method_matrices(records: list[dict], method: str) -> tuple[list[tuple[str, str]], list[int], dict]:
    """Cases (group, case), seeds, and ``get(fn) -> (cases, seeds)`` for one method's records."""
    mine = [r for r in records if r["method"] == method]
    seeds = sorted({r["seed"] for r in mine})
    by_key = {(r["group"], r["case"], r["seed"]): r for r in mine}
    cases = sorted({(r["group"], r["case"]) for r in mine})
    complete = [c for c in cases if all((*c, s) in by_key for s in seeds)]  # every seed measured

    def get(fn: Callable[[dict], Any]) -> np.ndarray:
        return np.asarray([[_number(fn(by_key[(*c, s)])) for s in seeds] for c in complete], dtype=np.float64)

    return complete, seeds, get


def summarise(out: Path, protocol: list[dict] | None = None) -> dict:
    """Everything in ``out``'s records pooled per method (see the module docstring)."""
    from distill.data.conventions import REGIONS

    records = load_records(out)
    commands = {p.stem: json.loads(p.read_text()) for p in sorted((out / "commands").glob("*.json"))}
    summary: dict[str, Any] = {"format": FORMAT, "commands": commands, "methods": {}, "protocol_dice": protocol or []}
    for method in sorted({r["method"] for r in records}):
        cases, seeds, get = method_matrices(records, method)
        entry: dict[str, Any] = {"seeds": seeds, "cases": [f"{g}/{c}" for g, c in cases], "regions": {},
                                 "teacher_passes": sorted({r["teacher_passes"] for r in records
                                                           if r["method"] == method})}  # fmt: skip
        for region in REGIONS:
            def at(*keys, region=region):
                def fn(record):
                    value = record["regions"][region]
                    for key in keys:
                        value = value[key]
                    return value
                return fn

            spearman = {m: get(at("spearman_vs_teacher", m)) for m in ("head", "entropy")}
            auroc = {m: get(at("auroc", m)) for m in MAPS}
            capture = {m: get(at("capture", m)) for m in MAPS}
            entry["regions"][region] = {
                "error_fraction": _interval(get(at("error_fraction"))),
                "spearman_vs_teacher": {**{m: _interval(v) for m, v in spearman.items()},
                                        "head_minus_entropy": _difference(spearman["head"], spearman["entropy"])},
                "auroc": {**{m: _interval(v) for m, v in auroc.items()},
                          "head_minus_entropy": _difference(auroc["head"], auroc["entropy"]),
                          "head_minus_teacher": _difference(auroc["head"], auroc["teacher"])},
                "capture": {**{m: _interval(v) for m, v in capture.items()},
                            "head_minus_entropy": _difference(capture["head"], capture["entropy"]),
                            "head_minus_teacher": _difference(capture["head"], capture["teacher"])},
            }  # fmt: skip
        entry["dice"] = dice_summary(get, REGIONS)
        entry["latency"] = latency_summary(out, method)
        summary["methods"][method] = entry
    return summary


def dice_summary(get, regions: Sequence[str]) -> dict:
    """Head and no-head Dice on the measured cases, and head minus no-head (mean over regions and per region)."""
    head = {r: get(lambda rec, r=r: rec["regions"][r]["dice_head"]) for r in regions}
    plain = {r: get(lambda rec, r=r: rec["regions"][r]["dice_no_head"]) for r in regions}
    head["mean"] = np.mean([head[r] for r in regions], axis=0)
    plain["mean"] = np.mean([plain[r] for r in regions], axis=0)
    if not np.isfinite(plain["mean"]).any():
        return {"head": {k: _interval(v) for k, v in head.items()}, "no_head": None, "head_minus_no_head": None}
    return {"head": {k: _interval(v) for k, v in head.items()}, "no_head": {k: _interval(v) for k, v in plain.items()},
            "head_minus_no_head": {k: _difference(head[k], plain[k]) for k in head}}  # fmt: skip


def latency_summary(out: Path, method: str) -> dict | None:
    runs = [json.loads(p.read_text()) for p in sorted((out / "latency").glob(f"*/{method}_seed*.json"))]
    if not runs:
        return None
    ratios = sorted({k for run in runs for k in run["ratios"]})
    return {"runs": [{"group": r["group"], "seed": r["seed"], "case": r["case"], "backend": r["backend"],
                      "threads": r["threads"], "repeats": r["repeats"], "medians": r["medians"],
                      "ratios": r["ratios"]} for r in runs],
            "median_ratios": {k: round(statistics.median(r["ratios"][k] for r in runs if k in r["ratios"]), 4)
                              for k in ratios}}  # fmt: skip


# --------------------------------------------------------------------------- the protocol's Dice


def protocol_dice_difference(records: Path, folds: Sequence[int], size: int, seeds: Sequence[int],
                             head_variant: str = "recipe_uncertainty",
                             base_variant: str = "recipe") -> dict:  # fmt: skip
    """Dice of ``head_variant`` minus ``base_variant`` over the protocol's held-out cases, paired by case and seed.

    Reads the stage records ``protocol_fold{k}_{size//1000}k_{variant}_seed{s}.json`` that
    benchmarks/realdata/protocol.py writes (``vs_ground_truth.per_case[case][region]["dice"]``,
    expert labels at 1 mm). A fold counts only when both variants are recorded for every seed;
    the others are listed in ``missing``. Returns, for the mean over WT/TC/ET and per region, the
    paired difference with its two-stage bootstrap interval (distill.eval.paired: cases, then
    seeds); ``not_worse`` is true when the interval's upper end is not below 0 (the head does
    not cost Dice beyond noise).
    """
    from distill.data.conventions import REGIONS

    def stage(fold, variant, seed):
        return records / f"protocol_fold{fold}_{size // 1000}k_{variant}_seed{seed}.json"

    def scores(fold, variant, seed):
        """The student's expert scores at thresholds 0.5, as the recipes ship: a package calibrated
        on one validation case (fold 0's first students) is read from its ``_t050`` twin."""
        record = json.loads(stage(fold, variant, seed).read_text())
        if any(t != 0.5 for t in (record.get("thresholds") or {}).values()):
            record = json.loads(stage(fold, variant, seed).with_name(f"{stage(fold, variant, seed).stem}_t050.json")
                                .read_text())
        return record["vs_ground_truth"]["per_case"]

    missing = [stage(f, v, s).name for f in folds for v in (head_variant, base_variant) for s in seeds
               if not stage(f, v, s).is_file()]  # fmt: skip
    used = [f for f in folds if all(stage(f, v, s).is_file() for v in (head_variant, base_variant) for s in seeds)]
    entry: dict[str, Any] = {"size": size, "head_variant": head_variant, "base_variant": base_variant,
                             "seeds": list(seeds), "folds_used": used, "missing": missing}  # fmt: skip
    rows: dict[str, dict[str, list[list[float]]]] = {v: {r: [] for r in REGIONS} for v in (head_variant, base_variant)}
    cases = []
    for fold in used:
        per_case = {(v, s): scores(fold, v, s) for v in (head_variant, base_variant) for s in seeds}
        names = sorted(per_case[(base_variant, seeds[0])])
        if any(sorted(scores) != names for scores in per_case.values()):
            raise ValueError(f"fold {fold}: the {head_variant} and {base_variant} records score different cases")
        cases += names
        for variant in (head_variant, base_variant):
            for region in REGIONS:
                rows[variant][region] += [[per_case[(variant, s)][c][region]["dice"] for s in seeds] for c in names]
    entry["cases"] = cases
    if not cases:
        return entry
    from distill.eval.paired import paired_difference

    head = {r: np.asarray(rows[head_variant][r]) for r in REGIONS}
    base = {r: np.asarray(rows[base_variant][r]) for r in REGIONS}
    head["mean_dice"] = np.mean([head[r] for r in REGIONS], axis=0)
    base["mean_dice"] = np.mean([base[r] for r in REGIONS], axis=0)
    for key in ("mean_dice", *REGIONS):
        diff = paired_difference(head[key], base[key])
        entry[key] = {"head": round(float(head[key].mean()), 4), "base": round(float(base[key].mean()), 4),
                      "head_minus_base": diff.to_dict(), "not_worse": diff.high >= 0}  # fmt: skip
    return entry


# --------------------------------------------------------------------------- RESULTS.md


def _cell(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    undefined = f", {stats['undefined_cases']} undef." if stats.get("undefined_cases") else ""
    return f"{stats['median']:.3f} ({stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]{undefined})"


def _diff(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:+.3f} [{stats['low']:+.3f}, {stats['high']:+.3f}]"


#: paired_difference's verdicts, A being the head package and B the no-head one
VERDICTS = {"A better": "head better", "B better": "no-head better"}


def latency_markdown(latency: dict | None) -> list[str]:
    """One row per timed pair: medians of the three configurations and the head's ratios."""
    if not latency:
        return []
    run = latency["runs"][0]
    lines = ["", f"Latency, {run['backend']} with {run['threads']} threads on one case in memory, the configurations "
             f"alternating over {run['repeats']} rounds (medians, seconds; network = the model stage alone). "
             "'head + map': the head package asked for labels and its map; 'head, labels': the same package, "
             "labels only (its network still computes the head); 'no head': the same recipe without the head.", "",
             "| group | seed | case | head + map | head, labels | no head | head + map / no head (total, network) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip

    def cell(medians: dict, name: str) -> str:
        m = medians.get(name)
        return "-" if m is None else f"{m['total_s']:.3f} ({m['model_s']:.3f})"

    for r in latency["runs"]:
        total, network = (r["ratios"].get(f"head_with_map_over_no_head_{s}") for s in ("total", "model"))
        shown_ratio = "-" if total is None else f"{total:.3f}, {network:.3f}"
        lines.append(f"| {r['group']} | {r['seed']} | {r['case']} | {cell(r['medians'], 'head_with_map')} | "
                     f"{cell(r['medians'], 'head_labels_only')} | {cell(r['medians'], 'no_head')} | {shown_ratio} |")
    lines += ["", "Median ratios over the rows: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                           latency["median_ratios"].items()) + "."]  # fmt: skip
    return lines


def results_markdown(summary: dict, fraction: float) -> str:
    from distill.data.conventions import REGIONS

    lines = ["# Distilled uncertainty: the head, the student's entropy and the teacher's spread", "",
             "Commands (from the repository root; one per group of cases, all pooled below):", "", "```bash"]
    lines += [c["command"] for c in summary["commands"].values()] or ["(none recorded)"]
    lines += ["```", "",
              f"Per case and region, over the brain (voxels non-zero in some modality): Spearman's rho of each map "
              f"with the teacher's per-pass spread; AUROC of each map for the head student's errors (its labels vs "
              f"the expert's; ties count half); the fraction of those errors among the map's "
              f"{fraction * 100:g} % most uncertain brain voxels (ties at the cutoff shared). Cells: median over cases "
              "(mean over cases and seeds [95 % two-stage bootstrap interval, cases then seeds]); a case where a "
              "measure is undefined (no error in the region, a constant map) is left out and counted.", ""]  # fmt: skip
    for method, entry in summary["methods"].items():
        lines += [f"## {method}", "", f"{len(entry['cases'])} cases, seeds {entry['seeds']}, teacher passes "
                  f"{entry['teacher_passes']}.", "",
                  f"| region | map | Spearman vs teacher | AUROC of errors | top-{fraction * 100:g} % capture |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for region in REGIONS:
            r = entry["regions"][region]
            for m in MAPS:
                rho = "(itself)" if m == "teacher" else _cell(r["spearman_vs_teacher"][m])
                lines.append(f"| {region} | {MAP_NAMES[m]} | {rho} | {_cell(r['auroc'][m])} | "
                             f"{_cell(r['capture'][m])} |")
        lines += ["", "Head minus entropy and head minus teacher (paired, mean [95 % CI]):", "",
                  "| region | Spearman: head − entropy | AUROC: head − entropy | AUROC: head − teacher "
                  "| capture: head − entropy | capture: head − teacher | error fraction |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for region in REGIONS:
            r = entry["regions"][region]
            lines.append(f"| {region} | {_diff(r['spearman_vs_teacher']['head_minus_entropy'])} | "
                         f"{_diff(r['auroc']['head_minus_entropy'])} | {_diff(r['auroc']['head_minus_teacher'])} | "
                         f"{_diff(r['capture']['head_minus_entropy'])} | {_diff(r['capture']['head_minus_teacher'])} | "
                         f"{_cell(r['error_fraction'])} |")  # fmt: skip
        dice = entry["dice"]
        if dice["head_minus_no_head"] is not None:
            lines += ["", "Dice vs the expert labels on these cases, head package minus no-head package (paired): "
                      + "; ".join(f"{k} {_diff(v)} ({VERDICTS.get(v['verdict'], v['verdict'])})"
                                  for k, v in dice["head_minus_no_head"].items()) + "."]  # fmt: skip
        lines += latency_markdown(entry["latency"])
        lines.append("")
    for entry in summary["protocol_dice"]:
        lines += [f"## Dice in the fold-matched protocol: {entry['head_variant']} minus {entry['base_variant']}, "
                  f"{entry['size'] // 1000}k", "",
                  f"Folds {entry['folds_used']}, {len(entry['cases'])} held-out cases, seeds {entry['seeds']}"
                  + (f"; not yet recorded: {', '.join(entry['missing'])}" if entry["missing"] else "") + "."]
        if entry["cases"]:
            lines += ["", "| | with head | without | difference [95 % CI] | not worse beyond noise |",
                      "|---|---|---|---|---|"]
            for key in ("mean_dice", *REGIONS):
                e = entry[key]
                lines.append(f"| {key} | {e['head']:.3f} | {e['base']:.3f} | {_diff(e['head_minus_base'])} | "
                             f"{'yes' if e['not_worse'] else 'no'} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="Records (cases/, latency/, commands/), results.json and RESULTS.md; committed")
    parser.add_argument("--work", type=Path, default=None,
                        help="The teacher's maps (large, not committed; default OUT/work, ignored by git)")
    parser.add_argument("--group", default="cases", help="Name of this set of cases (e.g. fold0); groups pool")
    parser.add_argument("--cases", type=Path, help="Held-out cases with expert labels (any layout Distill reads)")
    parser.add_argument("--case-ids", nargs="+", default=None, help="Only these cases of --cases")
    parser.add_argument("--gt-convention", default="auto", help="Label convention of the expert labels")
    parser.add_argument("--teacher-model", type=Path, help="nnU-Net model folder (Trainer__Plans__configuration)")
    parser.add_argument("--teacher-folds", nargs="+", default=None, help="Folds whose passes make the spread")
    parser.add_argument("--tta", default="mirror8", choices=("mirror8", "none"))
    parser.add_argument("--device", default="cpu", help="The teacher's device (cpu or cuda)")
    parser.add_argument("--pair", nargs="+", action="append", default=[], metavar="ARG",
                        help="METHOD:SEED HEAD_PACKAGE [NO_HEAD_PACKAGE]; repeat per package")
    parser.add_argument("--backend", default="onnxruntime", help="Students' backend (torch or onnxruntime)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.05, help="Review budget of the capture (share of brain)")
    parser.add_argument("--latency-case", default=None, help="Case timed (default: the first by id)")
    parser.add_argument("--latency-repeats", type=int, default=10, help="Alternating rounds (0: no latency)")
    parser.add_argument("--protocol-records", type=Path, default=None,
                        help="benchmarks/realdata/protocol/records: also the protocol's Dice with minus without head")
    parser.add_argument("--protocol-folds", type=int, nargs="+", default=(0, 1, 2, 3, 4))
    parser.add_argument("--protocol-sizes", type=int, nargs="+", default=(30_000,))
    parser.add_argument("--protocol-seeds", type=int, nargs="+", default=(0,))
    parser.add_argument("--head-variant", default="recipe_uncertainty")
    parser.add_argument("--base-variant", default="recipe")
    parser.add_argument("--summary-only", action="store_true", help="Only rebuild results.json and RESULTS.md")
    args = parser.parse_args(argv)
    args.pairs = [parse_pair(p) for p in args.pair]
    args.work = args.work or args.out / "work"
    if not args.summary_only:
        needed = {"--cases": args.cases, "--teacher-model": args.teacher_model, "--teacher-folds": args.teacher_folds,
                  "--pair": args.pairs or None}  # fmt: skip
        absent = [k for k, v in needed.items() if v is None]
        if absent:
            parser.error(f"{', '.join(absent)} required (unless --summary-only)")
        names = [p.name for p in args.pairs]
        if len(set(names)) != len(names):
            parser.error(f"two --pair with the same METHOD:SEED: {names}")
    return args


def command_line(args: argparse.Namespace) -> str:
    """This run's command with every path relative to the repository root (never an absolute path)."""
    parts = ["python", SCRIPT, "--out", shown(args.out), "--group", args.group, "--cases", shown(args.cases)]
    if args.case_ids:
        parts += ["--case-ids", *args.case_ids]
    if args.gt_convention != "auto":
        parts += ["--gt-convention", args.gt_convention]
    parts += ["--teacher-model", shown(args.teacher_model), "--teacher-folds", *args.teacher_folds, "--tta", args.tta,
              "--device", args.device]  # fmt: skip
    for pair in args.pairs:
        packages = [pair.head] if pair.plain is None else [pair.head, pair.plain]
        parts += ["--pair", f"{pair.method}:{pair.seed}", *map(shown, packages)]
    parts += ["--backend", args.backend, "--threads", str(args.threads), "--fraction", str(args.fraction),
              "--latency-repeats", str(args.latency_repeats)]  # fmt: skip
    if args.latency_case:
        parts += ["--latency-case", args.latency_case]
    if args.protocol_records:
        parts += ["--protocol-records", shown(args.protocol_records), "--protocol-folds",
                  *map(str, args.protocol_folds), "--protocol-sizes", *map(str, args.protocol_sizes),
                  "--protocol-seeds", *map(str, args.protocol_seeds), "--head-variant", args.head_variant,
                  "--base-variant", args.base_variant]  # fmt: skip
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> None:
    import torch

    from distill.core.atomic import atomic_write_json
    from distill.data.discovery import find_cases

    torch.set_num_threads(args.threads)
    found = find_cases(args.cases, require_labels=True)
    if args.case_ids:
        unknown = sorted(set(args.case_ids) - {c.case_id for c in found})
        if unknown:
            raise SystemExit(f"--case-ids {unknown} are not in {args.cases}")
        found = [c for c in found if c.case_id in args.case_ids]
    found = sorted(found, key=lambda c: c.case_id)
    atomic_write_json(args.out / "commands" / f"{args.group}.json",
                      {"command": command_line(args), "cases": [c.case_id for c in found]})  # fmt: skip
    if not (args.out / ".gitignore").exists():
        (args.out / ".gitignore").write_text("work/\n")
    measurer = Measurer(args)
    for index, files in enumerate(found, 1):
        pending = [p for p in args.pairs
                   if read_record(record_path(args.out, args.group, p, files.case_id), measurer.identity(p)) is None]
        if pending:
            start = time.perf_counter()
            measurer.measure_case(files, pending)
            print(f"[{index}/{len(found)}] {files.case_id}: {len(pending)} package(s) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    if args.latency_repeats > 0:
        wanted = args.latency_case or found[0].case_id
        files = next((c for c in found if c.case_id == wanted), None)
        if files is None:
            raise SystemExit(f"--latency-case {wanted} is not among the cases")
        for pair in args.pairs:
            path = args.out / "latency" / args.group / f"{pair.name}.json"
            if read_record(path, measurer.identity(pair)) is None:
                atomic_write_json(path, clean(measurer.measure_latency(files, pair)))


def main(argv: Sequence[str] | None = None) -> int:
    from distill.core.atomic import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    if not args.summary_only:
        run(args)
    protocol = None
    if args.protocol_records is not None:
        protocol = [protocol_dice_difference(args.protocol_records, args.protocol_folds, size, args.protocol_seeds,
                                             args.head_variant, args.base_variant)
                    for size in args.protocol_sizes]  # fmt: skip
    summary = clean(summarise(args.out, protocol))
    atomic_write_json(args.out / "results.json", summary)
    atomic_write_text(args.out / "RESULTS.md", results_markdown(summary, args.fraction))
    print(f"wrote {shown(args.out / 'results.json')} and {shown(args.out / 'RESULTS.md')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
