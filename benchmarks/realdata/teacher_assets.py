"""The real-data teacher as a committed asset: fold checkpoints that cost hours of CPU to train.

Training one fold of the compact nnU-Net teacher takes tens of minutes to hours on 2 cores, and
the machine that trained it may be gone by the next session. So every finished fold is copied
beside this file (``teacher/``, committed) with nnU-Net's model-folder files and a sha256 list,
and a run on a fresh clone first restores them into its working folder, where nnU-Net's own
trainer and predictor find them. A fold still training can be saved too
(``checkpoint_latest.pth``), so a lost session costs at most the epochs since that save.

Layout of ``teacher/iterations_N/`` (mirrors nnU-Net's model folder)::

    plans.json  dataset.json  dataset_fingerprint.json  SHA256SUMS.json
    fold_K/checkpoint_final.pth   fold_K/distill_schedule.json   fold_K/validation/summary.json
    fold_K/checkpoint_latest.pth  (only while fold K is unfinished)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from distill.core.hashing import file_sha256

ASSETS_ROOT = Path(__file__).resolve().parent / "teacher"


def assets_for(iterations: int) -> Path:
    """One asset folder per training budget: a fold of another budget is another teacher."""
    return ASSETS_ROOT / f"iterations_{iterations}"


ASSETS = assets_for(2000)
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
FOLD_FILES = ("checkpoint_final.pth", "distill_schedule.json", "validation/summary.json")
SUMS = "SHA256SUMS.json"


def _copy(source: Path, target: Path) -> None:
    """Copy under a temporary name, then rename: a killed copy never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _copy_validation_summary(source: Path, target: Path) -> None:
    """nnU-Net's validation summary with its file paths cut to ``folder/file`` (the absolute paths
    name the machine that trained the fold and mean nothing on another)."""
    summary = json.loads(source.read_text())
    for case in summary.get("metric_per_case", []):
        for key in ("reference_file", "prediction_file"):
            if key in case:
                path = Path(case[key])
                case[key] = f"{path.parent.name}/{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(json.dumps(summary, indent=4) + "\n")
    os.replace(tmp, target)


def _record_sums(assets: Path) -> dict[str, str]:
    sums = {p.relative_to(assets).as_posix(): file_sha256(p) for p in sorted(assets.rglob("*"))
            if p.is_file() and p.name != SUMS and not p.name.startswith(".")}  # fmt: skip
    tmp = assets / f".{SUMS}.partial"
    tmp.write_text(json.dumps(sums, indent=2) + "\n")
    os.replace(tmp, assets / SUMS)
    return sums


def save_fold(model_dir: Path, fold: int, assets: Path = ASSETS, record: dict | None = None) -> dict[str, str]:
    """Copy a finished fold (and the model folder's JSON files) into ``assets``, with ``record`` (its
    cost and held-out Dice) as ``fold_K/record.json``; returns the sums, which cover the record too."""
    for name in MODEL_FILES:
        _copy(model_dir / name, assets / name)
    for name in FOLD_FILES:
        source = model_dir / f"fold_{fold}" / name
        if source.is_file():
            copy = _copy_validation_summary if name.endswith("summary.json") else _copy
            copy(source, assets / f"fold_{fold}" / name)
    (assets / f"fold_{fold}" / "checkpoint_latest.pth").unlink(missing_ok=True)
    if record is not None:
        tmp = assets / f"fold_{fold}" / ".record.json.partial"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, assets / f"fold_{fold}" / "record.json")
    return _record_sums(assets)


def save_progress(model_dir: Path, assets: Path = ASSETS) -> list[int]:
    """Copy ``checkpoint_latest.pth`` of every unfinished fold; returns those folds."""
    saved = []
    for latest in sorted(model_dir.glob("fold_*/checkpoint_latest.pth")):
        fold = int(latest.parent.name.split("_")[1])
        if (model_dir / f"fold_{fold}" / "checkpoint_final.pth").is_file():
            continue
        for name in MODEL_FILES:
            _copy(model_dir / name, assets / name)
        _copy(latest, assets / latest.parent.name / "checkpoint_latest.pth")
        schedule = latest.parent / "distill_schedule.json"
        if schedule.is_file():
            _copy(schedule, assets / latest.parent.name / "distill_schedule.json")
        saved.append(fold)
    if saved:
        _record_sums(assets)
    return saved


def restore(model_dir: Path, assets: Path = ASSETS) -> list[str]:
    """Copy committed files that ``model_dir`` lacks into it, after checking their sha256.

    A file already present is left alone (the working copy may be newer than the asset).
    Raises ``SystemExit`` naming the file when an asset does not match its recorded sum.
    """
    if not (assets / SUMS).is_file():
        return []
    sums = json.loads((assets / SUMS).read_text())
    restored = []
    for relative, expected in sums.items():
        source, target = assets / relative, model_dir / relative
        if target.exists():
            continue
        if relative.endswith("checkpoint_latest.pth") and (target.parent / "checkpoint_final.pth").exists():
            continue
        if not source.is_file() or file_sha256(source) != expected:
            raise SystemExit(f"{source}: missing or altered (sha256 differs from {assets / SUMS}); restore it from git")
        _copy(source, target)
        restored.append(relative)
    return restored


def finished_folds(assets: Path = ASSETS) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in assets.glob("fold_*/checkpoint_final.pth"))
