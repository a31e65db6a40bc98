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


def _dice_counts(live: np.ndarray, cached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel intersections and sums of the two maps thresholded at 0.5, over ``(C, ...)``."""
    a, b = live > 0.5, cached > 0.5
    axes = tuple(range(1, a.ndim))
    return (a & b).sum(axis=axes), a.sum(axis=axes) + b.sum(axis=axes)


def context_agreement(model_dir: Path, cache_dir: Path, fold: int, n_patches: int, patch: int,
                      margins=(0, 16)) -> dict:  # fmt: skip
    """Where the gap comes from: on the same patch boxes (the sampler's draws, no augmentation),
    the live network run on the patch alone, on the patch with ``margin`` voxels of context each
    side (cropped back), and on the whole cached volume, each against the cached 8-TTA maps.

    If the whole-volume pass agrees far better than the patch pass, the gap is context (what a
    48³ patch cannot show), not a preprocessing mismatch; the margin rows say what a wider
    live input would buy. A low whole-volume score is not conclusive: the cache is the 8-TTA
    prediction at the plan's spacing resampled to 2 mm, the live pass one pass on the 2 mm grid,
    so mirroring and resampling remain mixed in.
    """
    from distill.cache import TeacherCache
    from distill.data.discovery import MODALITIES
    from distill.teacher.features import nnunet_feature_network
    from distill.train.sampler import PatchSampler

    cache = TeacherCache.open(cache_dir)
    channels = list(cache.spec.teacher["channels"])
    network = nnunet_feature_network(model_dir, f"fold_{fold}", channels=channels, modalities=MODALITIES)
    sampler = PatchSampler(cache, sorted(cache.case_ids), (patch,) * 3, foreground_fraction=0.5, seed=1)
    size = np.array((patch,) * 3)
    names = [f"margin_{m}" for m in margins] + ["whole_volume"]
    counts = {name: [np.zeros(3), np.zeros(3)] for name in names}
    whole: dict[str, np.ndarray] = {}
    for _ in range(n_patches):
        case_id = sampler.case_ids[sampler.rng.integers(len(sampler.case_ids))]
        start = np.array(sampler._start(case_id))
        cached = cache.read_patch(case_id, start, size).probabilities
        for margin, name in zip(margins, names):
            box = cache.read_patch(case_id, start - margin, size + 2 * margin)
            with torch.no_grad():
                live = torch.sigmoid(network(torch.from_numpy(box.images[None]))).numpy()[0]
            inner = live[:, margin:margin + patch, margin:margin + patch, margin:margin + patch]
            for total, part in zip(counts[name], _dice_counts(inner, cached)):
                total += part
        if case_id not in whole:
            images = cache.read_case(case_id).images
            with torch.no_grad():
                whole[case_id] = torch.sigmoid(network(torch.from_numpy(images[None]))).numpy()[0]
        volume = whole[case_id]
        box = cache.read_patch(case_id, start, size)  # zero outside the volume, as the cache reads it
        inner = np.zeros_like(box.probabilities)
        inside = tuple(slice(max(s, 0), min(s + patch, n)) for s, n in zip(start, volume.shape[1:]))
        target = tuple(slice(b.start - s, b.stop - s) for b, s in zip(inside, start))
        inner[(slice(None), *target)] = volume[(slice(None), *inside)]
        for total, part in zip(counts["whole_volume"], _dice_counts(inner, cached)):
            total += part
    return {"patches": n_patches, "patch": patch, "augmentation": False,
            "dice_live_vs_cache": {name: {r: round(float(2 * i / s), 4) if s else None
                                          for r, i, s in zip(REGIONS, *counts[name])} for name in names}}  # fmt: skip


def step_seconds(run: Path) -> list[float]:
    import csv

    rows = list(csv.DictReader(open(next(run.glob("links/*/log.csv")))))
    elapsed = [float(r["seconds"]) for r in rows]
    return [b - a for a, b in zip(elapsed, elapsed[1:])][5:]  # the first steps warm caches up


def cost_kinds(model_dir: Path, fold: int, context: int) -> dict[str, dict]:
    """The student runs timed side by side, each as TrainConfig options beside direct KD's.

    ``live_graph_flow`` (bare patch, and with ``context`` voxels of context) is graph flow from the
    live fold; ``strong_augment`` is direct KD with nnU-Net's intensity augmentation (its CPU cost
    alone); ``live_kd_strong`` is consistent teaching: the live fold's sigmoid on each strongly
    augmented patch as the KD target (``kd_source=live``), with the same context, no graph flow.
    """
    live = dict(teacher_model_dir=str(model_dir), teacher_fold=str(fold))
    flow = dict(live, graph_flow_weight=1.0, graph_flow_ramp=0, paraphraser_steps=0, paraphraser_batches=1)
    kinds = {"direct_kd": {}, "live_graph_flow": dict(flow, teacher_context=0)}
    if context:
        kinds[f"live_graph_flow_context{context}"] = dict(flow, teacher_context=context)
    kinds["strong_augment"] = {"augment": "strong"}
    kinds[f"live_kd_strong_context{context}"] = dict(live, kd_source="live", augment="strong", teacher_context=context)
    return kinds


def cost(model_dir: Path, cache_dir: Path, fold: int, sizes, steps: int, rounds: int, patch: int,
         context: int = 0) -> dict:
    """Seconds per step of each of :func:`cost_kinds`, alternating in one process, and each one's
    ratio to direct KD at the same size."""
    from distill.train import TrainConfig, train_student

    per: dict[str, list[float]] = {}
    kinds = cost_kinds(model_dir, fold, context)
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for size in sizes:
                for kind, options in kinds.items():
                    key = f"{size // 1000}k_{kind}"
                    run = Path(tmp) / f"{key}_{round_index}"
                    train_student(TrainConfig(cache=cache_dir, out=run, params=size, steps=steps, batch_size=2,
                                              patch_size=(patch,) * 3, val_cases=0, checkpoint_every=10 * steps,
                                              progress=False, **options))  # fmt: skip
                    per.setdefault(key, []).extend(step_seconds(run))
                    shutil.rmtree(run)
    medians = {k: round(statistics.median(v), 4) for k, v in per.items()}

    def ratio(kind: str) -> dict[str, float]:
        return {f"{size // 1000}k": round(medians[f"{size // 1000}k_{kind}"] / medians[f"{size // 1000}k_direct_kd"], 2)
                for size in sizes}  # fmt: skip

    result = {"median_seconds_per_step": medians, "ratio_live_over_direct": ratio("live_graph_flow"),
              "ratio_over_direct": {kind: ratio(kind) for kind in kinds if kind != "direct_kd"},
              "steps_per_run": steps, "rounds": rounds, "samples": {k: len(v) for k, v in per.items()}}  # fmt: skip
    if context:
        result["context"] = context
        result["ratio_live_context_over_direct"] = ratio(f"live_graph_flow_context{context}")
    return result


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
    parser.add_argument("--context-patches", type=int, default=24)
    parser.add_argument("--teacher-context", type=int, default=16,
                        help="Also time graph flow with this many voxels of teacher context (0: not)")
    parser.add_argument("--context-only", action="store_true",
                        help="Only the context diagnosis (no timing), added to the committed live_teacher.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.teacher_patch, args.teacher_base_features, args.teacher_max_features = None, 8, 64
    args.seeds, args.teacher_augmentation_workers = (0,), 1
    p = rr.Pipeline(args=args, work=args.work.resolve())
    model_dir = rr.teacher_model_dir(p)
    cache_dir = p.work / "protocol" / f"fold_{args.fold}" / "cache"
    command = " ".join(["python", "benchmarks/realdata/live_teacher.py", *sys.argv[1:]])
    start = time.perf_counter()
    if args.context_only:
        result = json.loads((HERE / "live_teacher.json").read_text())
    else:
        result = {
            "command": command,
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
            "fold": args.fold,
            "agreement": agreement(model_dir, cache_dir, args.fold, args.agreement_batches, args.patch),
            "cost": cost(model_dir, cache_dir, args.fold, args.sizes, args.steps, args.rounds, args.patch,
                         args.teacher_context),
        }
    context_start = time.perf_counter()
    context = context_agreement(model_dir, cache_dir, args.fold, args.context_patches, args.patch)
    result["context"] = {"command": command, "fold": args.fold, **context,
                         "seconds": round(time.perf_counter() - context_start, 1)}  # fmt: skip
    if not args.context_only:
        result["seconds"] = round(time.perf_counter() - start, 1)
    (HERE / "live_teacher.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = page(result)
    (HERE / "LIVE_TEACHER.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def page(result: dict) -> list[str]:
    """LIVE_TEACHER.md from the record."""
    a, c = result["agreement"], result["cost"]
    lines = ["# Live nnU-Net teacher in the training loop", "", f"Command: `{result['command']}`", "",
             f"Agreement of fold {result['fold']} run live on {a['patches']} training patches ({a['patch']}³ at 2 mm) "
             "with the cached 8-TTA maps of the same fold: Dice of thresholded maps "
             + ", ".join(f"{r} {d}" for r, d in a["dice_live_vs_cache"].items())
             + f"; mean |Δp| {a['mean_abs_probability_difference']}.", "",
             "| student | direct KD s/step | with live teacher + graph flow s/step | ratio |",
             "|---|---|---|---|"]  # fmt: skip
    for k in c["ratio_live_over_direct"]:
        lines.append(f"| {k} | {c['median_seconds_per_step'][f'{k}_direct_kd']} | "
                     f"{c['median_seconds_per_step'][f'{k}_live_graph_flow']} | {c['ratio_live_over_direct'][k]} |")
    if "ratio_live_context_over_direct" in c:
        suffix = f"_live_graph_flow_context{c['context']}"
        timed = [f"{k} {c['median_seconds_per_step'][k + suffix]} s/step ({v}x direct KD)"
                 for k, v in c["ratio_live_context_over_direct"].items()]  # fmt: skip
        lines += ["", f"With {c['context']} voxels of teacher context: " + ", ".join(timed) + "."]
    if "ratio_over_direct" in c:
        lines += ["", "Every timed run against direct KD (s/step, and the ratio):", "",
                  "| run | " + " | ".join(c["ratio_live_over_direct"]) + " |",
                  "|---|" + "---|" * len(c["ratio_live_over_direct"])]  # fmt: skip
        for kind, ratios in c["ratio_over_direct"].items():
            lines.append(f"| {kind} | " + " | ".join(f"{c['median_seconds_per_step'][f'{k}_{kind}']} ({v}x)"
                                                     for k, v in ratios.items()) + " |")
    lines += ["", f"Medians over {c['rounds']} alternating rounds of {c['steps_per_run']} steps, batch 2, "
              f"{result['machine']['threads']} threads, nothing else running."]  # fmt: skip
    context = result.get("context")
    if context:
        lines += ["", "## Where the disagreement comes from", "",
                  f"Command: `{context['command']}`", "",
                  f"The same {context['patches']} patch boxes ({context['patch']}³, fold {context['fold']}'s training "
                  "cases, no augmentation), the live network given only the patch, the patch with a margin of "
                  "context (cropped back), or the whole 2 mm volume; Dice of thresholded maps against the cache. "
                  "A high whole-volume row means the patch's gap is context; a low one still mixes in the "
                  "cache's mirroring and its resampling from the plan's spacing:", "",
                  "| live input | WT | TC | ET |", "|---|---|---|---|"]  # fmt: skip
        for name, dice in context["dice_live_vs_cache"].items():
            shown = name.replace("margin_0", "patch alone").replace("margin_", "margin ").replace("_", " ")
            lines.append(f"| {shown} | " + " | ".join(str(dice[r]) for r in REGIONS) + " |")
    return lines

if __name__ == "__main__":
    main()
