"""Fold-matched protocol over the real BraTS 2018 cases: does distillation beat labels alone?

Four test cases cannot tell a real effect from noise, and choosing a recipe on them would leak.
This protocol uses nnU-Net's own 5-fold split of the 10 training cases (``splits_final.json``):

  for each teacher fold k:
    cache      fold k's network alone (8 mirrorings) on its 8 training cases, in-sample as any
               KD teacher is, at the students' 2 mm grid; the 2 held-out cases never enter it.
    teacher    fold k alone (8-TTA) on its 2 held-out cases at their 1 mm grid, the teacher
               figure each of this fold's students is held against.
    threshold  the training-free intensity-threshold baseline (distill.infer.threshold) on the
               same held-out cases: the floor every learned model is read against.
    students   per size and variant, once per seed: trained on the 8 cases of the fold's cache
               (``--recipe brats-100k`` / ``brats-30k`` schedules for every variant, so the
               variants differ only in what they learn from), exported, run on the 2 held-out
               cases at 1 mm, scored against the experts and against fold k's teacher.
    post       per student (and the teacher), the same predictions under each post-processing
               candidate (POSTPROCESSING), chosen as nnU-Net chooses its own: on held-out cases.
  summary      over the 10 held-out cases (2 per fold) and the seeds: each variant minus the
               label-only student and the teacher minus the label-only student, as paired
               differences with a two-stage bootstrap (cases, then seeds; distill.eval.paired),
               and the retention of the teacher's mean Dice by each distilled variant.
  pilots       a variant trained on fewer folds than the summary counts (seed 0) is read on its
               own folds, paired with the students it should beat (pilot_scope), to decide
               whether it earns the other folds.

Recipes are chosen on these held-out (validation) cases; the 4 test cases stay for the final
students of run_realdata.py. Every stage writes its record into WORK/stages and a copy into
``protocol/records/`` beside this file (commit it as it lands): on a fresh clone a finished
stage is not run again, so a lost machine costs at most the stage that was running.

    python benchmarks/realdata/protocol.py --data ../shared/data/brats18 --folds 0 1 2 3 4 \\
        --sizes 100000 30000 --variants gt kd_plain recipe recipe_dice_kl --seeds 0 1

A fold whose teacher is not trained yet is trained first (nnU-Net's own trainer, resumable,
``--teacher-iterations`` as in run_realdata.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_realdata as rr  # noqa: E402  (this folder's pipeline: split, convert, teacher folds)
import teacher_assets  # noqa: E402  (the committed teacher folds)

RECORDS = HERE / "protocol" / "records"
RECIPE_FOR_SIZE = {100_000: "brats-100k", 30_000: "brats-30k"}
#: What each variant changes on top of its size's recipe. Every variant keeps the recipe's
#: schedule, sampling and thresholds, so a difference is what the student learns from.
VARIANTS = {
    "gt": {"kd_weight": 0.0},  # the expert labels alone
    "kd_plain": {"kd_weight": 0.7, "temperature": 2.0, "kd_correction": "none", "kd_balance": "voxel",
                 "kd_warmup_steps": 0},  # the KD of the first benchmark, on the recipe's schedule
    # label-corrected, region-balanced KD: the recipe as first written (it now ships dice_voxel, so
    # every variant built on the region form names it, and the committed records keep their meaning)
    "recipe": {"kd_balance": "region"},
    "recipe_no_adjust": {"kd_balance": "region", "kd_correction": "none"},  # ablation: without knowledge adjustment
    "recipe_voxel": {"kd_balance": "voxel"},  # ablation: without region balancing
    # graph flow from the fold's own nnU-Net network run live (distill.teacher.features), on top
    # of the recipe; paraphrasers pre-trained for 300 steps on 32 batches of its features; the
    # network sees 16 voxels of context around each 48³ patch (80³, a multiple of its stride 16):
    # given the bare patch its maps agree with its whole-volume ones at Dice ~0.72, with the
    # context at ~0.97 (LIVE_TEACHER.md)
    "recipe_graph_flow": {"kd_balance": "region", "live_teacher": True, "graph_flow_weight": 1.0,
                          "paraphraser_steps": 300, "paraphraser_batches": 32, "teacher_context": 16},
    # teacher -> one assistant (sized between teacher and student, distill.train.chain) -> student,
    # each link with the recipe's KD: the teacher-assistant step (TAKD, Mirzadeh et al. 2020)
    "recipe_chain": {"kd_balance": "region", "assistants": "1"},
    # three times the recipe's steps (warm-ups in proportion, poly decay over the whole run), for
    # the distilled student and for the label-only one: does a longer schedule change the verdict?
    "recipe_long": {"kd_balance": "region", "steps": 6000},
    "gt_long": {"kd_weight": 0.0, "steps": 6000},
    # KD as the supervised term's own Dice + BCE with the teacher's map as the target (soft Dice
    # plus voxel-mean KL): the region form over-segmented (scattered components, HD95 2.5x the
    # teacher's) and the voxel mean lost ET; everything else as the recipe
    "recipe_dice_kl": {"kd_balance": "dice_voxel"},
    # the recipe plus the distilled-uncertainty head (issue 15): its Dice is paired with "recipe"'s
    "recipe_uncertainty": {"kd_balance": "region", "uncertainty_head": True},
    # the same head on the shipped KD form, paired with recipe_dice_kl
    "dice_kl_uncertainty": {"kd_balance": "dice_voxel", "uncertainty_head": True},
    # consistent teaching (Beyer et al., CVPR 2022): nnU-Net's intensity augmentation on every
    # patch (distill.train.augment), first for the label-only student (what augmentation alone
    # does), then with dice_voxel KD from the cached maps of the unaugmented volumes (a fixed
    # teacher), then with the fold's network run live on the very augmented patch (its context
    # as for graph flow) as the KD target
    "gt_strong": {"kd_weight": 0.0, "augment": "strong"},
    "dice_kl_strong": {"kd_balance": "dice_voxel", "augment": "strong"},
    "dice_kl_live": {"kd_balance": "dice_voxel", "augment": "strong", "live_teacher": True, "kd_source": "live",
                     "teacher_context": 16},
    # the live fold's sigmoid as the target without the strong augmentation: separates "a live,
    # one-pass target" from "the teacher's answer on inputs it never saw" in dice_kl_live's step
    "dice_kl_live_light": {"kd_balance": "dice_voxel", "live_teacher": True, "kd_source": "live",
                           "teacher_context": 16},
    # dice_voxel KD on three times the steps, against gt_long: a patient schedule
    "dice_kl_long": {"kd_balance": "dice_voxel", "steps": 6000},
}  # fmt: skip
BASELINE = "gt"
#: The ladder: each variant against the step below it (paired on the same cases and seeds), read
#: as "what the step adds": kd_plain is KD over none; the recipe is the label-respecting remedies
#: over plain KD; the chain, graph flow and the head each add one thing to the recipe. An ablation
#: removes one remedy, so its step is the recipe minus the ablation (ABLATIONS): what that remedy adds.
#: At three times the steps, KD is held against the label-only student of the same schedule.
LADDER_REFERENCE = {"kd_plain": "gt", "recipe": "kd_plain", "recipe_no_adjust": "recipe",
                    "recipe_voxel": "recipe", "recipe_graph_flow": "recipe", "recipe_chain": "recipe",
                    "recipe_uncertainty": "recipe", "dice_kl_uncertainty": "recipe_dice_kl", "recipe_long": "gt_long",
                    "recipe_dice_kl": "recipe", "gt_strong": "gt", "dice_kl_strong": "gt_strong",
                    "dice_kl_live": "dice_kl_strong", "dice_kl_long": "gt_long",
                    "dice_kl_live_light": "recipe_dice_kl"}  # fmt: skip
ABLATIONS = {"recipe_no_adjust", "recipe_voxel"}
#: Students that learn from the labels alone: no retention of the teacher is claimed for them.
LABEL_ONLY = {"gt", "gt_long", "gt_strong"}
#: A pilot (a variant trained on fewer folds than the summary counts, seed 0) is paired on its
#: own folds with the label-only student, its ladder reference and, where trained there, these.
PILOT_COMPARISONS = {"dice_kl_live": ("gt_strong", "recipe_dice_kl", "dice_kl_live_light"),
                     "dice_kl_strong": ("recipe_dice_kl",),
                     "dice_kl_long": ("recipe_dice_kl",), "recipe_long": ("recipe",)}  # fmt: skip


class ProtocolPipeline(rr.Pipeline):
    """Stage records in WORK/stages, mirrored into ``protocol/records/`` (committed)."""

    @property
    def records(self) -> Path:
        return self.args.records

    def done(self, stage: str) -> dict | None:
        """The committed record first: it is the measurement, and a stage run again only to bring
        back its work-folder files (:meth:`regenerate`) leaves a second record here."""
        return _read(self.records / f"{stage}.json") or super().done(stage)

    def run(self, stage: str, function) -> dict:
        """As the base pipeline, except that a stage known only from its committed record runs again
        when the files later stages read from this work folder are missing: on a fresh clone a
        committed ``convert`` record does not bring back the converted dataset, nor a fold's teacher
        record its held-out predictions."""
        committed_only = super().done(stage) is None and (self.records / f"{stage}.json").is_file()
        if committed_only and not all(path.exists() for path in self.local_outputs(stage)):
            print(f"[{stage}] recorded, but its files are not in this work folder: running again", flush=True)
            return self.regenerate(stage, function)
        return super().run(stage, function)

    def regenerate(self, stage: str, function) -> dict:
        """Run ``stage`` again for its work-folder files. The fresh record goes to this work folder
        only: the committed one is the measurement (its timings taken alone), while a rerun may
        share the cores with other work."""
        start = time.perf_counter()
        record = function()
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[{stage}] files regenerated in {record['seconds']:.0f} s; committed record kept", flush=True)
        return rr.Pipeline.finish(self, stage, record)

    def local_outputs(self, stage: str) -> list[Path]:
        """The work-folder files stage ``stage`` leaves for later stages (none for students and caches:
        students are only read through their records, and a missing cache is rebuilt on demand)."""
        if stage == "split":
            return [self.work / "split" / "train", self.work / "split" / "test"]
        if stage == "convert":
            return [self.work / "nnunet_raw" / f"Dataset{rr.DATASET_ID:03d}_{rr.DATASET_NAME}" / "dataset.json"]
        teacher = re.fullmatch(r"protocol_fold(\d+)_teacher", stage)
        committed = _read(self.records / f"{stage}.json")
        if teacher and committed:
            predictions = fold_dir(self, int(teacher.group(1))) / "predictions" / "teacher"
            return [predictions / f"{case}.nii.gz" for case in committed["held_out"]]
        return []

    def finish(self, stage: str, record: dict) -> dict:
        record = super().finish(stage, record)
        self.records.mkdir(parents=True, exist_ok=True)
        tmp = self.records / f".{stage}.json.partial"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.records / f"{stage}.json")
        return record


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# --------------------------------------------------------------------------- folds


def fold_split(p: rr.Pipeline, fold: int) -> tuple[list[str], list[str]]:
    """``(training cases, held-out cases)`` of nnU-Net fold ``fold``, from its ``splits_final.json``."""
    splits = (p.work / "teacher" / "nnUNet_preprocessed" / f"Dataset{rr.DATASET_ID:03d}_{rr.DATASET_NAME}"
              / "splits_final.json")  # fmt: skip
    if not splits.is_file():
        write_nnunet_splits(p, splits)
    entry = json.loads(splits.read_text())[fold]
    return sorted(entry["train"]), sorted(entry["val"])


def write_nnunet_splits(p: rr.Pipeline, splits: Path) -> None:
    """Write the 5-fold split nnU-Net's trainer would make (its own function, seed 12345, sorted ids).

    The trainer writes ``splits_final.json`` only when it first trains a fold, so a fresh machine
    that restored its folds from the committed assets has none. The result is checked against the
    held-out cases nnU-Net validated each committed fold on, so a different split cannot slip in.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    labels = p.work / "nnunet_raw" / f"Dataset{rr.DATASET_ID:03d}_{rr.DATASET_NAME}" / "labelsTr"
    identifiers = sorted(path.name.split(".")[0] for path in labels.glob("*.nii.gz"))
    folds = [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]}
             for f in generate_crossval_split(identifiers, seed=12345, n_splits=5)]  # fmt: skip
    for summary in sorted(teacher_assets.assets_for(p.args.teacher_iterations).glob("fold_*/validation/summary.json")):
        fold = int(summary.parent.parent.name.split("_")[1])
        validated = sorted(Path(c["reference_file"]).name.split(".")[0]
                           for c in json.loads(summary.read_text())["metric_per_case"])  # fmt: skip
        if validated != sorted(folds[fold]["val"]):
            raise SystemExit(f"{summary}: fold {fold} was validated on {validated}, the split gives "
                             f"{sorted(folds[fold]['val'])}")  # fmt: skip
    splits.parent.mkdir(parents=True, exist_ok=True)
    tmp = splits.with_name(".splits_final.json.partial")
    tmp.write_text(json.dumps(folds, indent=4) + "\n")
    os.replace(tmp, splits)


