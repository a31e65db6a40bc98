"""Score a folder of predicted label maps against a folder of ground-truth label maps.

For every ground-truth case the prediction with the same case id is read, checked to lie
on the same voxel grid, turned into the WT/TC/ET regions of its label convention, and
scored with :func:`distill.eval.region_metrics.case_region_metrics`. Two files are
written, each atomically:

* ``metrics.csv``: one row per case and region (``CSV_COLUMNS``).
* ``summary.json``: per region the mean, median and population standard deviation
  (ddof=0) of each metric, the number of cases, a breakdown by ground-truth region
  volume (small / medium / large, plus cases where the region is absent) with its
  thresholds, and the worst cases by Dice, as a BraTS error analysis reports them
  (Bakas et al., arXiv:1811.02629).

Cases run one after another; a case's arrays are released before the next is read.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill.core.atomic import atomic_write_json, atomic_write_text
from distill.core.paths import prepare_output_dir, remove_stale_partials
from distill.data.conventions import REGIONS, LabelConvention, resolve_convention
from distill.data.discovery import LabelMaps, find_label_maps
from distill.data.nifti import DEFAULT_MAX_VOXELS, Volume, read_nifti
from distill.errors import DataError, LabelConventionError
from distill.eval.policy import EMPTY_MASK_POLICY
from distill.eval.region_metrics import METRICS, RegionMetrics, case_region_metrics

# the flags of `distill evaluate` that name each side's convention, for the hints in errors
PRED_OPTION, GT_OPTION = "--pred-convention", "--gt-convention"
CSV_NAME = "metrics.csv"
JSON_NAME = "summary.json"
CSV_COLUMNS: tuple[str, ...] = ("case", "region", *METRICS)
# Same tolerance the rest of Distill uses for affines of co-registered files.
AFFINE_ATOL = 1e-3
STRATA: tuple[str, ...] = ("empty", "small", "medium", "large")
_STRATA_DEFINITION = (
    "cases binned by ground-truth volume of the region (ml): empty = region absent; small < low; "
    "low <= medium < high; large >= high. rule 'tertiles': low and high are the 33.3rd and 66.7th "
    "percentiles (linear interpolation) of the evaluated cases' non-empty volumes; rule 'fixed': "
    "given in the configuration"
)


@dataclass
class EvaluateConfig:
    """What to evaluate and where to write the reports.

    Attributes:
        pred_dir: predicted label maps (flat ``<case>.nii.gz`` folder, or any layout that
            :func:`distill.data.discovery.find_label_maps` understands).
        gt_dir: ground-truth label maps (BraTS case folders, nnU-Net raw dataset, or flat).
        out_dir: where ``metrics.csv`` and ``summary.json`` go (created if missing).
        pred_convention: label convention of the predictions, a name or ``"auto"``.
        gt_convention: label convention of the ground truth, a name or ``"auto"``.
        worst_k: how many worst cases per region to list in the summary.
        size_thresholds_ml: region -> (low, high) boundaries in ml of ground-truth volume
            between small / medium / large. A region not given here (or all regions, for
            ``None``) uses ``"tertiles"``: the 33.3rd and 66.7th percentiles of the evaluated
            cases' non-empty ground-truth volumes. The summary states the rule and values used.
        progress: show a progress bar over cases (on stderr).
        allow_missing: score the ground-truth cases that have a prediction and list the others
            in the summary (``skipped_ground_truth``); otherwise a missing prediction is an error.
        max_voxels: refuse label maps whose header claims more voxels, before reading them.
    """

    pred_dir: Path
    gt_dir: Path
    out_dir: Path
    pred_convention: str = "auto"
    gt_convention: str = "auto"
    worst_k: int = 5
    size_thresholds_ml: Mapping[str, tuple[float, float]] | None = None
    progress: bool = True
    allow_missing: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:
        self.pred_dir = Path(self.pred_dir)
        self.gt_dir = Path(self.gt_dir)
        self.out_dir = Path(self.out_dir)
        if self.worst_k < 0:
            raise ValueError(f"worst_k must be >= 0, got {self.worst_k}")
        if self.size_thresholds_ml is not None:
            _check_thresholds(self.size_thresholds_ml)


@dataclass(frozen=True)
class CaseResult:
    """The scores of one case: one :class:`RegionMetrics` per region, in ``REGIONS`` order."""

    case: str
    pred_path: Path
    gt_path: Path
    regions: list[RegionMetrics]

    def rows(self) -> list[dict[str, Any]]:
        return [{"case": self.case, **r.as_dict()} for r in self.regions]


@dataclass(frozen=True)
class EvaluationResult:
    """Everything :func:`evaluate` computed and where it wrote it."""

    cases: list[CaseResult]
    summary: dict[str, Any]
    csv_path: Path
    json_path: Path
    conventions: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    conventions_detected: dict[str, bool] = field(default_factory=dict)


def evaluate(config: EvaluateConfig) -> EvaluationResult:
    """Score every ground-truth case against its prediction and write the two reports.

    Raises:
        DataError: a folder has no label maps, a ground-truth case has no prediction, or a
            prediction's shape or affine differs from its ground truth (both files named).
        LabelConventionError: a label map holds values outside its convention, or
            ``"auto"`` cannot tell the convention (the folder named).

    A side whose convention is ``"auto"`` is read twice: once to collect the label values
    that decide the convention (the union over all its files), once to score.
    """
    prepare_output_dir(config.out_dir, "report folder")  # before any work: a bad --out loses nothing
    remove_stale_partials(config.out_dir)
    gt_maps = find_label_maps(config.gt_dir)
    pred_maps = find_label_maps(config.pred_dir)
    pairs, unmatched, skipped = match_cases(gt_maps, pred_maps, config.allow_missing)
    read = functools.partial(read_nifti, max_voxels=config.max_voxels)
    gt_conv = _resolve_side(config.gt_convention, [g for g, _ in pairs.values()], gt_maps.layout, config.gt_dir,
                            GT_OPTION, read)  # fmt: skip
    pred_conv = _resolve_side(config.pred_convention, [p for _, p in pairs.values()], pred_maps.layout,
                              config.pred_dir, PRED_OPTION, read)  # fmt: skip

    # closed on the way out, also on an error: the message then starts on a line of its own
    with tqdm(pairs.items(), desc="evaluate", unit="case", disable=not config.progress) as bar:
        cases = [evaluate_case(case_id, pred_path, gt_path, pred_conv, gt_conv, read)
                 for case_id, (gt_path, pred_path) in bar]  # fmt: skip
    summary = summarise(cases, worst_k=config.worst_k, size_thresholds_ml=config.size_thresholds_ml)
    detected = {"prediction": _is_auto(config.pred_convention), "ground_truth": _is_auto(config.gt_convention)}
    summary["label_conventions"] = {"prediction": pred_conv.name, "ground_truth": gt_conv.name}
    summary["label_conventions_detected"] = detected
    summary["unmatched_predictions"] = unmatched
    summary["skipped_ground_truth"] = skipped

    csv_path = atomic_write_text(config.out_dir / CSV_NAME, metrics_csv(cases))
    json_path = atomic_write_json(config.out_dir / JSON_NAME, summary)
    return EvaluationResult(
        cases=cases,
        summary=summary,
        csv_path=csv_path,
        json_path=json_path,
        conventions=dict(summary["label_conventions"]),
        skipped=skipped,
        conventions_detected=detected,
    )


def _is_auto(name: str) -> bool:
    return name.strip().lower() == "auto"


# ---------------------------------------------------------------------------- inputs


def match_cases(
    gt: LabelMaps, pred: LabelMaps, allow_missing: bool = False
) -> tuple[dict[str, tuple[Path, Path]], list[str], list[str]]:
    """Pair every ground-truth case with its prediction, sorted by case id.

    Returns ``(case -> (gt_path, pred_path), prediction ids with no ground truth, ground-truth
    ids with no prediction)``. Extra predictions are reported, not scored. A ground-truth case
    without a prediction is an error naming the missing cases, unless ``allow_missing``: then
    it is skipped and listed (scoring a subset is legitimate when said so).
    """
    if not gt.files:
        raise DataError(f"{gt.root}: no ground-truth label maps found")
    missing = sorted(set(gt.files) - set(pred.files))
    if missing and allow_missing and len(missing) < len(gt.files):
        pairs = {case: (gt.files[case], pred.files[case]) for case in sorted(gt.files) if case in pred.files}
        return pairs, sorted(set(pred.files) - set(gt.files)), missing
    if missing:
        shown = ", ".join(f"{c} ({gt.files[c]})" for c in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(
            f"{pred.root}: no prediction for {len(missing)} ground-truth case(s): {shown}{more}; "
            "expected files named <case>.nii.gz"
            + ("" if allow_missing else "; pass --allow-missing to score only the cases present")
        )
    pairs = {case: (gt.files[case], pred.files[case]) for case in sorted(gt.files)}
    return pairs, sorted(set(pred.files) - set(gt.files)), []


def _resolve_side(name: str, paths: Sequence[Path], layout: str | None, folder: Path, option: str,
                  read: Callable[[Path], Volume] = read_nifti) -> LabelConvention:  # fmt: skip
    """The convention of one side; ``"auto"`` reads every file once to learn its label values."""
    if not _is_auto(name):
        return resolve_convention(name, (), layout, source=str(folder), option=option)
    values: set[int] = set()
    for path in paths:
        values |= label_values(read(path))
    return resolve_convention(name, values, layout, source=str(folder), option=option)


def label_values(volume: Volume) -> set[int]:
    """The distinct labels of a label map; non-integer values are refused, naming the file."""
    uniques = np.unique(volume.data)
    if volume.data.dtype.kind == "f" and not np.all(uniques == np.round(uniques)):
        bad = uniques[uniques != np.round(uniques)][:5].tolist()
        raise LabelConventionError(f"{volume.path}: label map holds non-integer values such as {bad}")
    return {int(v) for v in uniques}


def check_same_grid(pred: Volume, gt: Volume, atol: float = AFFINE_ATOL) -> None:
    """Raise :class:`DataError` naming both files when they do not share a voxel grid."""
    if pred.data.shape != gt.data.shape:
        raise DataError(
            f"prediction {pred.path} has shape {pred.data.shape} but ground truth {gt.path} has shape {gt.data.shape}"
        )
    diff = float(np.max(np.abs(pred.affine - gt.affine)))
    if not diff <= atol:
        raise DataError(
            f"prediction {pred.path} and ground truth {gt.path} have different affines "
            f"(largest difference {diff:.4g}, tolerance {atol}); resample the prediction onto the ground-truth grid"
        )


def evaluate_case(
    case_id: str, pred_path: Path, gt_path: Path, pred_conv: LabelConvention, gt_conv: LabelConvention,
    read: Callable[[Path], Volume] = read_nifti,
) -> CaseResult:
    """Read, check and score one case. Spacing comes from the ground truth's affine."""
    gt = read(gt_path)
    pred = read(pred_path)
    check_same_grid(pred, gt)
    # label_values refuses fractional labels, which to_regions would otherwise truncate.
    label_values(gt)
    label_values(pred)
    gt_regions = gt_conv.to_regions(gt.data, source=str(gt_path), option=GT_OPTION)
    pred_regions = pred_conv.to_regions(pred.data, source=str(pred_path), option=PRED_OPTION)
    rows = case_region_metrics(pred_regions, gt_regions, gt.spacing, REGIONS)
    return CaseResult(case=case_id, pred_path=Path(pred_path), gt_path=Path(gt_path), regions=rows)


