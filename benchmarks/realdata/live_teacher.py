"""The nnU-Net teacher run live in the training loop: does it see what the cache saw, and what
does it cost per step?

1. Agreement. On training patches drawn by the students' own sampler from a fold's cache
   (``protocol.py`` writes one per fold), fold k's network run live on Distill's patch
   (``distill.teacher.features``) against the cached 8-TTA soft maps of the same fold on the
   same voxels: Dice of the thresholded maps per region and the mean absolute probability
   difference. The live pass has no mirroring and sees the patch, not the whole volume, so
   perfect agreement is not expected; a large gap would mean a preprocessing mismatch.
2. Cost. Seconds per optimiser step of a student at each size with graph flow from the live
   teacher against the same student without any live teacher (direct KD), run alternately in
   one process, ``--rounds`` times; medians of the per-step times from the links' logs
   (warm-up steps dropped) and their ratio.

    python benchmarks/realdata/live_teacher.py --work benchmarks/realdata/work/t2000 --fold 0

Writes ``live_teacher.json`` and ``LIVE_TEACHER.md`` beside this file. Run it with nothing else
on the cores (the timing is the point).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_realdata as rr  # noqa: E402

REGIONS = ("WT", "TC", "ET")


def agreement(model_dir: Path, cache_dir: Path, fold: int, n_batches: int, patch: int) -> dict:
    from distill.cache import TeacherCache
    from distill.data.discovery import MODALITIES
    from distill.teacher.features import nnunet_feature_network
    from distill.train.sampler import PatchSampler

    cache = TeacherCache.open(cache_dir)
    channels = list(cache.spec.teacher["channels"])
    network = nnunet_feature_network(model_dir, f"fold_{fold}", channels=channels, modalities=MODALITIES)
    sampler = PatchSampler(cache, sorted(cache.case_ids), (patch,) * 3, foreground_fraction=0.5, seed=0)
    intersections, sums, differences = np.zeros(3), np.zeros(3), []
    for _ in range(n_batches):
        batch = sampler.sample(2)
        with torch.no_grad():
            live = torch.sigmoid(network(batch.images)).numpy()
        cached = batch.teacher_probs.numpy()
        a, b = live > 0.5, cached > 0.5
        intersections += (a & b).sum(axis=(0, 2, 3, 4))
        sums += a.sum(axis=(0, 2, 3, 4)) + b.sum(axis=(0, 2, 3, 4))
        differences.append(float(np.abs(live - cached).mean()))
    dice = {r: round(float(2 * i / s), 4) if s else None for r, i, s in zip(REGIONS, intersections, sums)}
    return {"patches": 2 * n_batches, "patch": patch, "dice_live_vs_cache": dice,
            "mean_abs_probability_difference": round(float(np.mean(differences)), 4)}  # fmt: skip


def step_seconds(run: Path) -> list[float]:
    import csv

    rows = list(csv.DictReader(open(next(run.glob("links/*/log.csv")))))
    elapsed = [float(r["seconds"]) for r in rows]
    return [b - a for a, b in zip(elapsed, elapsed[1:])][5:]  # the first steps warm caches up


def cost(model_dir: Path, cache_dir: Path, fold: int, sizes, steps: int, rounds: int, patch: int) -> dict:
    from distill.train import TrainConfig, train_student

    per: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for size in sizes:
                for live in (False, True):
                    key = f"{size // 1000}k_{'live_graph_flow' if live else 'direct_kd'}"
                    run = Path(tmp) / f"{key}_{round_index}"
                    options = dict(teacher_model_dir=str(model_dir), teacher_fold=str(fold), graph_flow_weight=1.0,
                                   graph_flow_ramp=0, paraphraser_steps=0, paraphraser_batches=1) if live else {}
                    train_student(TrainConfig(cache=cache_dir, out=run, params=size, steps=steps, batch_size=2,
                                              patch_size=(patch,) * 3, val_cases=0, checkpoint_every=10 * steps,
                                              progress=False, **options))  # fmt: skip
                    per.setdefault(key, []).extend(step_seconds(run))
                    shutil.rmtree(run)
    medians = {k: round(statistics.median(v), 4) for k, v in per.items()}
    ratios = {f"{size // 1000}k": round(medians[f"{size // 1000}k_live_graph_flow"]
                                        / medians[f"{size // 1000}k_direct_kd"], 2) for size in sizes}  # fmt: skip
    return {"median_seconds_per_step": medians, "ratio_live_over_direct": ratios, "steps_per_run": steps,
            "rounds": rounds, "samples": {k: len(v) for k, v in per.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Work folder of protocol.py (holds the fold caches)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--teacher-iterations", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--agreement-batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.teacher_patch, args.teacher_base_features, args.teacher_max_features = None, 8, 64
    args.seeds, args.teacher_augmentation_workers = (0,), 1
    p = rr.Pipeline(args=args, work=args.work.resolve())
    model_dir = rr.teacher_model_dir(p)
    cache_dir = p.work / "protocol" / f"fold_{args.fold}" / "cache"
    start = time.perf_counter()
    result = {
        "command": " ".join(["python", "benchmarks/realdata/live_teacher.py", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "fold": args.fold,
        "agreement": agreement(model_dir, cache_dir, args.fold, args.agreement_batches, args.patch),
        "cost": cost(model_dir, cache_dir, args.fold, args.sizes, args.steps, args.rounds, args.patch),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    (HERE / "live_teacher.json").write_text(json.dumps(result, indent=2) + "\n")
    a, c = result["agreement"], result["cost"]
    lines = ["# Live nnU-Net teacher in the training loop", "", f"Command: `{result['command']}`", "",
             f"Agreement of fold {args.fold} run live on {a['patches']} training patches ({a['patch']}³ at 2 mm) "
             "with the cached 8-TTA maps of the same fold: Dice of thresholded maps "
             + ", ".join(f"{r} {d}" for r, d in a["dice_live_vs_cache"].items())
             + f"; mean |Δp| {a['mean_abs_probability_difference']}.", "",
             "| student | direct KD s/step | with live teacher + graph flow s/step | ratio |",
             "|---|---|---|---|"]  # fmt: skip
    for size in args.sizes:
        k = f"{size // 1000}k"
        lines.append(f"| {k} | {c['median_seconds_per_step'][f'{k}_direct_kd']} | "
                     f"{c['median_seconds_per_step'][f'{k}_live_graph_flow']} | {c['ratio_live_over_direct'][k]} |")
    lines += ["", f"Medians over {c['rounds']} alternating rounds of {c['steps_per_run']} steps, batch 2, "
              f"{args.threads} threads, nothing else running."]  # fmt: skip
    (HERE / "LIVE_TEACHER.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