def fold_dir(p: rr.Pipeline, fold: int) -> Path:
    return p.work / "protocol" / f"fold_{fold}"


def link_cases(folder: Path, source: Path, cases: list[str]) -> Path:
    """A folder of links to the named case folders of ``source`` (never copies of the data)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = folder / case
        if not link.exists():
            link.symlink_to((source / case).resolve(), target_is_directory=True)
    return folder


def training_subset(p: rr.Pipeline, fold: int) -> Path:
    """The 2 mm nnU-Net raw dataset restricted to fold ``fold``'s training cases (links)."""
    train, _ = fold_split(p, fold)
    source = p.work / "nnunet_raw" / f"Dataset{rr.DATASET_ID:03d}_{rr.DATASET_NAME}"
    target = fold_dir(p, fold) / "raw" / source.name
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / sub).iterdir()):
            case = path.name.split(".")[0].rsplit("_", 1)[0] if sub == "imagesTr" else path.name.split(".")[0]
            link = target / sub / path.name
            if case in train and not link.exists():
                link.symlink_to(path.resolve())
    dataset = json.loads((source / "dataset.json").read_text())
    dataset["numTraining"] = len(train)
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return target


def stage_fold_teacher(p: rr.Pipeline, fold: int) -> dict:
    """Train (or restore) fold ``fold``, then score it alone with 8-TTA on its held-out cases at 1 mm."""
    model_dir = rr.teacher_model_dir(p)
    trained_here = (model_dir / f"fold_{fold}" / "checkpoint_final.pth").is_file()
    committed = teacher_assets.assets_for(p.args.teacher_iterations) / f"fold_{fold}" / "record.json"
    if trained_here and not committed.is_file():
        record = {"fold": fold, "iterations": p.args.teacher_iterations,
                  "cross_validation": rr.cross_validation_dice(model_dir, (fold,)).get(f"fold_{fold}")}  # fmt: skip
    else:  # trains, or restores the committed fold with the record of what its training cost
        record = rr.train_teacher_fold(p, fold)
    _, held_out = fold_split(p, fold)
    cases = link_cases(fold_dir(p, fold) / "held_out", p.work / "split" / "train", held_out)
    predictions = fold_dir(p, fold) / "predictions" / "teacher"
    seconds = predict_teacher(p, (f"fold_{fold}",), cases, predictions)
    return {"fold": fold, "held_out": held_out, "training": record, "seconds_per_case": seconds,
            "vs_ground_truth": evaluate_folder(predictions, cases, fold_dir(p, fold) / "evaluation" / "teacher")}


