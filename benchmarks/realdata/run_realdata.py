"""The real-data benchmark: a compact nnU-Net v2 teacher on real BraTS 2018 cases, the
distillation ladder at ~100k and ~30k parameters, and a report.

One resumable pipeline; every stage writes ``WORK/stages/<stage>.json`` when it finishes and
is skipped on a rerun, so a killed run continues where it stopped:

  split      10 training cases (nnU-Net's 5-fold cross-validation runs inside them), 4 test
             cases; the two low-grade TCIA10 cases sit on different sides.
  convert    ``distill data convert`` of the training cases to an nnU-Net raw dataset at 2 mm.
  teacher    nnU-Net's fingerprint, planner and preprocessing; a compact plan derived from
             nnU-Net's (features min(base * 2**stage, max), a smaller patch; see --teacher-*);
             5 folds trained by ``nnUNetTrainer`` for a fixed iteration budget, each followed by
             nnU-Net's validation with ``--npz`` probabilities (out-of-fold soft labels).
  cache      ``distill teacher-cache`` (5 folds x 8 mirror TTA) in full and out-of-fold modes.
  students   ``distill train-student`` from the out-of-fold cache: (a) no KD, (b) KD,
             (c) KD + one assistant, (d) KD + assistant + graph flow, at each --sizes budget,
             same steps per link, patch and batch, once per --seeds (the ladder's verdicts use
             every seed, so a difference smaller than the seed-to-seed spread is not read as one);
             then two direct-KD alternatives (KD from the full cache; KD weight 0.3), first seed.
  export     ``distill export`` of every student (parity gate on one real test case): the first
             seed's into ``packages/`` beside this file (committed), the others into WORK.
  predict    every package (onnxruntime, CPU) and the teacher ensemble through nnU-Net, with and
             without mirror TTA, on the 4 test cases at their original 1 mm grid.
  evaluate   ``distill evaluate`` against the expert labels, and the students against the teacher.
  report     ``results.json``, ``RESULTS.md`` and two plots beside this file.

Rerun from a fresh clone (the BraTS 2018 folder is read, never copied):

    python benchmarks/realdata/run_realdata.py --data ../shared/data/brats18

Budgets are options (defaults fit about 2.5 hours on 2 CPU cores); changing one after the
stage that uses it has finished needs a fresh --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.core.hashing import file_sha256

HERE = Path(__file__).resolve().parent
DATASET_ID = 501
DATASET_NAME = "BraTS18Real"
REGIONS = ("WT", "TC", "ET")
TRAIN_CASES = (
    "Brats18_2013_11_1", "Brats18_2013_20_1", "Brats18_CBICA_ABM_1", "Brats18_CBICA_AQN_1",
    "Brats18_TCIA01_201_1", "Brats18_TCIA01_499_1", "Brats18_TCIA02_135_1", "Brats18_TCIA02_606_1",
    "Brats18_TCIA03_265_1", "Brats18_TCIA10_628_1",
)  # fmt: skip
TEST_CASES = ("Brats18_2013_3_1", "Brats18_CBICA_ALU_1", "Brats18_TCIA01_378_1", "Brats18_TCIA10_637_1")
VARIANTS = {
    "a_no_kd": dict(kd_weight=0.0, assistants="0"),
    "b_kd": dict(kd_weight=0.7, assistants="0"),
    "c_kd_chain": dict(kd_weight=0.7, assistants="1"),
    "d_kd_chain_graphflow": dict(kd_weight=0.7, assistants="1", graph_flow_weight=1.0),
}
#: Direct-KD alternatives tried after the first run showed KD not helping (first seed only, not
#: packaged): the out-of-fold teacher misses ET in half the training cases, so its soft maps
#: contradict the expert labels there; the full cache's teacher has seen each case, and a
#: lower KD weight leans on the labels.
EXTRA_VARIANTS = {
    "b_kd_full_cache": dict(kd_weight=0.7, assistants="0", cache="full"),
    "b_kd_weight_03": dict(kd_weight=0.3, assistants="0"),
}


@dataclass
class Pipeline:
    """Paths and options shared by the stages."""

    args: argparse.Namespace
    work: Path

    @property
    def stages(self) -> Path:
        return self.work / "stages"

    def done(self, stage: str) -> dict | None:
        path = self.stages / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def finish(self, stage: str, record: dict) -> dict:
        self.stages.mkdir(parents=True, exist_ok=True)
        tmp = self.stages / f"{stage}.json.partial"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.stages / f"{stage}.json")
        return record

    def run(self, stage: str, function) -> dict:
        """``function()`` unless ``stage`` finished before; its record gains the stage's wall time."""
        record = self.done(stage)
        if record is not None:
            print(f"[{stage}] done before ({record.get('seconds', 0):.0f} s)", flush=True)
            return record
        print(f"[{stage}] running", flush=True)
        return self.run_now(stage, function)

    def run_now(self, stage: str, function) -> dict:
        """``function()`` whatever is recorded; its record gains the stage's wall time."""
        start = time.perf_counter()
        record = function()
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(f"[{stage}] finished in {record['seconds']:.0f} s", flush=True)
        return self.finish(stage, record)