# ---------------------------------------------------------------------------- reports


def metrics_csv(cases: Iterable[CaseResult]) -> str:
    """CSV text, one row per case and region; floats written in full (shortest exact repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in cases:
        for row in case.rows():
            writer.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def describe(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, median and population std (ddof=0) of ``values``; ``None`` when there are none."""
    if len(values) == 0:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "median": float(np.median(array)), "std": float(array.std(ddof=0))}


def _metric_stats(rows: Sequence[RegionMetrics]) -> dict[str, Any]:
    stats: dict[str, Any] = {"n_cases": len(rows)}
    for metric in METRICS:
        stats[metric] = describe([getattr(r, metric) for r in rows])
    return stats


def tertile_thresholds(volumes: Sequence[float]) -> tuple[float, float] | None:
    """The 33.3rd and 66.7th percentiles (linear interpolation) of the non-empty volumes."""
    nonempty = [v for v in volumes if v > 0]
    if not nonempty:
        return None
    low, high = np.percentile(np.asarray(nonempty, dtype=np.float64), [100.0 / 3.0, 200.0 / 3.0])
    return float(low), float(high)


def size_stratum(volume_ml: float, thresholds: tuple[float, float] | None) -> str:
    """``empty`` (region absent), ``small`` (< low), ``medium`` (< high) or ``large`` (>= high)."""
    if volume_ml <= 0 or thresholds is None:
        return "empty"
    low, high = thresholds
    if volume_ml < low:
        return "small"
    return "medium" if volume_ml < high else "large"