def predict_teacher(p: rr.Pipeline, folds: tuple[str, ...], cases: Path, out: Path) -> float:
    """The teacher's label maps (nnU-Net's predictor, 8-TTA, WT ⊇ TC ⊇ ET); seconds per case."""
    from distill.data.case import load_case
    from distill.data.conventions import get_convention
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti
    from distill.infer.postprocess import enforce_hierarchy
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    torch.set_num_threads(p.args.threads)
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=rr.teacher_model_dir(p), folds=folds, tta="mirror8"))
    out.mkdir(parents=True, exist_ok=True)
    start, found = time.perf_counter(), find_cases(cases)
    for files in found:
        case = load_case(files, with_labels=False)
        probabilities, _ = teacher.predict_timed(case)
        labels = get_convention("brats2017").from_regions(enforce_hierarchy(probabilities > 0.5))
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    return round((time.perf_counter() - start) / len(found), 1)


def evaluate_folder(predictions: Path, ground_truth: Path, out: Path) -> dict:
    """Per-case and mean Dice/HD95 per region (both sides in BraTS 2017-21 labels)."""
    from distill.eval.evaluate import EvaluateConfig, evaluate

    return rr.scores_of(evaluate(EvaluateConfig(pred_dir=predictions, gt_dir=ground_truth, out_dir=out,
                                                pred_convention="brats2017", gt_convention="brats2017",
                                                progress=False)))  # fmt: skip


def cache_dir(p: rr.Pipeline, fold: int) -> Path:
    return fold_dir(p, fold) / "cache"


def ensure_fold_cache(p: rr.Pipeline, fold: int) -> Path:
    """Fold ``fold``'s cache over its training cases, written (or finished) here if it is not."""
    from distill.cache import TeacherCache
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    folder = cache_dir(p, fold)
    try:
        TeacherCache.open(folder)
        return folder
    except Exception:  # absent or unfinished: the cache runner resumes what it finds
        pass
    result = run_teacher_cache(TeacherCacheConfig(model_dir=rr.teacher_model_dir(p), images=training_subset(p, fold),
                                                  out=folder, folds=(f"fold_{fold}",), mode="full",
                                                  target_spacing=(2.0, 2.0, 2.0), progress=False))  # fmt: skip
    if not result.complete:
        raise SystemExit(f"fold {fold} teacher cache incomplete: {result.failed}")
    return folder


def stage_fold_cache(p: rr.Pipeline, fold: int) -> dict:
    start = time.perf_counter()
    folder = ensure_fold_cache(p, fold)
    stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"fold": fold, "cases": fold_split(p, fold)[0], "members": [f"fold_{fold}"], "tta": "mirror8",
            "stored_bytes": stored, "seconds_this_run": round(time.perf_counter() - start, 1)}  # fmt: skip


def stage_fold_threshold(p: rr.Pipeline, fold: int) -> dict:
    """The threshold baseline on fold ``fold``'s held-out cases at 1 mm, scored like the teacher."""
    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti
    from distill.infer.threshold import threshold_labels

    _, held_out = fold_split(p, fold)
    cases = link_cases(fold_dir(p, fold) / "held_out", p.work / "split" / "train", held_out)
    predictions = fold_dir(p, fold) / "predictions" / "threshold"
    predictions.mkdir(parents=True, exist_ok=True)
    start, found = time.perf_counter(), find_cases(cases)
    for files in found:
        case = load_case(files, with_labels=False)
        write_nifti(predictions / f"{files.case_id}.nii.gz", threshold_labels(case, "brats2017", files.case_id),
                    case.affine)  # fmt: skip
    seconds = round((time.perf_counter() - start) / len(found), 1)
    return {"fold": fold, "held_out": held_out, "seconds_per_case": seconds,
            "vs_ground_truth": evaluate_folder(predictions, cases, fold_dir(p, fold) / "evaluation" / "threshold")}


def student_stage(fold: int, size: int, variant: str, seed: int) -> str:
    return f"protocol_fold{fold}_{size // 1000}k_{variant}_seed{seed}"


def export_and_predict(p: rr.Pipeline, fold: int, run: Path, name: str, thresholds=None) -> Path:
    """Export ``run`` as package ``name`` (``thresholds`` as given, else the card's) and predict the
    fold's held-out cases at 1 mm with it; returns the predictions folder."""
    from distill.export.run import ExportConfig, export_package
    from distill.infer.backends import BackendSpec
    from distill.infer.predict import PredictConfig, predict_folder

    package, held_out = fold_dir(p, fold) / "packages" / name, fold_dir(p, fold) / "held_out"
    export_package(ExportConfig(run_dir=run, out=package, held_out=held_out, max_held_out=1, overwrite=True,
                                thresholds=thresholds))  # fmt: skip
    predictions = fold_dir(p, fold) / "predictions" / name
    predict_folder(PredictConfig(package=package, input_dir=held_out, output_dir=predictions,
                                 backend=BackendSpec.parse("onnxruntime", threads=p.args.threads),
                                 label_convention="brats2017", progress=False))  # fmt: skip
    return predictions


def stage_fold_student(p: rr.Pipeline, fold: int, size: int, variant: str, seed: int) -> dict:
    """Train one student on fold ``fold``'s cache, export it, score it on the fold's held-out cases."""
    from distill.train import train_student
    from distill.train.recipes import build_config

    name = student_stage(fold, size, variant, seed).removeprefix("protocol_")
    run = fold_dir(p, fold) / "students" / name
    overrides = {"params": size, "seed": seed, "progress": False, **VARIANTS[variant]}
    if overrides.pop("live_teacher", False):
        overrides.update(teacher_model_dir=str(rr.teacher_model_dir(p)), teacher_fold=str(fold))
    if p.args.steps is not None and "steps" not in VARIANTS[variant]:  # warm-ups follow (build_config)
        overrides["steps"] = p.args.steps
    config = build_config(ensure_fold_cache(p, fold), run, RECIPE_FOR_SIZE[size], overrides)
    trained = train_student(config)
    held_out = fold_dir(p, fold) / "held_out"
    predictions = export_and_predict(p, fold, run, name)
    card = json.loads(trained.card.read_text())
    return {
        "fold": fold, "size": size, "variant": variant, "seed": seed, "recipe": RECIPE_FOR_SIZE[size],
        "overrides": {k: v for k, v in overrides.items() if k not in ("progress", "teacher_model_dir")},
        "parameters": trained.parameters,
        "steps": config.steps, "train_seconds": round(sum(link.get("seconds", 0) for link in card["chain"]), 1),
        "thresholds": (card.get("calibration") or {}).get("thresholds"),
        "vs_ground_truth": evaluate_folder(predictions, held_out, fold_dir(p, fold) / "evaluation" / name),
        "vs_teacher": evaluate_folder(predictions, fold_dir(p, fold) / "predictions" / "teacher",
                                      fold_dir(p, fold) / "evaluation" / f"{name}_vs_teacher"),
    }  # fmt: skip


def default_thresholds_stage(fold: int, size: int, variant: str, seed: int) -> str:
    return student_stage(fold, size, variant, seed) + "_t050"


def calibrated(record: dict) -> bool:
    """Whether a student record's package used thresholds other than 0.5 (fold 0's first students,
    trained while the recipes still calibrated on one validation case)."""
    return any(t != 0.5 for t in (record.get("thresholds") or {}).values())


def at_half(p: rr.Pipeline, fold: int, size: int, variant: str, seed: int) -> dict:
    """The student's scores at thresholds 0.5, what the recipes now ship: its ``_t050`` twin where
    the package was calibrated, else its own record."""
    record = p.done(student_stage(fold, size, variant, seed))
    if record is None:
        raise LookupError(f"{student_stage(fold, size, variant, seed)}: no record yet; run protocol.py for its fold")
    if not calibrated(record):
        return record
    twin = p.done(default_thresholds_stage(fold, size, variant, seed))
    if twin is None:  # summary_scope leaves such students out; a direct caller gets the stage's name
        raise LookupError(f"{default_thresholds_stage(fold, size, variant, seed)}: no record yet (the calibrated "
                          "student's 0.5 twin); run protocol.py for its fold to score it")
    return twin


def scored_at_half(p: rr.Pipeline, fold: int, size: int, variant: str, seed: int) -> bool:
    """Whether the student's 0.5-threshold scores are on record (its own, or its twin's)."""
    record = p.done(student_stage(fold, size, variant, seed))
    return record is not None and (not calibrated(record)
                                   or p.done(default_thresholds_stage(fold, size, variant, seed)) is not None)