# --------------------------------------------------------------------------- stages


def stage_split(p: Pipeline) -> dict:
    """Folders of links to the real case folders (the data is never copied)."""
    for side, cases in (("train", TRAIN_CASES), ("test", TEST_CASES)):
        folder = p.work / "split" / side
        folder.mkdir(parents=True, exist_ok=True)
        for case in cases:
            source = (p.args.data / case).resolve()
            if not source.is_dir():
                raise SystemExit(f"{source}: case folder missing from --data")
            link = folder / case
            if not link.exists():
                link.symlink_to(source, target_is_directory=True)
    return {"train": list(TRAIN_CASES), "test": list(TEST_CASES)}


def stage_convert(p: Pipeline) -> dict:
    from distill.data.convert import ConvertConfig, convert_to_nnunet

    result = convert_to_nnunet(ConvertConfig(source=p.work / "split" / "train", out_root=p.work / "nnunet_raw",
                                             dataset_id=DATASET_ID, dataset_name=DATASET_NAME,
                                             target_spacing=(2.0, 2.0, 2.0), progress=False))  # fmt: skip
    # relative to the work folder: the record is committed and must not name this machine's paths
    dataset_dir = result.dataset_dir.relative_to(p.work).as_posix()
    return {"dataset_dir": dataset_dir, "n_training": result.n_training, "spacing_mm": 2.0}


def teacher_config(p: Pipeline, folds=(0, 1, 2, 3, 4)):
    from distill.teacher.nnunet_build import CompactTeacherConfig

    a = p.args
    return CompactTeacherConfig(work_dir=p.work / "teacher", dataset_id=DATASET_ID, dataset_name=DATASET_NAME,
                                raw_dataset=p.work / "nnunet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}",
                                base_features=a.teacher_base_features, max_features=a.teacher_max_features,
                                iterations=a.teacher_iterations,
                                patch_size=tuple(a.teacher_patch) if a.teacher_patch else None,
                                export_validation_probabilities=True, seed=a.seeds[0], folds=tuple(folds),
                                augmentation_workers=a.teacher_augmentation_workers)  # fmt: skip