def _size_strata(
    per_region: Mapping[str, list[tuple[str, RegionMetrics]]], fixed: Mapping[str, tuple[float, float]] | None
) -> dict[str, Any]:
    per_stratum: dict[str, Any] = {}
    for region, entries in per_region.items():
        if fixed is not None and region in fixed:
            rule = "fixed"
            thresholds: tuple[float, float] | None = (float(fixed[region][0]), float(fixed[region][1]))
        else:
            rule = "tertiles"
            thresholds = tertile_thresholds([m.gt_volume_ml for _, m in entries])
        groups: dict[str, list[tuple[str, RegionMetrics]]] = {s: [] for s in STRATA}
        for case, metrics in entries:
            groups[size_stratum(metrics.gt_volume_ml, thresholds)].append((case, metrics))
        per_stratum[region] = {
            "rule": rule,
            "thresholds_ml": list(thresholds) if thresholds is not None else None,
            **{
                name: {"cases": [c for c, _ in members], **_metric_stats([m for _, m in members])}
                for name, members in groups.items()
            },
        }
    return {"definition": _STRATA_DEFINITION, "per_region": per_stratum}


def worst_cases(entries: Sequence[tuple[str, RegionMetrics]], k: int) -> list[dict[str, Any]]:
    """The ``k`` lowest-Dice cases; ties go to the larger HD95, then to the case id."""
    ranked = sorted(entries, key=lambda e: (e[1].dice, -e[1].hd95, e[0]))
    return [
        {
            "case": case,
            "dice": m.dice,
            "hd95": m.hd95,
            "gt_volume_ml": m.gt_volume_ml,
            "pred_volume_ml": m.pred_volume_ml,
        }
        for case, m in ranked[:k]
    ]