def stage_fold_student_default_thresholds(p: rr.Pipeline, fold: int, size: int, variant: str, seed: int) -> dict:
    """The same trained student exported with 0.5 for every region instead of the thresholds the
    recipe calibrated on its one validation case, and scored the same way: the calibration's
    effect, paired on the same network, for the price of one export and one prediction."""
    name = student_stage(fold, size, variant, seed).removeprefix("protocol_")
    run, held_out = fold_dir(p, fold) / "students" / name, fold_dir(p, fold) / "held_out"
    predictions = export_and_predict(p, fold, run, f"{name}_t050", thresholds=(0.5, 0.5, 0.5))
    scores = evaluate_folder(predictions, held_out, fold_dir(p, fold) / "evaluation" / f"{name}_t050")
    return {"fold": fold, "size": size, "variant": variant, "seed": seed, "thresholds": [0.5, 0.5, 0.5],
            "vs_ground_truth": scores}


#: Post-processing candidates (distill.infer.postprocess.PostprocessConfig options, sizes in ml),
#: chosen as nnU-Net chooses its own, on held-out predictions: keep only the largest connected
#: component of WT, then also of TC, then of every region; or, milder, drop WT components under
#: 1 or 10 ml (a whole-tumour component under 10 ml is rarely the tumour: the smallest of the 14
#: cases is 27 ml; keeping only the largest fails outright where a false positive outgrows the
#: tumour, as on fold 0's Brats18_2013_11_1). The hierarchy clips what lies outside a kept parent.
#: Scored on each student's saved predictions (postprocess_labels), so no network runs again.
POSTPROCESSING = {
    "largest_wt": {"keep_largest": ["WT"]},
    "largest_wt_tc": {"keep_largest": ["WT", "TC"]},
    "largest_all": {"keep_largest": ["WT", "TC", "ET"]},
    "wt_min_1ml": {"min_size": {"WT": 1.0}},
    "wt_min_10ml": {"min_size": {"WT": 10.0}},
}


def describe_postprocessing(options) -> str:
    """``largest WT, TC`` / ``WT under 1 ml dropped`` (a record of an earlier version holds a list)."""
    if isinstance(options, list):
        return "largest " + ", ".join(options)
    parts = []
    if options.get("keep_largest"):
        parts.append("largest " + ", ".join(options["keep_largest"]))
    parts += [f"{region} under {size:g} ml dropped" for region, size in options.get("min_size", {}).items()]
    return "; ".join(parts)


def postprocess_config(options: dict):
    from distill.infer.postprocess import PostprocessConfig

    return PostprocessConfig(keep_largest=tuple(options.get("keep_largest", ())), min_size=options.get("min_size", {}),
                             min_size_unit="ml", enforce_hierarchy=True)  # fmt: skip


def postprocessed_stage(stage: str) -> str:
    return f"{stage}_post"


def predictions_of(p: rr.Pipeline, fold: int, stage: str) -> Path:
    """The held-out predictions a student (or the teacher) stage left in this work folder."""
    name = "teacher" if stage.endswith("_teacher") else stage.removeprefix("protocol_")
    return fold_dir(p, fold) / "predictions" / name


def stage_postprocessing(p: rr.Pipeline, fold: int, stage: str) -> dict:
    """Stage ``stage``'s held-out predictions under each of POSTPROCESSING, scored against the experts
    (and, for a student, against fold ``fold``'s teacher as it predicted)."""
    from distill.data.nifti import read_nifti, write_nifti
    from distill.infer.postprocess import postprocess_labels

    source = predictions_of(p, fold, stage)
    held_out, name = fold_dir(p, fold) / "held_out", source.name
    # "none" scores the very predictions cleaned below, so each choice is paired within this record
    # (the stage's own record may come from an earlier copy of the same network's predictions)
    scored = {"none": {"vs_ground_truth": evaluate_folder(source, held_out,
                                                         fold_dir(p, fold) / "evaluation" / f"{name}_none")}}
    if not stage.endswith("_teacher"):
        scored["none"]["vs_teacher"] = evaluate_folder(source, fold_dir(p, fold) / "predictions" / "teacher",
                                                       fold_dir(p, fold) / "evaluation" / f"{name}_none_vs_teacher")
    for choice, options in POSTPROCESSING.items():
        config = postprocess_config(options)
        out = fold_dir(p, fold) / "predictions" / f"{name}_{choice}"
        out.mkdir(parents=True, exist_ok=True)
        for prediction in sorted(source.glob("*.nii.gz")):
            image = read_nifti(prediction)
            cleaned = postprocess_labels(image.data.astype(np.uint8), "brats2017", config, spacing=image.spacing)
            write_nifti(out / prediction.name, cleaned, image.affine)
        scored[choice] = {"vs_ground_truth": evaluate_folder(out, held_out, fold_dir(p, fold) / "evaluation" /
                                                             f"{name}_{choice}")}
        if not stage.endswith("_teacher"):
            scored[choice]["vs_teacher"] = evaluate_folder(out, fold_dir(p, fold) / "predictions" / "teacher",
                                                           fold_dir(p, fold) / "evaluation" /
                                                           f"{name}_{choice}_vs_teacher")  # fmt: skip
    return {"fold": fold, "of": stage, "choices": POSTPROCESSING, "scored": scored}


def run_postprocessing(p: rr.Pipeline, fold: int, stage: str) -> None:
    """The post-processing stage of ``stage``, when its predictions are in this work folder (a
    student trained in a lost work folder has only its record: it is left out, and said so)."""
    post = postprocessed_stage(stage)
    recorded = p.done(post)
    if recorded is not None and covers_every_choice(recorded):
        return
    if not any(predictions_of(p, fold, stage).glob("*.nii.gz")):
        print(f"[{post}] skipped: {stage}'s predictions are not in this work folder", flush=True)
        return
    # a record from before a candidate was added is scored again, with every candidate
    p.run_now(post, lambda: stage_postprocessing(p, fold, stage))


def covers_every_choice(post: dict) -> bool:
    return {"none", *POSTPROCESSING} <= set(post["scored"])


def mirrored_stage(stage: str) -> str:
    return f"{stage}_mirror8"


def stage_mirrored(p: rr.Pipeline, fold: int, stage: str) -> dict:
    """Student ``stage``'s package run again on the fold's held-out cases with mirror test-time
    augmentation (8 passes, as the teacher predicts), scored like the student's own predictions."""
    from distill.infer.backends import BackendSpec
    from distill.infer.predict import PredictConfig, predict_folder

    name = stage.removeprefix("protocol_")
    held_out, out = fold_dir(p, fold) / "held_out", fold_dir(p, fold) / "predictions" / f"{name}_mirror8"
    result = predict_folder(PredictConfig(package=fold_dir(p, fold) / "packages" / name, input_dir=held_out,
                                          output_dir=out, tta="mirror8", label_convention="brats2017",
                                          backend=BackendSpec.parse("onnxruntime", threads=p.args.threads),
                                          progress=False))  # fmt: skip
    seconds = round(result.seconds / len(result.written), 2)
    return {"fold": fold, "of": stage, "tta": "mirror8", "seconds_per_case": seconds,
            "vs_ground_truth": evaluate_folder(out, held_out, fold_dir(p, fold) / "evaluation" / f"{name}_mirror8"),
            "vs_teacher": evaluate_folder(out, fold_dir(p, fold) / "predictions" / "teacher",
                                          fold_dir(p, fold) / "evaluation" / f"{name}_mirror8_vs_teacher")}  # fmt: skip


def run_mirrored(p: rr.Pipeline, fold: int, stage: str) -> None:
    """The mirror-TTA stage of student ``stage``, when its package is in this work folder (students
    trained in a lost work folder have only their records: left out, and said so)."""
    name = stage.removeprefix("protocol_")
    package = fold_dir(p, fold) / "packages" / name
    if p.done(mirrored_stage(stage)) is None and not (package / "model.json").is_file():
        print(f"[{mirrored_stage(stage)}] skipped: {name}'s package is not in this work folder", flush=True)
        return
    p.run(mirrored_stage(stage), lambda: stage_mirrored(p, fold, stage))