def stage_teacher(p: Pipeline) -> dict:
    """Every fold trained (or restored from the committed assets), then the ensemble described."""
    from distill.students import count_macs
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    folds = (0, 1, 2, 3, 4)
    fold_records = {f"fold_{k}": train_teacher_fold(p, k) for k in folds}
    model_dir = teacher_model_dir(p)
    plans = json.loads((model_dir / "plans.json").read_text())
    network = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, folds=("fold_0",))).predictor.network
    checkpoints = {f"fold_{f}": file_sha256(model_dir / f"fold_{f}" / "checkpoint_final.pth") for f in folds}
    sizes = [(model_dir / f"fold_{f}" / "checkpoint_final.pth").stat().st_size for f in folds]
    return {
        "model_dir": model_dir.relative_to(p.work).as_posix(),
        "parameters_per_member": sum(p.numel() for p in network.parameters()),
        "macs_128": int(count_macs(network, (1, 4, 128, 128, 128))), "compact_plan": plans.get("distill_compact_plan"),
        "iterations_per_fold": p.args.teacher_iterations, "folds": fold_records,
        # Seconds of the run that trained each fold (restored folds keep the figure of the run that made them).
        "build_seconds": {"plan_and_preprocess": max(r["build_seconds"].get("plan_and_preprocess", 0)
                                                     for r in fold_records.values()),
                          **{name: r["build_seconds"].get(name, 0.0) for name, r in fold_records.items()}},
        "checkpoint_sha256": checkpoints, "checkpoints_total_mb": round(sum(sizes) / 2**20, 1),
        "cross_validation": cross_validation_dice(model_dir, folds),
    }  # fmt: skip


def teacher_model_dir(p: Pipeline) -> Path:
    from distill.teacher.nnunet_build import model_dir_for

    return model_dir_for(teacher_config(p))


def train_teacher_fold(p: Pipeline, fold: int) -> dict:
    """Train one fold (continuing a saved checkpoint) unless its committed asset exists; the finished
    fold is copied into ``teacher/`` beside this file with a record of its cost and held-out Dice."""
    import teacher_assets

    from distill.teacher.nnunet_build import build_compact_nnunet

    model_dir = teacher_model_dir(p)
    assets = teacher_assets.assets_for(p.args.teacher_iterations)
    restored = teacher_assets.restore(model_dir, assets)
    if restored:
        print(f"[teacher] restored from the committed assets: {', '.join(restored)}", flush=True)
    record_path = assets / f"fold_{fold}" / "record.json"
    if record_path.is_file() and (model_dir / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        return json.loads(record_path.read_text())
    print(f"[teacher] fold {fold}: training ({p.args.teacher_iterations} iterations)", flush=True)
    start = time.perf_counter()
    built = build_compact_nnunet(teacher_config(p, folds=(fold,)), log_path=p.work / f"teacher_build_fold{fold}.log")
    record = {"fold": fold, "iterations": p.args.teacher_iterations,
              "seconds_this_run": round(time.perf_counter() - start, 1), "build_seconds": built.seconds,
              "cross_validation": cross_validation_dice(built.model_dir, (fold,)).get(f"fold_{fold}"),
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}  # fmt: skip
    teacher_assets.save_fold(built.model_dir, fold, assets, record=record)
    print(f"[teacher] fold {fold} done: {record['cross_validation']}", flush=True)
    return record


def pilot_teacher_fold(p: Pipeline, fold: int) -> None:
    """One teacher fold trained (or resumed) on its own, then scored alone (8-TTA) on the test cases at
    1 mm, the figure to hold against students trained on labels alone; both are printed and kept."""
    record = train_teacher_fold(p, fold)
    record["test_cases_this_fold_mirror8"] = p.run(f"pilot_fold{fold}_test", lambda: pilot_test_scores(p, fold))
    print(json.dumps(record, indent=2))


def pilot_test_scores(p: Pipeline, fold: int) -> dict:
    from distill.data.case import load_case
    from distill.data.conventions import get_convention
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti
    from distill.eval.evaluate import EvaluateConfig, evaluate
    from distill.infer.postprocess import enforce_hierarchy
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    torch.set_num_threads(p.args.threads)
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=teacher_model_dir(p), folds=(f"fold_{fold}",), tta="mirror8"))
    out = p.work / "predictions" / f"pilot_fold{fold}_mirror8"
    out.mkdir(parents=True, exist_ok=True)
    for files in find_cases(p.work / "split" / "test"):
        case = load_case(files, with_labels=False)
        probabilities, _ = teacher.predict_timed(case)
        labels = get_convention("brats2017").from_regions(enforce_hierarchy(probabilities > 0.5))
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    config = EvaluateConfig(pred_dir=out, gt_dir=p.work / "split" / "test", out_dir=p.work / "evaluation" / out.name,
                            pred_convention="brats2017", gt_convention="brats2017", progress=False)
    result = evaluate(config)
    return scores_of(result)["mean"]