def summarise(
    cases: Sequence[CaseResult],
    worst_k: int = 5,
    size_thresholds_ml: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """The summary JSON object for a list of scored cases (see the module docstring)."""
    per_region: dict[str, list[tuple[str, RegionMetrics]]] = {r: [] for r in REGIONS}
    for case in cases:
        for metrics in case.regions:
            per_region[metrics.region].append((case.case, metrics))
    return {
        "n_cases": len(cases),
        "regions": list(REGIONS),
        "units": {"hd95": "mm", "gt_volume_ml": "ml", "pred_volume_ml": "ml"},
        "statistics": "mean, median and population standard deviation (ddof=0) over cases",
        "empty_mask_policy": _policy_json(),
        "per_region": {r: _metric_stats([m for _, m in entries]) for r, entries in per_region.items()},
        "size_strata": _size_strata(per_region, size_thresholds_ml),
        "worst_cases": {r: worst_cases(entries, worst_k) for r, entries in per_region.items()},
    }


def _policy_json() -> dict[str, dict[str, float | str]]:
    """The declared empty-mask policy, so every report says how empty regions were scored."""
    return {
        metric: {cell.value: (v if isinstance(v, float) else "computed") for cell, v in cells.items()}
        for metric, cells in EMPTY_MASK_POLICY.items()
    }


def _check_thresholds(thresholds: Mapping[str, tuple[float, float]]) -> None:
    for region, pair in thresholds.items():
        if region not in REGIONS:
            raise ValueError(f"size_thresholds_ml: unknown region {region!r}; expected one of {REGIONS}")
        if len(pair) != 2 or not 0 < float(pair[0]) <= float(pair[1]):
            raise ValueError(f"size_thresholds_ml[{region!r}] must be (low, high) with 0 < low <= high, got {pair}")