# --------------------------------------------------------------------------- summary


def case_scores(record: dict, metric: str = "mean_dice", side: str = "vs_ground_truth") -> dict[str, float]:
    """Case -> a score from a stage record: ``mean_dice`` (over WT/TC/ET), ``mean_hd95``, or one
    region's Dice (``"WT"``) or HD95 (``"WT_hd95"``); against the experts, or with ``side``
    ``"vs_teacher"`` against the fold's teacher (agreement)."""
    per_case = record[side]["per_case"]
    if metric in ("mean_dice", "mean_hd95"):
        key = metric.removeprefix("mean_")
        return {case: float(np.mean([per_case[case][r][key] for r in rr.REGIONS])) for case in per_case}
    region, _, key = metric.partition("_")
    return {case: float(per_case[case][region][key or "dice"]) for case in per_case}


#: The issue's retention goals: distilled students keep this share of the teacher's mean Dice.
RETENTION_GOAL = {100_000: 0.97, 30_000: 0.95}


#: The issue's HD95 goal: no worse than this multiple of the teacher's.
HD95_GOAL = 1.2


def hd95_against_goal(ratio) -> dict:
    """The HD95 ratio's interval read against HD95_GOAL (lower is better, so the goal is reached
    when the whole interval lies at or below it)."""
    entry = {k: v for k, v in ratio.to_dict().items() if k != "verdict"}
    entry["goal"] = HD95_GOAL
    entry["goal_reached"] = "yes" if ratio.high <= HD95_GOAL else ("no" if ratio.low > HD95_GOAL else "not decided")
    return entry


def retention_against_goal(ratio, size: int) -> dict:
    """The retention interval and whether it clears the size's goal (a ratio, not a difference:
    the interval is read against the goal, not against zero)."""
    entry = {k: v for k, v in ratio.to_dict().items() if k != "verdict"}
    goal = RETENTION_GOAL[size]
    entry["goal"] = goal
    entry["goal_reached"] = "yes" if ratio.low >= goal else ("no" if ratio.high < goal else "not decided")
    return entry


#: The seeds the committed summary covers, whatever seeds one command trains: a ``--seeds 0`` run
#: must not shrink SUMMARY.md to one seed.
SUMMARY_SEEDS = (0, 1)


def summary_scope(p: rr.Pipeline, seeds=SUMMARY_SEEDS) -> tuple[list[int], dict[int, dict[str, tuple]]]:
    """The folds and, per size, the variants (with their seeds) the summary can cover so far.

    A fold counts once its teacher and its label-only students (both sizes, every seed of
    ``seeds``) are scored. A variant counts at a size once it is scored on every counted fold,
    with all of ``seeds`` or, failing that, with the first seed alone: ablations are trained
    once per fold where the budget is short, and pair with the others on that seed. A variant
    trained at one size only (``recipe_uncertainty`` at 30k) still enters that size's table.
    """
    def complete(fold, size, variant, among):
        return all(scored_at_half(p, fold, size, variant, seed) for seed in among)

    sizes = sorted(RECIPE_FOR_SIZE, reverse=True)
    finished = [f for f in range(5) if p.done(f"protocol_fold{f}_teacher")
                and all(complete(f, size, BASELINE, seeds) for size in sizes)]  # fmt: skip
    variants: dict[int, dict[str, tuple]] = {size: {} for size in sizes}
    for size in sizes:
        for variant in VARIANTS if finished else ():
            for among in (tuple(seeds), tuple(seeds[:1])):
                if all(complete(f, size, variant, among) for f in finished):
                    variants[size][variant] = among
                    break
    return finished, variants


def not_yet_covered(p: rr.Pipeline, folds, variants_by_size: dict, seeds=SUMMARY_SEEDS) -> dict[str, list[str]]:
    """Per size, variants with a record on some fold that the summary leaves out, each with the
    counted folds it still lacks on the first seed (so a table that shrank says why)."""
    missing: dict[str, list[str]] = {}
    for size, variants in variants_by_size.items():
        for variant in VARIANTS:
            recorded = any(p.done(student_stage(f, size, variant, s)) for f in range(5) for s in seeds)
            if variant in variants or not recorded:
                continue
            lacking = [str(f) for f in folds if not scored_at_half(p, f, size, variant, seeds[0])]
            missing.setdefault(str(size), []).append(f"{variant} (lacks fold {', '.join(lacking)})")
    return missing


def pilot_scope(p: rr.Pipeline, folds, variants_by_size: dict, seed: int = 0) -> list[dict]:
    """Variants outside the summary's table, each with the counted folds on which it, the label-only
    student and its ladder reference are scored on ``seed`` (and the PILOT_COMPARISONS scored on all
    of those folds): a pilot is read on its own folds before it is trained on all of them."""
    pilots = []
    for size, covered in variants_by_size.items():
        for variant in VARIANTS:
            if variant in covered or variant == BASELINE:
                continue
            needed = list(dict.fromkeys([variant, BASELINE, LADDER_REFERENCE.get(variant, BASELINE)]))
            own = [f for f in folds if all(scored_at_half(p, f, size, v, seed) for v in needed)]
            extra = [o for o in PILOT_COMPARISONS.get(variant, ()) if o not in needed
                     and all(scored_at_half(p, f, size, o, seed) for f in own)]  # fmt: skip
            if own:
                pilots.append({"size": size, "variant": variant, "folds": own, "compared_with": needed[1:] + extra})
    return pilots


def summarise_pilots(p: rr.Pipeline, pilots: list[dict], seed: int = 0) -> list[dict]:
    """Each pilot's scores and paired differences on its own folds and ``seed`` (see pilot_scope)."""
    from distill.eval.paired import paired_difference

    rows = []
    for pilot in pilots:
        size, variant, folds = pilot["size"], pilot["variant"], pilot["folds"]
        among = {v: (seed,) for v in (variant, *pilot["compared_with"])}
        own = summarise(p, folds, {size: among}, (seed,))["sizes"][str(size)]
        mine = own["variants"][variant]

        def scores(name, size=size, folds=folds):
            """Case -> the student's mean Dice, over the pilot's folds."""
            return {c: v for f in folds for c, v in case_scores(at_half(p, f, size, name, seed)).items()}

        def paired(name, other):
            """``name`` minus ``other`` on the cases both were scored on, matched by case id."""
            a, b = scores(name), scores(other)
            shared = sorted(set(a) & set(b))
            return paired_difference(np.asarray([[a[c]] for c in shared]), np.asarray([[b[c]] for c in shared]))

        rows.append({"size": size, "variant": variant, "folds": folds, "seed": seed,
                     "cases": len(scores(variant)), "mean_dice": mine["mean_dice"],
                     **{f"{r}_dice": mine[f"{r}_dice"] for r in rr.REGIONS},
                     "mean_hd95": mine["mean_hd95"], "retention_of_teacher": mine["retention_of_teacher"],
                     "teacher_agreement": mine["teacher_agreement"],
                     "minus": {other: paired(variant, other).to_dict()
                               for other in pilot["compared_with"]}})  # fmt: skip
    return rows


