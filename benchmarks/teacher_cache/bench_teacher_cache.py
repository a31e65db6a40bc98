"""Teacher-cache benchmark on real BraTS 2018 cases at 2 mm with a compact nnU-Net teacher.

What it measures, side by side in one run on this machine:

* nnU-Net's own ``nnUNetv2_predict_from_modelfolder --save_probabilities`` (5 folds x 8 mirror
  TTA): seconds per case and bytes of its float32 ``.npz`` per case;
* ``distill teacher-cache`` on the same cases with the same folds and TTA: seconds per case,
  bytes per case, and the max / mean absolute error of the cached probabilities (mapped back
  to the original grid) against nnU-Net's ``.npz``;
* the teacher's prediction alone (``NnUNetTeacher.predict``) to isolate the caching overhead;
* random 64³ x all-arrays patch reads from the cache vs decoding a whole case.

The teacher is a compact nnU-Net (features 8..64) trained by nnU-Net's own trainer on 2 mm
phantoms for a short fixed budget: a real nnU-Net, but not a good one on real scans, so its
soft maps are "hesitant" (the harder case for compression). Rerun:

    python benchmarks/teacher_cache/bench_teacher_cache.py --work /tmp/bench_tc --cases 3

Writes ``results_teacher.json`` and ``RESULTS_teacher.md`` beside this file.

``--teacher-assets benchmarks/realdata/teacher/iterations_2000`` measures the real-data
benchmark's committed teacher instead (five folds trained 2,000 iterations each on 10 real cases
by nnU-Net's trainer, restored from those files, nothing trained here): confident maps, the
figure a user with a real model would see. It writes ``results_teacher_realdata.json`` and
``RESULTS_teacher_realdata.md``; the three cases it reads are among that teacher's training
cases, as a KD cache's cases are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BRATS18 = REPO.parent / "shared" / "data" / "brats18"
CASES = ["Brats18_CBICA_AQN_1", "Brats18_TCIA10_628_1", "Brats18_2013_11_1"]


def run(command: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, **kw)
    return time.perf_counter() - start


@dataclass(frozen=True)
class RestoredTeacher:
    model_dir: Path
    parameters_per_member: int
    iterations: int


def restored_teacher(assets: Path, work: Path) -> RestoredTeacher:
    """The committed 5-fold teacher in ``assets`` (teacher_assets' layout), copied into an nnU-Net
    model folder under ``work``; exits with one line when a fold is not finished there."""
    sys.path.insert(0, str(REPO / "benchmarks" / "realdata"))
    import teacher_assets

    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

    missing = [k for k in range(5) if not (assets / f"fold_{k}" / "checkpoint_final.pth").is_file()]
    if missing:
        sys.exit(f"{assets}: folds {missing} have no checkpoint_final.pth yet (train them with "
                 "benchmarks/realdata/protocol.py first)")  # fmt: skip
    model_dir = work / "realdata_teacher" / "nnUNetTrainer__nnUNetPlans_distillCompact__3d_fullres"
    teacher_assets.restore(model_dir, assets)
    network = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, folds=("fold_0",))).predictor.network
    iterations = json.loads((assets / "fold_0" / "record.json").read_text())["iterations"]
    return RestoredTeacher(model_dir, sum(p.numel() for p in network.parameters()), iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20,
                        help="training iterations per fold of the compact teacher")  # fmt: skip
    parser.add_argument("--teacher-assets", type=Path, default=None,
                        help="a committed teacher folder (benchmarks/realdata/teacher/iterations_N) to measure "
                             "instead of training one on phantoms")  # fmt: skip
    args = parser.parse_args()
    if not BRATS18.is_dir():
        sys.exit(f"real BraTS 2018 cases not found at {BRATS18}")

    from distill.cache import TeacherCache
    from distill.data.case import load_case
    from distill.data.convert import ConvertConfig, convert_to_nnunet
    from distill.data.discovery import find_cases
    from distill.data.preprocess import restore_probabilities
    from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    if args.teacher_assets is not None:
        teacher = restored_teacher(args.teacher_assets.resolve(), work)
    else:
        teacher = build_compact_nnunet(
            CompactTeacherConfig(work_dir=work / "teacher", dataset_id=992, dataset_name="Phantoms2mm", n_cases=6,
                                 phantom_shape=(120, 120, 78), base_features=8, max_features=64,
                                 iterations=args.iterations),
            log_path=work / "teacher_build.log",
        )  # fmt: skip
    build_seconds = time.perf_counter() - start

    source = work / "real"
    source.mkdir(exist_ok=True)
    for name in CASES[: args.cases]:
        if not (source / name).exists():
            (source / name).symlink_to(BRATS18 / name)
    raw = convert_to_nnunet(ConvertConfig(source=source, out_root=work / "raw", dataset_id=993, dataset_name="Real2mm",
                                           target_spacing=(2.0, 2.0, 2.0), progress=False)).dataset_dir  # fmt: skip

    # nnU-Net's own prediction with probabilities.
    images_only = work / "nnunet_in"
    images_only.mkdir(exist_ok=True)
    for path in (raw / "imagesTr").iterdir():
        shutil.copy(path, images_only / path.name)
    predict = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    nnunet_out = work / "nnunet_out"
    timings_file = work / "timings.json"  # timings of finished stages, so a rerun only redoes what is missing
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if "nnunet_seconds" not in timings:
        shutil.rmtree(nnunet_out, ignore_errors=True)
        timings["nnunet_seconds"] = run(
            [str(predict), "-i", str(images_only), "-o", str(nnunet_out), "-m", str(teacher.model_dir),
             "-f", "0", "1", "2", "3", "4", "-device", "cpu", "--save_probabilities", "-npp", "1", "-nps", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        timings_file.write_text(json.dumps(timings))
    nnunet_seconds = timings["nnunet_seconds"]
    n = len(CASES[: args.cases])

    # The teacher alone (loaded once), then the whole cache run.
    if "predict_times" not in timings:
        adapter = NnUNetTeacher(NnUNetTeacherConfig(model_dir=teacher.model_dir))
        timings["predict_times"] = []
        for files in find_cases(raw):
            case = load_case(files)
            t0 = time.perf_counter()
            adapter.predict(case)
            timings["predict_times"].append(time.perf_counter() - t0)
        timings_file.write_text(json.dumps(timings))
    predict_times = timings["predict_times"]
    cache_dir = work / "cache"
    if "cache_seconds_per_case" not in timings:
        shutil.rmtree(cache_dir, ignore_errors=True)
        result = run_teacher_cache(
            TeacherCacheConfig(model_dir=teacher.model_dir, images=raw, out=cache_dir, progress=False)
        )
        timings["cache_seconds_per_case"] = result.seconds / max(1, len(result.done))
        timings_file.write_text(json.dumps(timings))
    cache = TeacherCache.open(cache_dir)

    rows = []
    for case_id in cache.case_ids:
        cached = cache.read_case(case_id)
        restored = restore_probabilities(cached.probabilities, cached.record)
        reference = np.load(nnunet_out / f"{case_id}.npz")["probabilities"].transpose(0, 3, 2, 1)
        error = np.abs(restored - reference)
        case_bytes = cache.stored_bytes(case_id)
        rows.append({
            "case": case_id, "cache_bytes": case_bytes,
            "nnunet_npz_bytes": (nnunet_out / f"{case_id}.npz").stat().st_size,
            "cache_probability_bytes": cache.stored_bytes(case_id, "probabilities"),
            "cache_uncertainty_bytes": cache.stored_bytes(case_id, "uncertainty"),
            "cache_image_bytes": cache.stored_bytes(case_id, "images"),
            "max_abs_error": float(error.max()), "mean_abs_error": float(error.mean()),
            "teacher_mean_p_background": float(reference[0][reference[0] < 0.5].mean()),
        })  # fmt: skip

    rng = np.random.default_rng(0)
    patch_times, whole_times = [], []
    for _ in range(30):
        case_id = cache.case_ids[rng.integers(len(cache.case_ids))]
        shape = cache.shape(case_id)
        start_voxel = [int(rng.integers(0, max(1, s - 64))) for s in shape]
        t0 = time.perf_counter()
        cache.read_patch(case_id, start_voxel, (64, 64, 64))
        patch_times.append(time.perf_counter() - t0)
    for case_id in cache.case_ids:
        t0 = time.perf_counter()
        cache.read_case(case_id)
        whole_times.append(time.perf_counter() - t0)

    if args.teacher_assets is not None:
        source_flag = f"--teacher-assets {os.path.relpath(args.teacher_assets.resolve(), REPO)}"
        origin = (f"trained {teacher.iterations} iterations per fold on 10 real BraTS 2018 cases by nnU-Net's "
                  "trainer (the real-data benchmark's committed folds, restored, not retrained)")
        stem = "teacher_realdata"
    else:
        source_flag = f"--iterations {args.iterations}"
        origin = f"trained {args.iterations} iterations per fold on 2 mm phantoms by nnU-Net's trainer"
        stem = "teacher"
    summary = {
        "command": f"python benchmarks/teacher_cache/bench_teacher_cache.py --work WORK --cases {n} {source_flag}",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "teacher": {"parameters_per_member": teacher.parameters_per_member, "folds": 5, "tta": "mirror8",
                    "trained_iterations_per_fold": getattr(teacher, "iterations", args.iterations),
                    "origin": origin, "build_seconds": round(build_seconds, 1)},
        "load_average_1min": {"start": load_at_start, "end": round(os.getloadavg()[0], 2)},
        "cases": rows,
        "nnunet_predict_seconds_per_case": nnunet_seconds / n,
        "teacher_predict_seconds_per_case_median": statistics.median(predict_times),
        "teacher_cache_seconds_per_case": timings["cache_seconds_per_case"],
        "median_size_ratio_npz_over_cached_probabilities": statistics.median(
            r["nnunet_npz_bytes"] / r["cache_probability_bytes"] for r in rows
        ),
        "median_size_ratio_npz_over_whole_cache_entry": statistics.median(
            r["nnunet_npz_bytes"] / r["cache_bytes"] for r in rows
        ),
        "max_abs_error": max(r["max_abs_error"] for r in rows),
        "patch_read_64_median_seconds": statistics.median(patch_times),
        "whole_case_read_median_seconds": statistics.median(whole_times),
    }
    (HERE / f"results_{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Teacher cache on real BraTS 2018 cases at 2 mm (compact nnU-Net, 5 folds x 8 TTA)",
        "",
        f"Command: `{summary['command']}` on {os.cpu_count()} CPU cores. "
        f"Teacher: {teacher.parameters_per_member:,} parameters per member, {origin}.",
        "",
        "nnU-Net's npz holds the float32 probabilities only; a cache entry also holds the student inputs (4 float16",
        "images), the uncertainty and the ground truth, so both ratios are given.",
        "",
        "| case | nnU-Net npz bytes | cached probabilities bytes | ratio "
        "| whole cache entry bytes (images float16 / uncertainty) | ratio | max abs err | mean abs err "
        "| teacher's mean WT p where p < 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['case']} | {r['nnunet_npz_bytes']:,} | {r['cache_probability_bytes']:,} | "
          f"{r['nnunet_npz_bytes'] / r['cache_probability_bytes']:.1f}x | "
          f"{r['cache_bytes']:,} ({r['cache_image_bytes']:,} / "
          f"{r['cache_uncertainty_bytes']:,}) | {r['nnunet_npz_bytes'] / r['cache_bytes']:.1f}x | "
          f"{r['max_abs_error']:.5f} | {r['mean_abs_error']:.6f} | {r['teacher_mean_p_background']:.4f} |"
          for r in rows],
        "",
        "| timing (median or mean per case) | seconds |",
        "|---|---|",
        "| nnUNetv2_predict_from_modelfolder --save_probabilities (incl. process start) | "
        f"{summary['nnunet_predict_seconds_per_case']:.1f} |",
        "| NnUNetTeacher.predict (model loaded once; records the 40 per-pass maps) | "
        f"{summary['teacher_predict_seconds_per_case_median']:.1f} |",
        "| distill teacher-cache (predict + preprocess + quantise + write) | "
        f"{summary['teacher_cache_seconds_per_case']:.1f} |",
        f"| random 64³ patch read, all arrays | {summary['patch_read_64_median_seconds']:.3f} |",
        f"| whole case read | {summary['whole_case_read_median_seconds']:.3f} |",
        "",
        f"One-minute load average {summary['load_average_1min']['start']:.1f} at the start and "
        f"{summary['load_average_1min']['end']:.1f} at the end of this run (2 cores: above ~2 means another job "
        "shared them); the timings ran one after another, not interleaved. Sizes and errors are exact. A rerun in "
        "the same --work reuses the timings of stages already done (work/timings.json). How far from 0 the "
        "teacher's background sits decides most of the bytes (last column).",
    ]  # fmt: skip
    (HERE / f"RESULTS_{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
