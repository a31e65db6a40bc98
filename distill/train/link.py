"""Training one link of a teacher-assistant chain.

A link is one model trained for ``config.steps`` steps from one or more teachers:

* the cached ensemble soft maps (the first link always learns from these, plus ground truth);
* live models of the chain run in the loop (later links), which makes feature losses such as
  graph flow possible without caching features.

The loss is ``(1-λ)·(Dice+BCE vs ground truth) + λ·mean_t KD(student, teacher_t)`` (TAKD,
Mirzadeh et al., AAAI 2020) plus optional graph flow (live teacher only) and boundary terms.
With dense guidance (DGKD, Son et al., ICCV 2021) every teacher is used and one random
teacher is dropped per batch.

A link checkpoints every ``checkpoint_every`` steps (model, optimiser, loss-module weights,
sampler state, RNG, the weight average), writes ``weights.pt`` (state dict only; with
``ema_decay`` the moving average of the weights, :mod:`distill.train.ema`) when done, and
resumes from its checkpoint after a kill.
"""

from __future__ import annotations

import csv
import json
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from distill.core.atomic import atomic_path, atomic_write_json
from distill.core.jsonfile import read_json_object
from distill.losses import CompositeLoss, build_loss, pretrain_paraphraser, ramp_in
from distill.train.config import TrainConfig, TrainConfigError
from distill.train.distributed import DistInfo, all_reduce_grads, barrier
from distill.train.ema import WeightAverage
from distill.train.sampler import Batch, PatchSampler
from distill.train.validate import validate

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
DONE = "done.json"
LOG = "log.csv"


@dataclass(frozen=True)
class LinkConfig:
    """What one link trains, besides the models and data it is handed.

    Attributes:
        name: the link's name, used for its progress bar and TensorBoard tags.
        link_dir: folder of its checkpoint, log, weights and ``done.json``.
        train: the run's options (steps, losses, optimiser, seed, ...).
        output_kind: ``"sigmoid"`` or ``"softmax"``, what the cached teacher outputs.
        has_ground_truth: every training case has cached ground-truth regions.
        val_case_ids: held-out cases scored after training (and every ``val_every`` steps).
    """

    name: str
    link_dir: Path
    train: TrainConfig
    output_kind: str
    has_ground_truth: bool
    val_case_ids: tuple[str, ...] = ()


@dataclass
class LiveTeacher:
    """A trained model run as a teacher in the loop (frozen, eval mode).

    ``distils_outputs``: its probabilities are a KD target (an assistant of the chain). The
    nnU-Net fold run live in the first link gives features only unless ``kd_source="live"``:
    by default KD there comes from the cache's 8-TTA ensemble maps of the unaugmented volumes.
    """

    name: str
    model: torch.nn.Module
    distils_outputs: bool = True
    #: voxels of context it is given around each patch (``Batch.context_images``); 0: the patch
    context: int = 0

    def run(self, batch: Batch, return_features: bool = False):
        """The model on this batch's patch, or on the patch with its context when it takes one."""
        if self.context and batch.context_images is None:
            raise ValueError(f"live teacher {self.name} takes {self.context} voxels of context; "
                             "the batch's sampler drew none")
        return self.model(batch.context_images if self.context else batch.images, return_features=return_features)


@dataclass
class LinkResult:
    name: str
    weights: Path
    metrics: dict[str, float]
    seconds: float
    steps_per_second: float
    peak_memory_mb: float
    loss_terms: dict[str, float] = field(default_factory=dict)


# One mean-over-teachers KD per output kind: regions are independent sigmoids, labels one softmax.
KD_OVER_TEACHERS = {"sigmoid": "kd_sigmoid_teachers", "softmax": "kd_softmax_teachers"}