def summarise(p: rr.Pipeline, folds, variants_by_size: dict, seeds) -> dict:
    """Paired differences over every held-out case of the finished folds (see the module docstring).

    ``variants_by_size`` maps each size to its variants, as a list (each with ``seeds``) or as
    ``{variant: its seeds}`` (what ``summary_scope`` gives). A comparison pairs two models on the
    cases and on the seeds both have.
    """
    from distill.eval.paired import paired_difference, retention

    teacher = {case: score for fold in folds
               for case, score in case_scores(p.done(f"protocol_fold{fold}_teacher")).items()}  # fmt: skip
    summary: dict = {"folds": list(folds), "seeds": list(seeds), "cases": sorted(teacher), "sizes": {}}
    order = [case for fold in folds for case in sorted(case_scores(p.done(f"protocol_fold{fold}_teacher")))]
    # the training-free floor, once every counted fold has it
    floors = [p.done(f"protocol_fold{fold}_threshold") for fold in folds]
    threshold = None if not all(floors) else {case: score for r in floors for case, score in case_scores(r).items()}
    if threshold is not None:
        summary["threshold"] = {
            "mean_dice": round(float(np.mean(list(threshold.values()))), 4),
            **{f"{r}_dice": round(float(np.mean([s for f in floors for s in case_scores(f, r).values()])), 4)
               for r in rr.REGIONS},
            "teacher_minus_threshold": paired_difference(
                np.asarray([[teacher[c]] for c in order]), np.asarray([[threshold[c]] for c in order])).to_dict(),
        }

    def matrix(size, variant, among_seeds, metric="mean_dice", record=lambda *a: at_half(p, *a), among=folds,
               side="vs_ground_truth"):
        """``(cases, seeds)`` scores, cases in fold order then by name (the order ``teacher`` sorts into)."""
        rows = []
        for fold in among:
            per_seed = [case_scores(record(fold, size, variant, s), metric, side) for s in among_seeds]
            rows += [[scores[case] for scores in per_seed] for case in sorted(per_seed[0])]
        return np.asarray(rows)

    def teacher_matrix(among_seeds, metric="mean_dice"):
        own = teacher if metric == "mean_dice" else {
            case: score for fold in folds
            for case, score in case_scores(p.done(f"protocol_fold{fold}_teacher"), metric).items()}  # fmt: skip
        return np.repeat(np.asarray([[own[c]] for c in order]), len(among_seeds), axis=1)

    teacher_hd95 = {r: round(float(teacher_matrix((0,), f"{r}_hd95").mean()), 2) for r in rr.REGIONS}
    summary["teacher"] = {"mean_dice": round(float(np.mean(list(teacher.values()))), 4),
                          **{f"{r}_dice": round(float(teacher_matrix((0,), r).mean()), 4) for r in rr.REGIONS},
                          **{f"{r}_hd95": v for r, v in teacher_hd95.items()},
                          "mean_hd95": round(float(teacher_matrix((0,), "mean_hd95").mean()), 2)}  # fmt: skip

    def calibration_effect(size, variant, among_seeds):
        """One-case calibration minus 0.5 on the same networks, over the folds trained with it."""
        among = [f for f in folds
                 if all(calibrated(p.done(student_stage(f, size, variant, s))) for s in among_seeds)]  # fmt: skip
        if not among:
            return None
        own = matrix(size, variant, among_seeds, record=lambda *a: p.done(student_stage(*a)), among=among)
        return {**paired_difference(own, matrix(size, variant, among_seeds, among=among)).to_dict(), "folds": among}

    def agreement_folds(size, variant, among_seeds):
        return [f for f in folds if all("vs_teacher" in at_half(p, f, size, variant, s) for s in among_seeds)]

    def agreement(size, variants, variant, own_seeds):
        """Dice against the fold's teacher, and its difference from the label-only student's."""
        among = [f for f in agreement_folds(size, variant, own_seeds)
                 if f in agreement_folds(size, BASELINE, own_seeds)]  # fmt: skip
        if not among:
            return {"teacher_agreement": None, "agreement_minus_gt": None, "agreement_folds": []}
        return {"teacher_agreement": round(float(matrix(size, variant, own_seeds, among=among,
                                                        side="vs_teacher").mean()), 4),
                "agreement_minus_gt": minus(size, variants, variant, BASELINE, side="vs_teacher", among=among),
                "agreement_folds": among}  # fmt: skip

    def minus(size, variants, variant, other, side="vs_ground_truth", among=folds):
        """``variant`` minus ``other`` on the seeds both have (None when they share none)."""
        both = [s for s in variants.get(variant, ()) if s in variants.get(other, ())]
        if variant == other or not both:
            return None
        return {**paired_difference(matrix(size, variant, both, side=side, among=among),
                                    matrix(size, other, both, side=side, among=among)).to_dict(),
                "minuend": variant, "reference": other, "seeds": both}  # fmt: skip

    def ladder_step(size, variants, variant):
        """What the step adds: the variant minus its reference, or for an ablation the recipe minus it."""
        reference = LADDER_REFERENCE.get(variant)
        if reference in (None, BASELINE):
            return None
        return minus(size, variants, reference, variant) if variant in ABLATIONS else minus(size, variants,
                                                                                              variant, reference)

    for size, listed in variants_by_size.items():
        variants = dict(listed) if isinstance(listed, dict) else {v: tuple(seeds) for v in listed}
        entry = {"teacher_minus_gt": paired_difference(teacher_matrix(seeds), matrix(size, BASELINE, seeds)).to_dict(),
                 "variants": {}}  # fmt: skip
        if threshold is not None:
            floor = np.repeat(np.asarray([[threshold[c]] for c in order]), len(seeds), axis=1)
            entry["gt_minus_threshold"] = paired_difference(matrix(size, BASELINE, seeds), floor).to_dict()


        for variant, own_seeds in variants.items():
            scores = matrix(size, variant, own_seeds)
            entry["variants"][variant] = {
                "seeds": list(own_seeds),
                "mean_dice": round(float(scores.mean()), 4),
                **{f"{r}_dice": round(float(matrix(size, variant, own_seeds, r).mean()), 4) for r in rr.REGIONS},
                **{f"{r}_hd95": round(float(matrix(size, variant, own_seeds, f"{r}_hd95").mean()), 2)
                   for r in rr.REGIONS},
                "mean_hd95": round(float(matrix(size, variant, own_seeds, "mean_hd95").mean()), 2),
                # HD95 (mean over regions and cases) as a multiple of the teacher's: the goal is <= 1.2
                "hd95_ratio_to_teacher": hd95_against_goal(retention(
                    matrix(size, variant, own_seeds, "mean_hd95"), teacher_matrix(own_seeds, "mean_hd95"))),
                # agreement: mean Dice against the fold's teacher's own label maps, over the folds
                # whose records have it (fold 0's 0.5-threshold twins were scored against the experts only)
                **agreement(size, variants, variant, own_seeds),
                "minus_gt": minus(size, variants, variant, BASELINE),
                # the ladder step: this variant over the one it adds to (None when that one is missing)
                "minus_reference": ladder_step(size, variants, variant),
                # retention is a claim about distilled students: the label-only one gets none
                "retention_of_teacher": None if variant in LABEL_ONLY
                else retention_against_goal(retention(scores, teacher_matrix(own_seeds)), size),
                # the recipes' former one-case calibration against 0.5 on the same students
                "calibrated_minus_default": calibration_effect(size, variant, own_seeds),
            }
        entry["teacher_mean_dice"] = round(float(np.mean(list(teacher.values()))), 4)
        summary["sizes"][str(size)] = entry
    return summary