def cross_validation_dice(model_dir: Path, folds) -> dict:
    """nnU-Net's own validation summary per fold (Dice on its held-out fold, 2 mm grid)."""
    per_fold = {}
    for fold in folds:
        summary = model_dir / f"fold_{fold}" / "validation" / "summary.json"
        if summary.is_file():
            data = json.loads(summary.read_text())
            per_fold[f"fold_{fold}"] = {key: round(value["Dice"], 4) for key, value in data["mean"].items()}
    return per_fold


def stage_cache(p: Pipeline, mode: str) -> dict:
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    teacher = p.done("teacher")
    splits = (p.work / "teacher" / "nnUNet_preprocessed" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
              / "splits_final.json")
    result = run_teacher_cache(TeacherCacheConfig(model_dir=Path(teacher["model_dir"]),
                                                  images=p.work / "nnunet_raw"
                                                  / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}",
                                                  out=p.work / f"cache_{mode}", mode=mode,
                                                  splits=splits if mode == "oof" else None,
                                                  target_spacing=(2.0, 2.0, 2.0), progress=False))  # fmt: skip
    if not result.complete:
        raise SystemExit(f"teacher cache ({mode}) incomplete: {result.failed}")
    stored = sum(f.stat().st_size for f in Path(result.cache_dir).rglob("*") if f.is_file())
    return {"cache_dir": str(result.cache_dir), "n_cases": result.n_cases, "seconds_per_case": result.seconds_per_case,
            "stored_bytes": stored}  # fmt: skip


def student_name(size: int, variant: str, seed: int | None = None) -> str:
    """``100k_b_kd`` for the first (packaged) seed, ``100k_b_kd_seed1`` for a replicate."""
    return f"{size // 1000}k_{variant}" + ("" if seed is None else f"_seed{seed}")


def package_dir(p: Pipeline, name: str) -> Path:
    """The first seed's ladder students are committed beside this file; replicates and extras stay in WORK."""
    committed = "_seed" not in name and name.split("_", 1)[1] in VARIANTS
    return (HERE / "packages" if committed else p.work / "packages") / name


def stage_student(p: Pipeline, size: int, variant: str, seed: int) -> dict:
    from distill.train import TrainConfig, train_student
    from distill.train.chain import share_first_link

    a = p.args
    tag = None if seed == a.seeds[0] else seed
    run = p.work / "students" / student_name(size, variant, tag)
    if variant == "d_kd_chain_graphflow":
        share_first_link(p.work / "students" / student_name(size, "c_kd_chain", tag), run)
    options = dict({**VARIANTS, **EXTRA_VARIANTS}[variant])
    cache = p.work / f"cache_{options.pop('cache', 'oof')}"
    result = train_student(TrainConfig(cache=cache, out=run,
                                       params=size, steps=a.steps, patch_size=(a.patch,) * 3, batch_size=2,
                                       seed=seed, val_cases=0, progress=False, **options))  # fmt: skip
    card = json.loads(result.card.read_text())
    return {
        "seed": seed, "cache": cache.name, "parameters": result.parameters, "macs_128": result.macs_128,
        "ratio": result.ratio, "chain": result.chain,
        "links": [{key: link.get(key) for key in ("parameters", "steps", "seconds", "steps_per_second",
                                                  "peak_memory_mb")}
                  for link in card["chain"]],
    }  # fmt: skip


def stage_export(p: Pipeline, name: str) -> dict:
    from distill.export.run import ExportConfig, export_package

    result = export_package(ExportConfig(run_dir=p.work / "students" / name, out=package_dir(p, name),
                                         held_out=p.work / "split" / "test", max_held_out=1,
                                         overwrite=True))  # fmt: skip
    return {"package": os.path.relpath(result.package_dir, HERE), "onnx_bytes": result.onnx_bytes,
            "package_bytes": result.package_bytes, "parity": result.parity}  # fmt: skip