def build_link_loss(config: TrainConfig, output_kind: str, has_ground_truth: bool,
                    graph_flow: dict[str, Any] | None = None, live_teacher: bool = False,
                    uncertainty_head: bool = False) -> CompositeLoss:
    """The composite loss of a link (terms with weight 0 are left out).

    ``graph_flow``: the :class:`~distill.losses.GraphFlowLoss` options (from a live teacher), or
    ``None`` for no graph-flow term. ``live_teacher``: a teacher runs in the loop, so feature
    terms (region affinity) can be built. ``uncertainty_head``: the model of the link has the
    distilled-uncertainty head, so the ``uncertainty_head`` term regresses it on the cache's
    teacher spread (whichever teacher the link's KD comes from). Terms come from
    :func:`distill.losses.build_loss`.
    """
    terms = []
    supervised_weight = 1.0 - config.kd_weight
    # KD warm-up: λ(t) = λ·ramp(t), and the supervised weight 1 - λ(t) with it
    warmup = {}
    if config.kd_warmup_steps and config.kd_weight > 0:
        warmup = {"kd": ramp_in(0, config.kd_warmup_steps),
                  "supervised": SupervisedDuringKDWarmup(config.kd_weight, config.kd_warmup_steps)}  # fmt: skip
    if supervised_weight > 0:
        if not has_ground_truth:
            raise TrainConfigError("the cache holds no ground truth: train with --kd-weight 1 (KD only)")
        if output_kind != "sigmoid":
            raise TrainConfigError(
                "ground truth is cached as WT/TC/ET regions; a softmax student trains with --kd-weight 1"
            )
        terms.append(build_loss("region_dice_bce", term_name="supervised", weight=supervised_weight,
                                inputs={"logits": "student_logits", "regions": "regions"},
                                **_schedule(warmup, "supervised")))  # fmt: skip
    if config.kd_weight > 0:
        kd_inputs, kd_options = _kd_label_options(config, output_kind, has_ground_truth)
        terms.append(build_loss(KD_OVER_TEACHERS[output_kind], term_name="kd", weight=config.kd_weight,
                                inputs=kd_inputs,
                                temperature=config.temperature, use_uncertainty=config.uncertainty_weighting,
                                **kd_options, **_schedule(warmup, "kd")))  # fmt: skip
    if graph_flow is not None:
        terms.append(build_loss("graph_flow", weight=config.graph_flow_weight,
                                schedule=ramp_in(config.graph_flow_start, config.graph_flow_ramp),
                                inputs={"student_shallow": "student_shallow", "student_deep": "student_deep",
                                        "teacher_shallow": "teacher_shallow", "teacher_deep": "teacher_deep"},
                                **graph_flow))  # fmt: skip
    if config.region_affinity_weight > 0 and live_teacher:
        if not has_ground_truth:
            raise TrainConfigError("region_affinity_weight needs the ground-truth regions in the cache")
        terms.append(build_loss("region_affinity", weight=config.region_affinity_weight,
                                inputs={"student_features": "student_affinity", "teacher_features": "teacher_affinity",
                                        "region_masks": "regions"}))  # fmt: skip
    if config.boundary_weight > 0 and has_ground_truth:
        # Boundary loss is ramped in over the second half of the link (Kervadec et al. 2021).
        terms.append(build_loss("boundary", weight=config.boundary_weight,
                                schedule=ramp_in(config.steps // 2, config.steps // 4),
                                inputs={"student_logits": "student_logits", "regions": "regions"}))  # fmt: skip
    if uncertainty_head:
        terms.append(build_loss("uncertainty_regression", term_name="uncertainty_head",
                                weight=config.uncertainty_head_weight,
                                inputs={"uncertainty_logits": "student_uncertainty_logits",
                                        "teacher_uncertainty": "teacher_uncertainty"}))  # fmt: skip
    if not terms:
        raise TrainConfigError("every loss term is switched off")
    return CompositeLoss(terms)


def _schedule(warmup: dict[str, Any], term: str) -> dict[str, Any]:
    """``{"schedule": ...}`` for a term the KD warm-up reschedules, else nothing (the term's default)."""
    return {"schedule": warmup[term]} if term in warmup else {}


def _kd_label_options(
    config: TrainConfig, output_kind: str, has_ground_truth: bool
) -> tuple[list[str], dict[str, Any]]:
    """The KD term's inputs and its correction/balance options; no options at the defaults, so
    the default term is built exactly as before the options existed. The labels are an input
    whenever the cache has them (correction needs them, the region balance uses them)."""
    inputs = ["student_logits", "teachers", "uncertainties"]
    if config.kd_correction == "none" and config.kd_balance == "voxel":
        return inputs, {}
    if output_kind != "sigmoid":
        raise TrainConfigError("kd_correction and kd_balance act on sigmoid regions; "
                               "a softmax teacher's KD has neither")
    if config.kd_correction != "none" and not has_ground_truth:
        raise TrainConfigError(f"kd_correction={config.kd_correction} corrects the teacher against ground truth, "
                               "which this cache does not hold")  # fmt: skip
    return inputs + (["regions"] if has_ground_truth else []), {"correction": config.kd_correction,
                                                                 "balance": config.kd_balance}  # fmt: skip


@dataclass(frozen=True)
class SupervisedDuringKDWarmup:
    """Schedule of the supervised term while λ warms up: ``(1 - λ·r(t)) / (1 - λ)`` times its
    weight ``1 - λ``, with ``r`` rising linearly from 0 to 1 over ``ramp_steps`` (the KD term's
    :func:`~distill.losses.ramp_in`); so the two weights add up to 1 at every step."""

    kd_weight: float
    ramp_steps: int

    def __call__(self, step: int) -> float:
        ramp = min(max(step / self.ramp_steps, 0.0), 1.0)
        return (1.0 - self.kd_weight * ramp) / (1.0 - self.kd_weight)


def _graph_flow_options(config: TrainConfig, student, teacher: LiveTeacher, sampler: PatchSampler,
                        device) -> dict[str, Any]:
    """:class:`GraphFlowLoss` options between the same named stages of student and live teacher, with
    paraphrasers pre-trained as autoencoders on the teacher's features (Zou et al. 2022, after Factor Transfer)."""
    shallow, deep = config.graph_flow_stages
    s_channels, t_channels = student.feature_channels(), teacher.model.feature_channels()
    for name in (shallow, deep):
        if name not in s_channels or name not in t_channels:
            raise TrainConfigError(f"graph-flow stage {name!r} not in the models' features ({', '.join(s_channels)})")
    embed = max(4, min(t_channels[shallow], t_channels[deep]))
    # Up to 4 nodes per axis, never more than the deep stage has voxels at this patch size.
    coarsest = max(student.feature_strides()[deep], teacher.model.feature_strides()[deep])
    nodes = max(1, min(4, *(p // coarsest for p in config.patch_size)))
    features = {shallow: [], deep: []}
    with torch.no_grad():
        for _ in range(config.paraphraser_batches):
            batch = sampler.sample(config.batch_size).to(device)
            _, teacher_features = teacher.run(batch, return_features=True)
            for name in features:
                features[name].append(teacher_features[name].detach())
    paraphrasers = tuple(pretrain_paraphraser(features[name], steps=config.paraphraser_steps,
                                              factor_channels=embed).to(device)
                         for name in (shallow, deep))  # fmt: skip
    return {
        "student_channels": (s_channels[shallow], s_channels[deep]),
        "teacher_channels": (t_channels[shallow], t_channels[deep]),
        "embed_channels": embed,
        "nodes_per_axis": nodes,
        "teacher_paraphrasers": paraphrasers,
    }


def _lr_at(config: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based) under ``config.lr_schedule``.

    ``lr_warmup_steps`` of linear warm-up (``lr·(step + 1)/warmup``), then, with ``t`` the
    fraction of the remaining steps done: ``"poly"`` ``lr·(1 - t)^0.9`` (nnU-Net's polynomial
    decay, stepped every iteration), ``"cosine"`` ``lr·(1 + cos πt)/2``, ``"constant"`` ``lr``.
    """
    warmup = config.lr_warmup_steps
    if config.lr_schedule == "poly" and not warmup:
        return config.lr * (1.0 - step / config.steps) ** 0.9
    if step < warmup:
        return config.lr * (step + 1) / warmup
    done = (step - warmup) / (config.steps - warmup)
    if config.lr_schedule == "poly":
        return config.lr * (1.0 - done) ** 0.9
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return config.lr


def _teacher_inputs(batch: Batch, live: Sequence[LiveTeacher], config: TrainConfig, rng: np.random.Generator,
                    need_features: bool, output_kind: str):
    """Teacher probabilities (and live-teacher features) for one batch; DGKD drops one at random."""
    sources: list[tuple[str, object]] = []
    kd_live = [t for t in live if t.distils_outputs]
    if not kd_live or config.dense_guidance:
        sources.append(("cache", None))
    sources += [(t.name, t) for t in (kd_live if config.dense_guidance else kd_live[-1:])]
    if config.dense_guidance and len(sources) > 1:
        sources.pop(int(rng.integers(len(sources))))
    teachers, uncertainties, features = [], [], None
    for _name, teacher in sources:
        if teacher is None:
            teachers.append(batch.teacher_probs)
            uncertainties.append(batch.teacher_uncertainty)
            continue
        with torch.no_grad():
            logits, teacher_features = teacher.run(batch, return_features=True)
        probs = torch.sigmoid(logits) if output_kind == "sigmoid" else torch.softmax(logits, dim=1)
        teachers.append(probs.float())
        uncertainties.append(None)
        if need_features and teacher is live[-1]:
            features = teacher_features
    if need_features and features is None:  # the graph-flow teacher was dropped this batch: run it anyway
        with torch.no_grad():
            _, features = live[-1].run(batch, return_features=True)
    return teachers, uncertainties, features


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class _Training:
    """What the loop changes; ``model`` is ``student`` as wrapped for DDP (the same module alone)."""

    student: torch.nn.Module
    model: torch.nn.Module
    loss_fn: CompositeLoss
    loss_params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    step: int = 0
    #: the moving average of the student's weights (``ema_decay`` > 0): what the link ships
    average: WeightAverage | None = None


def train_link(
    link: LinkConfig,
    *,
    student: torch.nn.Module,
    sampler: PatchSampler,
    dist: DistInfo,
    live_teachers: Sequence[LiveTeacher] = (),
) -> LinkResult:
    """Train ``student`` for one link (or load it if the link is done); returns its validation metrics."""
    link.link_dir.mkdir(parents=True, exist_ok=True)
    finished = _finished_link(link, student, dist.device)
    if finished is not None:
        return finished
    training = _build_training(link, student, live_teachers, sampler, dist)
    _resume(link, training, sampler, dist)
    progress = _Progress(link, training, dist.is_main)
    start_time, start_step = time.perf_counter(), training.step
    try:
        while training.step < link.train.steps:
            lr, logs = _train_step(link, training, sampler, live_teachers, dist)
            progress.record(training.step, lr, logs, time.perf_counter() - start_time)
            _maybe_checkpoint(link, training, sampler, progress, dist)
            _maybe_validate(link, training, sampler, progress, dist)
    finally:
        progress.close()
    return _finish(link, training, sampler, dist, time.perf_counter() - start_time, start_step)


def _finished_link(link: LinkConfig, student: torch.nn.Module, device: torch.device) -> LinkResult | None:
    """A finished link is loaded, never retrained, so a rerun chain skips straight past it."""
    weights_path = link.link_dir / WEIGHTS
    if not ((link.link_dir / DONE).is_file() and weights_path.is_file()):
        return None
    student.load_state_dict(torch.load(weights_path, map_location=device, weights_only=True))
    done = read_json_object(link.link_dir / DONE, "finished-link record", "remove the link folder to retrain it")
    return LinkResult(link.name, weights_path, done["metrics"], done["seconds"], done["steps_per_second"],
                      done["peak_memory_mb"])  # fmt: skip


def _build_training(
    link: LinkConfig, student: torch.nn.Module, live: Sequence[LiveTeacher], sampler: PatchSampler, dist: DistInfo
) -> _Training:
    """Student, loss and optimiser, built in a fixed order: graph flow draws batches and initial
    weights from the same RNG streams as the loop, so reordering would change every result."""
    config, device = link.train, dist.device
    student.to(device).train()
    loss_fn = _build_link_loss(link, student, live, sampler, device)
    # the graph-flow translators learn with the student, so they share its optimiser
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    model = dist.wrap(student)
    optimizer = torch.optim.AdamW([*student.parameters(), *loss_params], lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed + 7919 * dist.rank + 1)
    average = WeightAverage(student, config.ema_decay) if config.ema_decay > 0 else None
    return _Training(student, model, loss_fn, loss_params, optimizer, rng, average=average)


def _build_link_loss(
    link: LinkConfig, student: torch.nn.Module, live: Sequence[LiveTeacher], sampler: PatchSampler, device
) -> CompositeLoss:
    config = link.train
    graph_flow = None
    if config.graph_flow_weight > 0 and live:  # feature losses need a teacher run live, never the cache
        graph_flow = _graph_flow_options(config, student, live[-1], sampler, device)
    if config.region_affinity_weight > 0 and live:
        stage = config.region_affinity_stage
        for model in (student, live[-1].model):
            if stage not in model.feature_channels():
                raise TrainConfigError(f"region_affinity_stage {stage!r} is not a feature of "
                                       f"{type(model).__name__} ({', '.join(model.feature_channels())})")
    return build_link_loss(config, link.output_kind, link.has_ground_truth, graph_flow, live_teacher=bool(live),
                           uncertainty_head=has_uncertainty_head(student)).to(device)


def has_uncertainty_head(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a student built with the distilled-uncertainty head."""
    return bool(getattr(getattr(model, "config", None), "uncertainty_head", False))


def _resume(link: LinkConfig, training: _Training, sampler: PatchSampler, dist: DistInfo) -> None:
    """Continue from the link's checkpoint, if any, as if the run had never stopped."""
    checkpoint_path = link.link_dir / CHECKPOINT
    if not checkpoint_path.is_file():
        return
    state = torch.load(checkpoint_path, map_location=dist.device, weights_only=False)
    training.student.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.loss_fn.load_state_dict(state["loss"])
    training.step = int(state["step"])
    if training.average is not None:
        if state.get("average") is None:
            raise TrainConfigError(f"{checkpoint_path}: written without a weight average, but ema_decay is "
                                   f"{link.train.ema_decay}; remove the link folder to train it again")
        training.average.load_state_dict(state["average"])
    if dist.world_size == 1:
        sampler.load_state(state["sampler"])
        training.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    else:  # only rank 0's streams are checkpointed; the others are re-seeded from the step reached
        sampler.rng = np.random.default_rng(link.train.seed + 7919 * dist.rank + training.step)


def _train_step(
    link: LinkConfig, training: _Training, sampler: PatchSampler, live: Sequence[LiveTeacher], dist: DistInfo
) -> tuple[float, dict[str, float]]:
    """One optimiser step; returns its learning rate and the loss logs."""
    config, device = link.train, dist.device
    lr = _lr_at(config, training.step)
    for group in training.optimizer.param_groups:
        group["lr"] = lr
    batch = sampler.sample(config.batch_size).to(device)
    feature_terms = [t for t in training.loss_fn.terms if t.name in ("graph_flow", "region_affinity")]
    # teacher features cost a forward pass: only fetch them while a feature term is switched on
    need_features = any(t.weight_at(training.step) > 0 for t in feature_terms)
    teachers, uncertainties, teacher_features = _teacher_inputs(batch, live, config, training.rng, need_features,
                                                                link.output_kind)  # fmt: skip
    with_head = has_uncertainty_head(training.student)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
        if with_head:
            logits, features, uncertainty_logits = training.model(batch.images, return_features=True,
                                                                  return_uncertainty=True)  # fmt: skip
        else:
            logits, features = training.model(batch.images, return_features=True)
    tensors = {"student_logits": logits.float(), "teachers": teachers, "uncertainties": uncertainties}
    if with_head:  # the target is always the cache's spread of the teacher ensemble
        tensors.update(student_uncertainty_logits=uncertainty_logits.float(),
                       teacher_uncertainty=batch.teacher_uncertainty)
    if batch.regions is not None:
        tensors["regions"] = batch.regions
    if teacher_features is not None:
        shallow, deep = config.graph_flow_stages
        tensors.update(student_shallow=features[shallow].float(), student_deep=features[deep].float(),
                       teacher_shallow=teacher_features[shallow], teacher_deep=teacher_features[deep])  # fmt: skip
        if config.region_affinity_weight > 0:
            stage = config.region_affinity_stage
            tensors.update(student_affinity=features[stage].float(), teacher_affinity=teacher_features[stage])
    total, logs = training.loss_fn(training.step, **tensors)
    training.optimizer.zero_grad(set_to_none=True)
    total.backward()
    # DDP averages the student's gradients itself; the loss module's parameters are not in it
    all_reduce_grads(training.loss_params, dist)
    training.optimizer.step()
    if training.average is not None:
        training.average.update(training.student)
    training.step += 1
    return lr, logs


def _maybe_checkpoint(
    link: LinkConfig, training: _Training, sampler: PatchSampler, progress: _Progress, dist: DistInfo
) -> None:
    config = link.train
    if not (training.step % config.checkpoint_every == 0 or training.step == config.steps):
        return
    if dist.is_main:
        _save_checkpoint(link.link_dir / CHECKPOINT, {
            "model": training.student.state_dict(), "optimizer": training.optimizer.state_dict(),
            "loss": training.loss_fn.state_dict(), "step": training.step, "sampler": sampler.state(),
            "rng": training.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "training_hash": config.training_hash(),
            "average": training.average.state_dict() if training.average is not None else None,
        })  # fmt: skip
        # the log must never be behind the checkpoint, or a resumed run would leave a gap in it
        progress.flush()
    barrier(dist)


def _maybe_validate(
    link: LinkConfig, training: _Training, sampler: PatchSampler, progress: _Progress, dist: DistInfo
) -> None:
    every = link.train.val_every
    if every and training.step % every == 0 and dist.is_main and link.val_case_ids:
        metrics = validate(training.student, sampler.cache, list(link.val_case_ids), dist.device)
        progress.note(f"{link.name} step {training.step}: " + json.dumps(metrics))


def _finish(
    link: LinkConfig, training: _Training, sampler: PatchSampler, dist: DistInfo, seconds: float, start_step: int
) -> LinkResult:
    """Validate, then write ``weights.pt`` and ``done.json``; ``done.json`` last, since it marks the link finished."""
    device = dist.device
    if training.average is not None:  # the average is validated and shipped, not the last iterate
        training.average.copy_to(training.student)
    steps_per_second = (training.step - start_step) / seconds if seconds > 0 and training.step > start_step else 0.0
    run_validation = dist.is_main and link.val_case_ids
    metrics = validate(training.student, sampler.cache, list(link.val_case_ids), device) if run_validation else {}
    weights_path = link.link_dir / WEIGHTS
    result = LinkResult(link.name, weights_path, metrics, seconds, steps_per_second, _peak_memory_mb(device))
    if dist.is_main:
        with atomic_path(weights_path) as tmp:
            torch.save(training.student.state_dict(), tmp)
        atomic_write_json(link.link_dir / DONE, {"metrics": metrics, "seconds": seconds,
                                                 "steps_per_second": steps_per_second,
                                                 "peak_memory_mb": result.peak_memory_mb})  # fmt: skip
    barrier(dist)
    return result


class _Progress:
    """Progress bar, ``log.csv`` and TensorBoard of one link; only the main rank writes files."""

    def __init__(self, link: LinkConfig, training: _Training, is_main: bool) -> None:
        config, loss_fn = link.train, training.loss_fn
        self.name = link.name
        header = ["step", "lr", "seconds", "total"] + [f"{t.name}/{k}" for t in loss_fn.terms
                                                       for k in ("weight", "raw", "weighted")]  # fmt: skip
        if any(t.name == "graph_flow" for t in loss_fn.terms):
            header += ["graph_flow/vertex", "graph_flow/edge"]
        self.handle = self.writer = self.tensorboard = None
        if is_main:
            log_file = link.link_dir / LOG
            # a resumed link appends, so its log reads as one uninterrupted run
            fresh = not log_file.is_file() or training.step == 0
            self.handle = open(log_file, "w" if fresh else "a", newline="")  # noqa: SIM115
            self.writer = csv.DictWriter(self.handle, fieldnames=header, extrasaction="ignore", restval="")
            if fresh:
                self.writer.writeheader()
            self.tensorboard = _tensorboard_writer(link.link_dir)
        self.bar = tqdm(total=config.steps, initial=training.step, desc=link.name, unit="step",
                        disable=not (config.progress and is_main))  # fmt: skip

    def record(self, step: int, lr: float, logs: dict[str, float], elapsed: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k.endswith("/weighted") or k == "total"})
        if self.writer is not None:
            self.writer.writerow({"step": step, "lr": lr, "seconds": round(elapsed, 3), **logs})
        if self.tensorboard is not None:
            for key, value in logs.items():
                self.tensorboard.add_scalar(f"{self.name}/{key}", value, step)

    def note(self, text: str) -> None:
        self.bar.write(text)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        self.bar.close()
        if self.handle is not None:
            self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(link_dir: Path):
    """TensorBoard event files beside the CSV log (``tensorboard --logdir <out>/links``)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(link_dir / "tensorboard"))