def summarise_postprocessing(p: rr.Pipeline, folds, variants_by_size: dict, seeds) -> dict:
    """Each POSTPROCESSING choice minus none, over the students whose predictions were scored with it.

    Per size, each held-out case contributes the mean over its students (each variant and seed the
    summary covers, ``variants_by_size``, that has a ``_post`` record) of the choice's score and of
    the same predictions unprocessed (the record's ``none``); the two are paired over cases (distill.eval.paired). The
    teacher's own predictions get the same choices, shown beside (nnU-Net applies its
    post-processing to the teacher too)."""
    from distill.eval.paired import paired_difference

    out: dict = {"choices": POSTPROCESSING, "sizes": {}, "teacher": {}}
    teacher_posts = {f: p.done(postprocessed_stage(f"protocol_fold{f}_teacher")) for f in folds}
    if all(post is not None and covers_every_choice(post) for post in teacher_posts.values()):
        for choice in POSTPROCESSING:
            before = {c: v for f in folds
                      for c, v in case_scores(teacher_posts[f]["scored"]["none"]).items()}
            after = {c: v for f in folds for c, v in case_scores(teacher_posts[f]["scored"][choice]).items()}
            hd95 = [v for f in folds for v in case_scores(teacher_posts[f]["scored"][choice], "mean_hd95").values()]
            cases = sorted(before)
            difference = paired_difference(np.asarray([[after[c]] for c in cases]),
                                           np.asarray([[before[c]] for c in cases]))  # fmt: skip
            out["teacher"][choice] = {"mean_dice": round(float(np.mean([after[c] for c in cases])), 4),
                                      "mean_hd95": round(float(np.mean(hd95)), 2),
                                      "minus_none": difference.to_dict()}  # fmt: skip
    for size, listed in variants_by_size.items():
        variants = dict(listed) if isinstance(listed, dict) else {v: tuple(seeds) for v in listed}
        students = [(f, v, s) for f in folds for v, own in variants.items() for s in own
                    if covers_every_choice(p.done(postprocessed_stage(student_stage(f, size, v, s))) or {"scored": {}})
                    and not calibrated(p.done(student_stage(f, size, v, s)))]  # fmt: skip
        if not students:
            continue
        entry = {"students": len(students), "choices": {}}
        for choice in POSTPROCESSING:
            own, post, hd_own, hd_post = {}, {}, {}, {}
            for f, v, s in students:
                post_record = p.done(postprocessed_stage(student_stage(f, size, v, s)))
                record = post_record["scored"]["none"]
                cleaned = post_record["scored"][choice]
                for target, source, metric in ((own, record, "mean_dice"), (post, cleaned, "mean_dice"),
                                               (hd_own, record, "mean_hd95"), (hd_post, cleaned, "mean_hd95")):
                    for case, value in case_scores(source, metric).items():
                        target.setdefault(case, []).append(value)
            cases = sorted(own)
            entry["choices"][choice] = {
                "cases": len(cases),
                "mean_dice": round(float(np.mean([np.mean(post[c]) for c in cases])), 4),
                "none_mean_dice": round(float(np.mean([np.mean(own[c]) for c in cases])), 4),
                "mean_hd95": round(float(np.mean([np.mean(hd_post[c]) for c in cases])), 2),
                "none_mean_hd95": round(float(np.mean([np.mean(hd_own[c]) for c in cases])), 2),
                "minus_none": paired_difference(np.asarray([[np.mean(post[c])] for c in cases]),
                                                np.asarray([[np.mean(own[c])] for c in cases])).to_dict(),
            }
        out["sizes"][str(size)] = entry
    return out


def summarise_mirroring(p: rr.Pipeline, variants_by_size: dict, seeds) -> dict:
    """Mirror TTA minus one pass on the same networks, per size and variant, over the folds whose
    students (every seed) have a ``_mirror8`` record: paired over cases and seeds."""
    from distill.eval.paired import paired_difference

    def mirrored(stage):
        return p.done(mirrored_stage(stage))

    def matrix(record_of, size, variant, folds, metric="mean_dice", side="vs_ground_truth"):
        """``(cases, seeds)`` scores of ``record_of(student stage)``, cases in fold order then by name."""
        rows = []
        for fold in folds:
            per_seed = [case_scores(record_of(student_stage(fold, size, variant, s)), metric, side) for s in seeds]
            rows += [[scores[case] for scores in per_seed] for case in sorted(per_seed[0])]
        return np.asarray(rows)

    out: dict = {}
    for size, listed in variants_by_size.items():
        for variant in listed:
            folds = [f for f in range(5) if all(mirrored(student_stage(f, size, variant, s))
                                                and not calibrated(p.done(student_stage(f, size, variant, s)))
                                                for s in seeds)]  # fmt: skip
            if not folds:
                continue
            own = (size, variant, folds)
            out.setdefault(str(size), {})[variant] = {
                "folds": folds, "seeds": list(seeds),
                "mean_dice": round(float(matrix(mirrored, *own).mean()), 4),
                "none_mean_dice": round(float(matrix(p.done, *own).mean()), 4),
                "mean_hd95": round(float(matrix(mirrored, *own, "mean_hd95").mean()), 2),
                "none_mean_hd95": round(float(matrix(p.done, *own, "mean_hd95").mean()), 2),
                "minus_none": paired_difference(matrix(mirrored, *own), matrix(p.done, *own)).to_dict(),
                "agreement_minus_none": paired_difference(matrix(mirrored, *own, side="vs_teacher"),
                                                          matrix(p.done, *own, side="vs_teacher")).to_dict(),
            }  # fmt: skip
    return out


def mirroring_lines(mirroring: dict | None) -> list[str]:
    """SUMMARY.md's test-time mirroring section (empty until a student has a ``_mirror8`` record)."""
    if not mirroring:
        return []
    lines = ["## Test-time mirroring on the validation cases", "",
             "Each student's package run again with the 8 mirrorings averaged (`distill predict --tta mirror8`, as "
             "the teacher predicts), paired with its own one-pass predictions on the same cases and seeds.", "",
             "| size | variant | folds | mean Dice (one pass) | mirror8 minus one pass [95 % CI] "
             "| agreement with the teacher: minus one pass [95 % CI] | mean HD95 (one pass) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for size, variants in mirroring.items():
        for variant, m in variants.items():
            d, a = m["minus_none"], m["agreement_minus_none"]
            lines.append(f"| {int(size) // 1000}k | {variant} | {m['folds']} | {m['mean_dice']:.3f} "
                         f"({m['none_mean_dice']:.3f}) | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                         f"| {a['mean']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}] "
                         f"| {m['mean_hd95']:.1f} ({m['none_mean_hd95']:.1f}) |")
    return lines + [""]


def _interval(difference: dict, row_seeds) -> str:
    """``+0.012 [-0.030, +0.051]``, naming the seeds when the pairing used fewer than ``row_seeds``."""
    text = f"{difference['mean']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"
    paired = difference.get("seeds")
    if paired is not None and list(paired) != list(row_seeds):
        text += f" on seed {','.join(map(str, paired))}"
    return text


def write_summary(summary: dict, folder: Path) -> None:
    """``SUMMARY.json`` and ``SUMMARY.md`` in ``folder`` (``protocol/`` beside this file for a real run)."""
    (folder / "SUMMARY.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Fold-matched protocol: summary", "",
             f"Held-out cases: {len(summary['cases'])} (folds {summary['folds']}), seeds {summary['seeds']}. "
             "Mean Dice over WT/TC/ET against the expert labels at 1 mm, every student at thresholds 0.5; "
             "differences are paired over cases and "
             "seeds with a 95 % two-stage bootstrap interval (cases, then seeds).", ""]  # fmt: skip
    floor = summary.get("threshold")
    if floor:
        t = floor["teacher_minus_threshold"]
        lines += [f"Training-free threshold baseline (the floor): mean Dice {floor['mean_dice']:.3f} "
                  f"(WT {floor['WT_dice']:.3f}, TC {floor['TC_dice']:.3f}, ET {floor['ET_dice']:.3f}); "
                  f"teacher minus threshold {t['mean']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}].", ""]  # fmt: skip
    for size, entry in summary["sizes"].items():
        t = entry["teacher_minus_gt"]
        lines += [f"## {int(size) // 1000}k", "",
                  f"Teacher (fold alone, 8-TTA) mean Dice {entry['teacher_mean_dice']:.3f}; teacher minus label-only "
                  f"student {t['mean']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}]"
                  + ("" if "gt_minus_threshold" not in entry else
                     "; label-only student minus threshold "
                     f"{entry['gt_minus_threshold']['mean']:+.3f} [{entry['gt_minus_threshold']['low']:+.3f}, "
                     f"{entry['gt_minus_threshold']['high']:+.3f}]") + ".", "",
                  "| variant | seeds | mean Dice | WT | TC | ET | minus label-only [95 % CI] "
                  "| ladder step: minus its reference [95 % CI] "
                  "| retention of teacher [95 % CI] | one-case calibration minus 0.5 [95 % CI] (folds) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        hd95_rows = ["| variant | HD95 WT | TC | ET | mean | multiple of the teacher's [95 % CI] (goal <= 1.2) "
                     "| agreement with the teacher (Dice) | agreement minus label-only [95 % CI] |",
                     "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for variant, v in entry["variants"].items():
            own = v.get("seeds", summary["seeds"])
            diff = v["minus_gt"]
            shown = "-" if diff is None else _interval(diff, summary["seeds"])
            r = v["retention_of_teacher"]
            kept = "-" if r is None else (f"{r['mean']:.1%} [{r['low']:.1%}, {r['high']:.1%}] "
                                          f"(goal {r['goal']:.0%}: {r['goal_reached']})")  # fmt: skip
            c = v.get("calibrated_minus_default")
            calibration = "-" if c is None else f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] ({c['folds']})"
            step = v.get("minus_reference")
            stepped = ("-" if step is None
                       else f"{_interval(step, summary['seeds'])} ({step['minuend']} minus {step['reference']})")
            seeds_shown = ",".join(str(s) for s in own)
            lines.append(f"| {variant} | {seeds_shown} | {v['mean_dice']:.3f} | {v['WT_dice']:.3f} | "
                         f"{v['TC_dice']:.3f} | {v['ET_dice']:.3f} | {shown} | {stepped} | {kept} | {calibration} |")
            if "mean_hd95" in v:
                h, agree = v["hd95_ratio_to_teacher"], v.get("agreement_minus_gt")
                hd95_rows.append(f"| {variant} | {v['WT_hd95']:.1f} | {v['TC_hd95']:.1f} | {v['ET_hd95']:.1f} | "
                                 f"{v['mean_hd95']:.1f} | {h['mean']:.2f}x [{h['low']:.2f}, {h['high']:.2f}] "
                                 f"({h['goal_reached']}) | "
                                 f"{'-' if v['teacher_agreement'] is None else format(v['teacher_agreement'], '.3f')}"
                                 f" (folds {v['agreement_folds']}) | "
                                 f"{'-' if agree is None else _interval(agree, summary['seeds'])} |")
        if summary.get("not_yet", {}).get(size):
            lines += ["", "Not yet in this table: " + "; ".join(summary["not_yet"][size]) + "."]
        teacher = summary.get("teacher")
        if teacher and len(hd95_rows) > 2:
            lines += ["", f"Distance and agreement (HD95 in mm, mean over cases; the teacher's: WT "
                          f"{teacher['WT_hd95']:.1f}, TC {teacher['TC_hd95']:.1f}, ET {teacher['ET_hd95']:.1f}, "
                          f"mean {teacher['mean_hd95']:.1f}):", "", *hd95_rows]  # fmt: skip
        lines.append("")
    lines += pilot_lines(summary.get("pilots"))
    lines += postprocessing_lines(summary.get("postprocessing"))
    lines += mirroring_lines(summary.get("mirroring"))
    (folder / "SUMMARY.md").write_text("\n".join(lines))