def stage_predict_student(p: Pipeline, name: str) -> dict:
    from distill.data.case import load_case
    from distill.data.discovery import MODALITIES, find_cases
    from distill.data.nifti import write_nifti
    from distill.infer.predictor import Predictor

    predictor = Predictor.from_package(package_dir(p, name), "onnxruntime", threads=p.args.threads)
    out = p.work / "predictions" / name
    out.mkdir(parents=True, exist_ok=True)
    per_case = {}
    for files in find_cases(p.work / "split" / "test"):
        case = load_case(files, with_labels=False)
        start = time.perf_counter()
        result = predictor.segment(case.images, case.affine, modalities=MODALITIES)
        total = time.perf_counter() - start
        write_nifti(out / f"{files.case_id}.nii.gz", result.labels, case.affine)
        per_case[files.case_id] = {"total_seconds": round(total, 3),
                                   **{f"{k}_seconds": round(v, 3) for k, v in result.timings.items()}}  # fmt: skip
    return {"predictions": str(out), "per_case": per_case, "backend": "onnxruntime (CPU)", "threads": p.args.threads}


def stage_predict_teacher(p: Pipeline, tta: str) -> dict:
    from distill.data.case import load_case
    from distill.data.conventions import get_convention
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti
    from distill.infer.postprocess import enforce_hierarchy
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    torch.set_num_threads(p.args.threads)
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=Path(p.done("teacher")["model_dir"]), tta=tta))
    out = p.work / "predictions" / f"teacher_{tta}"
    out.mkdir(parents=True, exist_ok=True)
    per_case = {}
    for files in find_cases(p.work / "split" / "test"):
        case = load_case(files, with_labels=False)
        start = time.perf_counter()
        probabilities, timings = teacher.predict_timed(case)  # nnU-Net's own predictor, no uncertainty
        labels = get_convention("brats2017").from_regions(enforce_hierarchy(probabilities > 0.5))
        per_case[files.case_id] = {"total_seconds": round(time.perf_counter() - start, 3),
                                   **{f"{k}_seconds": round(v, 3) for k, v in timings.items()}}  # fmt: skip
        write_nifti(out / f"{files.case_id}.nii.gz", labels, case.affine)
    return {"predictions": str(out), "per_case": per_case, "folds": len(teacher.folds), "tta": tta}


def stage_evaluate(p: Pipeline, name: str) -> dict:
    from distill.eval.evaluate import EvaluateConfig, evaluate

    # Every label map here is in the BraTS 2017-21 convention; saying so also scores a map whose
    # values alone cannot tell its convention (e.g. a student that only ever predicts label 2).
    conventions = dict(pred_convention="brats2017", gt_convention="brats2017", progress=False)
    predictions = p.work / "predictions" / name
    scores = {"vs_ground_truth": scores_of(evaluate(EvaluateConfig(pred_dir=predictions,
                                                                   gt_dir=p.work / "split" / "test",
                                                                   out_dir=p.work / "evaluation" / name,
                                                                   **conventions)))}  # fmt: skip
    if name != "teacher_mirror8":
        teacher = p.work / "predictions" / "teacher_mirror8"
        scores["vs_teacher"] = scores_of(evaluate(EvaluateConfig(pred_dir=predictions, gt_dir=teacher,
                                                                 out_dir=p.work / "evaluation" / f"{name}_vs_teacher",
                                                                 **conventions)))  # fmt: skip
    return scores