def pilot_lines(pilots: list[dict] | None) -> list[str]:
    """SUMMARY.md's pilot section: variants read on fewer folds (and one seed) than the tables above."""
    if not pilots:
        return []
    lines = ["## Pilots: fewer folds, one seed", "",
             "Variants not yet trained on every counted fold, read on the folds they have, seed 0 only; "
             "each paired over those cases with the students it is meant to beat. Too few cases to decide; "
             "they say which variant earns the other folds.", "",
             "| size | variant | folds (cases) | mean Dice | WT | TC | ET | mean HD95 "
             "| the variant minus each [95 % CI] |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in pilots:
        minus = "; ".join(f"{other}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                          for other, d in row["minus"].items())
        lines.append(f"| {int(row['size']) // 1000}k | {row['variant']} | {row['folds']} ({row['cases']}) "
                     f"| {row['mean_dice']:.3f} | {row['WT_dice']:.3f} | {row['TC_dice']:.3f} | {row['ET_dice']:.3f} "
                     f"| {row['mean_hd95']:.1f} | {minus} |")
    return lines + [""]


def postprocessing_lines(post: dict | None) -> list[str]:
    """SUMMARY.md's post-processing section (empty until a student has a ``_post`` record)."""
    if not post or not post.get("sizes"):
        return []
    lines = ["## Post-processing on the validation cases", "",
             "Keeping only the largest connected component (nnU-Net's post-processing, chosen as it chooses "
             "it: on held-out predictions) or dropping small whole-tumour components, scored on the students' "
             "saved predictions; each case's mean over its students, paired with the same predictions "
             "unprocessed.", "",
             "| size | students | choice | what it does | mean Dice (none) "
             "| minus none [95 % CI] | mean HD95 (none) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for size, entry in post["sizes"].items():
        for choice, c in entry["choices"].items():
            d = c["minus_none"]
            kept = describe_postprocessing(post["choices"][choice])
            lines.append(f"| {int(size) // 1000}k | {entry['students']} | {choice} | {kept} "
                         f"| {c['mean_dice']:.3f} ({c['none_mean_dice']:.3f}) | {d['mean']:+.3f} [{d['low']:+.3f}, "
                         f"{d['high']:+.3f}] | {c['mean_hd95']:.1f} ({c['none_mean_hd95']:.1f}) |")
    for choice, t in post.get("teacher", {}).items():
        d = t["minus_none"]
        what = describe_postprocessing(post["choices"][choice])
        lines.append(f"| teacher | - | {choice} | {what} | {t['mean_dice']:.3f} | "
                     f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {t['mean_hd95']:.1f} |")
    return lines + [""]


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder holding the 14 cases")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="Working folder (resumed; not committed)")
    parser.add_argument("--folds", type=int, nargs="+", default=(0, 1, 2, 3, 4))
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000), choices=sorted(RECIPE_FOR_SIZE))
    parser.add_argument("--variants", nargs="+", default=("gt", "kd_plain", "recipe", "recipe_dice_kl"),
                        choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=SUMMARY_SEEDS)
    parser.add_argument("--steps", type=int, default=None, help="Student steps (default: the recipe's)")
    parser.add_argument("--teacher-iterations", type=int, default=2000)
    parser.add_argument("--teacher-augmentation-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summary-only", action="store_true", help="Only rebuild the summary from the records")
    parser.add_argument("--records", type=Path, default=RECORDS,
                        help="Where stage records are mirrored (default: protocol/records beside this file, "
                             "committed); a trial run points it elsewhere")
    args = parser.parse_args()
    # what run_realdata's teacher stages read
    args.teacher_patch, args.teacher_base_features, args.teacher_max_features = None, 8, 64
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    p = ProtocolPipeline(args=args, work=args.work.resolve())
    p.work.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        p.run("split", lambda: rr.stage_split(p))
        p.run("convert", lambda: rr.stage_convert(p))
        for fold in args.folds:
            p.run(f"protocol_fold{fold}_teacher", lambda fold=fold: stage_fold_teacher(p, fold))
            p.run(f"protocol_fold{fold}_threshold", lambda fold=fold: stage_fold_threshold(p, fold))
            run_postprocessing(p, fold, f"protocol_fold{fold}_teacher")
            p.run(f"protocol_fold{fold}_cache", lambda fold=fold: stage_fold_cache(p, fold))
            for seed in args.seeds:
                for size in args.sizes:
                    for variant in args.variants:
                        p.run(student_stage(fold, size, variant, seed),
                              lambda a=(fold, size, variant, seed): stage_fold_student(p, *a))
                        if calibrated(p.done(student_stage(fold, size, variant, seed))):
                            p.run(default_thresholds_stage(fold, size, variant, seed),
                                  lambda a=(fold, size, variant, seed): stage_fold_student_default_thresholds(p, *a))
                        run_postprocessing(p, fold, student_stage(fold, size, variant, seed))
                        run_mirrored(p, fold, student_stage(fold, size, variant, seed))
    # the summary covers every fold and variant recorded so far, whatever this command trained,
    # so a run of one fold, one variant or one seed does not shrink the committed SUMMARY
    finished, variants = summary_scope(p)
    if finished:
        summary = summarise(p, finished, variants, SUMMARY_SEEDS)
        summary["not_yet"] = not_yet_covered(p, finished, variants)
        summary["pilots"] = summarise_pilots(p, pilot_scope(p, finished, variants))
        summary["postprocessing"] = summarise_postprocessing(p, finished, variants, SUMMARY_SEEDS)
        summary["mirroring"] = summarise_mirroring(p, variants, SUMMARY_SEEDS)
        write_summary(summary, args.records.parent)
        print(json.dumps(summary["sizes"], indent=2))

if __name__ == "__main__":
    main()