def scores_of(result) -> dict:
    """Per-case and mean Dice and HD95 per region from an evaluation result."""
    per_case = {c.case: {m.region: {"dice": m.dice, "hd95": m.hd95} for m in c.regions} for c in result.cases}
    mean = {}
    for region in REGIONS:
        dice = [per_case[c][region]["dice"] for c in per_case]
        hd95 = [per_case[c][region]["hd95"] for c in per_case]  # never NaN or inf (empty-mask policy)
        mean[region] = {"dice": round(float(np.mean(dice)), 4), "hd95": round(float(np.mean(hd95)), 2)}
    mean["mean_dice"] = round(float(np.mean([mean[r]["dice"] for r in REGIONS])), 4)
    return {"mean": mean, "per_case": per_case}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BraTS 2018 folder holding the 14 cases")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="Working folder (resumed; not committed)")
    parser.add_argument("--teacher-iterations", type=int, default=2000,
                        help="nnUNetTrainer iterations per fold (epochs of 50 under nnU-Net's poly schedule)")
    parser.add_argument("--save-teacher-progress", action="store_true",
                        help="Copy the checkpoint_latest.pth of unfinished teacher folds into teacher/ (to commit "
                             "before a session ends) and stop")
    parser.add_argument("--teacher-pilot-fold", type=int, default=None,
                        help="Train only this teacher fold, print its held-out Dice and stop (a pilot before the "
                             "other four; the full run later reuses the finished fold)")
    parser.add_argument("--teacher-patch", type=int, nargs=3, default=None,
                        help="Training patch of the compact plan (default: nnU-Net's own, which covers the 2 mm brain)")
    parser.add_argument("--teacher-augmentation-workers", type=int, default=1,
                        help="nnU-Net augmentation processes beside training (0: in-process, reproducible batches)")
    parser.add_argument("--teacher-base-features", type=int, default=8)
    parser.add_argument("--teacher-max-features", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1000, help="Student optimiser steps per link")
    parser.add_argument("--patch", type=int, default=48, help="Student patch edge (voxels at 2 mm)")
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1),
                        help="Train every student once per seed; the first seed's students are the packaged ones")
    parser.add_argument("--until", default=None,
                        help="Stop after this stage (split, convert, teacher, cache, students, "
                             "export, predict, evaluate)")  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    p = Pipeline(args=args, work=args.work.resolve())
    p.work.mkdir(parents=True, exist_ok=True)
    runs = [(size, variant, seed) for seed in args.seeds for size in args.sizes for variant in VARIANTS]
    runs += [(size, variant, args.seeds[0]) for size in args.sizes for variant in EXTRA_VARIANTS]
    names = [student_name(s, v, None if seed == args.seeds[0] else seed) for s, v, seed in runs]
    steps = [
        ("split", [("split", lambda: stage_split(p))]),
        ("convert", [("convert", lambda: stage_convert(p))]),
        ("teacher", [("teacher", lambda: stage_teacher(p))]),
        ("cache", [(f"cache_{m}", lambda m=m: stage_cache(p, m)) for m in ("full", "oof")]),
        ("students", [(f"student_{n}", lambda s=s, v=v, seed=seed: stage_student(p, s, v, seed))
                      for n, (s, v, seed) in zip(names, runs)]),
        ("export", [(f"export_{n}", lambda n=n: stage_export(p, n)) for n in names]),
        ("predict", [(f"predict_teacher_{t}", lambda t=t: stage_predict_teacher(p, t)) for t in ("mirror8", "none")]
         + [(f"predict_{n}", lambda n=n: stage_predict_student(p, n)) for n in names]),
        ("evaluate", [(f"evaluate_{n}", lambda n=n: stage_evaluate(p, n))
                      for n in ("teacher_mirror8", "teacher_none", *names)]),
    ]  # fmt: skip
    if args.save_teacher_progress:
        import teacher_assets

        saved = teacher_assets.save_progress(teacher_model_dir(p), teacher_assets.assets_for(args.teacher_iterations))
        print("saved unfinished folds:", saved or "none")
        return
    if args.teacher_pilot_fold is not None:
        for stage, function in steps[0][1] + steps[1][1]:
            p.run(stage, function)
        return pilot_teacher_fold(p, args.teacher_pilot_fold)
    for group, stages in steps:
        for stage, function in stages:
            p.run(stage, function)
        if args.until == group:
            return
    from report import write_report

    write_report(p, names, ladder=list(VARIANTS), extras=list(EXTRA_VARIANTS))


if __name__ == "__main__":
    main()
