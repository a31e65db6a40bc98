"""``distill train-student``: size the student, plan the teacher-assistant chain, train every link.

Chain rule: assistant sizes lie between one teacher member and the final student, geometric in
parameter count (see :func:`distill.students.assistant_sizes`). The first link learns from the
cached ensemble soft maps plus ground truth; every later link learns from the link before it,
run live (or, with dense guidance, from all earlier links and the cache). Each link is its own
folder under ``<out>/links/`` and resumes on its own, so a killed chain restarts at the link
and step it reached. The final student is written as ``student.pt`` (a plain state dict,
loadable with ``torch.load(weights_only=True)``) and described by ``student.json``.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.cache import TeacherCache
from distill.core.hashing import file_sha256
from distill.core.paths import prepare_output_dir
from distill.data.discovery import MODALITIES
from distill.students import (
    assistant_sizes,
    auto_assistants,
    build_student,
    config_for_params,
    config_for_ratio,
    describe_student,
)
from distill.students.card import (
    NO_TEACHER,
    STUDENT_CARD,
    STUDENT_WEIGHTS,
    LinkRecord,
    StudentCard,
    TrainingData,
    teacher_passes,
    uncertainty_head_record,
    write_student_run,
)
from distill.train.calibrate import calibrate_thresholds
from distill.train.config import TrainConfig, TrainConfigError, check_resumable, parse_assistants, save_config
from distill.train.distributed import init_distributed, shutdown
from distill.train.link import LinkConfig, LinkResult, LiveTeacher, train_link
from distill.train.sampler import PatchSampler
from distill.train.validate import validation_probabilities


@dataclass
class TrainResult:
    weights: Path
    card: Path
    parameters: int
    macs_128: int
    ratio: float
    chain: list[int]
    metrics: dict[str, float]
    links: list[LinkResult] = field(default_factory=list)
    rank: int = 0  # torchrun rank of this process; only rank 0 writes and reports


def split_cases(case_ids: list[str], n_val: int) -> tuple[list[str], list[str]]:
    """Deterministic held-out cases: the ``n_val`` case ids with the smallest hash (none if too few cases)."""
    if n_val <= 0 or len(case_ids) <= n_val:
        return sorted(case_ids), []
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    return sorted(ranked[n_val:]), sorted(ranked[:n_val])


def plan_chain(config: TrainConfig, teacher_params: int, student_params: int) -> list[int]:
    """Parameter budgets of the assistants, largest first (the final student not included)."""
    choice = parse_assistants(config.assistants)
    if choice == "auto":
        return assistant_sizes(teacher_params, student_params, auto_assistants(teacher_params, student_params))
    if isinstance(choice, int):
        return assistant_sizes(teacher_params, student_params, choice) if choice else []
    for size in choice:
        if not student_params < size < teacher_params:
            raise TrainConfigError(
                f"assistant size {size} must lie between the student ({student_params}) "
                f"and one teacher member ({teacher_params})"
            )
    return list(choice)


def _final_config(config: TrainConfig, teacher_params: int, out_channels: int, output_kind: str):
    """The final student's config: sized to the budget, then given the uncertainty head if asked
    (the head's few hundred parameters come on top of the budget and are reported on the card)."""
    sized = _sized_final_config(config, teacher_params, out_channels, output_kind)
    return sized.replace(uncertainty_head=True) if config.uncertainty_head else sized


def _sized_final_config(config: TrainConfig, teacher_params: int, out_channels: int, output_kind: str):
    # the option is passed only when set, so a default run sizes exactly as before it existed
    width = {"min_first_width": config.min_first_width} if config.min_first_width else {}
    if config.params is not None:
        if config.params >= teacher_params:
            raise TrainConfigError(
                f"--params {config.params} is not smaller than one teacher member ({teacher_params})"
            )
        return config_for_params(config.family, config.params, in_channels=4, out_channels=out_channels,
                                 output_kind=output_kind, **width)  # fmt: skip
    return config_for_ratio(config.family, config.ratio, teacher_params, in_channels=4, out_channels=out_channels,
                            output_kind=output_kind, **width)  # fmt: skip


def _check_label_options(config: TrainConfig, cache: TeacherCache, output_kind: str, val_ids: list[str]) -> None:
    """Options that need region maps or labelled validation cases fail before any training."""
    if output_kind != "sigmoid" and (config.et_fraction or config.calibrate_thresholds):
        raise TrainConfigError("et_fraction and calibrate_thresholds need region (sigmoid) maps; "
                               "this cache holds softmax labels")
    if config.calibrate_thresholds:
        if not val_ids:
            raise TrainConfigError(f"calibrate_thresholds needs validation cases, and {len(cache.case_ids)} cache "
                                   f"cases leave none for val_cases={config.val_cases}")  # fmt: skip
        unlabelled = [c for c in val_ids if not cache.entry(c).has_regions]
        if unlabelled:
            raise TrainConfigError(f"calibrate_thresholds needs ground truth on the validation cases; "
                                   f"{unlabelled[0]} has none")


def _card(config, cache, final_config, summary, chain_results, links, train_ids, val_ids, world_size,
          calibration=None) -> StudentCard:
    spec = cache.spec
    return StudentCard(
        student=final_config, parameters=summary.parameters, macs_128=summary.macs_128, family=config.family,
        channels=tuple(spec.teacher["channels"]),
        ratio_to_teacher=summary.parameters / spec.teacher["parameters_per_member"],
        chain=tuple(LinkRecord(name=r.name, parameters=size, steps=config.steps, seconds=r.seconds,
                               steps_per_second=r.steps_per_second, peak_memory_mb=r.peak_memory_mb,
                               validation=r.metrics)
                    for size, r in zip(chain_results, links)),
        loss={
            "supervised": "Dice + BCE on WT/TC/ET", "supervised_weight": 1 - config.kd_weight,
            "kd": KD_DESCRIPTIONS[config.kd_balance], "kd_weight": config.kd_weight,
            "kd_correction": config.kd_correction, "kd_balance": config.kd_balance,
            "kd_warmup_steps": config.kd_warmup_steps,
            "temperature": config.temperature, "dense_guidance": config.dense_guidance,
            "uncertainty_weighting": config.uncertainty_weighting, "graph_flow_weight": config.graph_flow_weight,
            "graph_flow_stages": list(config.graph_flow_stages), "boundary_weight": config.boundary_weight,
            **({"uncertainty_head": "Bernoulli cross-entropy against the cached teacher spread / 0.5",
                "uncertainty_head_weight": config.uncertainty_head_weight} if config.uncertainty_head else {}),
        },
        training={**config.to_dict(), "world_size": world_size},
        data=TrainingData(
            teacher=spec.teacher["name"], teacher_identity_hash=spec.teacher_hash, preprocessing=spec.preprocessing,
            cache=str(config.cache), cache_spec_hash=spec.identity_hash, mode=spec.mode,
            teacher_parameters_per_member=spec.teacher["parameters_per_member"],
            train_cases=tuple(train_ids), val_cases=tuple(val_ids),
        ),
        validation=links[-1].metrics if links else {},
        calibration=calibration,
        uncertainty_head=_head_record(config, cache, final_config, summary.parameters),
    )  # fmt: skip


def _head_record(config: TrainConfig, cache, final_config, parameters: int):
    """The card's record of the uncertainty head (``None`` without one): cost, and whose spread it learnt."""
    if not final_config.uncertainty_head:
        return None
    spec = cache.spec
    passes = teacher_passes(spec.teacher)
    members = ", ".join(spec.teacher.get("members") or ()) or "?"
    # no local path: the record travels into packages
    source = (f"teacher cache ({spec.mode} mode) of {spec.teacher['name']}: members {members}, "
              f"TTA {spec.teacher.get('tta')}" + (f" = {passes} passes per case" if passes else ""))
    if spec.mode == "oof":
        source += " (out-of-fold: a training case has only the folds that did not train on it)"
    return uncertainty_head_record(final_config, parameters, source, passes, weight=config.uncertainty_head_weight)


KD_DESCRIPTIONS = {
    "voxel": "per-channel binary KL of tempered sigmoids x T^2",
    "region": "per-channel binary KL of tempered sigmoids x T^2, each region normalised by its extent",
    "dice": "soft Dice between student and teacher maps per region (no temperature)",
    "dice_voxel": "soft Dice between student and teacher maps per region plus per-channel binary KL of "
                  "tempered sigmoids x T^2 (the supervised Dice + BCE with the teacher's map as target)",
}


def save_untrained_student(folder: Path, params: int, family: str = "unet", seed: int = 0,
                           validation: dict[str, float] | None = None, uncertainty_head: bool = False) -> Path:
    """A run folder (``student.pt`` + a minimal card) holding a randomly initialised student.

    For latency benchmarks and tests of export and inference, where what the network learnt
    does not matter; the card says so in place of a teacher. ``uncertainty_head`` adds the
    (untrained) distilled-uncertainty head.
    """
    torch.manual_seed(seed)
    config = config_for_params(family, params)
    if uncertainty_head:
        config = config.replace(uncertainty_head=True)
    model = build_student(config)
    summary = describe_student(model)
    head = uncertainty_head_record(config, summary.parameters, NO_TEACHER) if uncertainty_head else None
    card = StudentCard(
        student=config, parameters=summary.parameters, macs_128=summary.macs_128, family=family,
        channels=("WT", "TC", "ET"), validation=dict(validation or {}),
        data=TrainingData(teacher=NO_TEACHER, teacher_identity_hash="0" * 64,
                          preprocessing={"target_spacing": None, "divisor": 1, "image_order": 1,
                                         "normalisation": "zscore_in_brain_mask"}),
        uncertainty_head=head,
    )  # fmt: skip
    write_student_run(folder, model.state_dict(), card)
    return Path(folder)


def share_first_link(source_run: Path, target_run: Path) -> bool:
    """Start ``target_run`` from the finished first link of ``source_run``; ``False`` if there is none.

    For comparisons that differ only after the first link: e.g. a chain with graph flow and
    the same chain without it share link 0 exactly (it learns from the cache, and graph flow
    acts only on links with a live teacher), and the same seed gives bit-identical weights,
    so training it twice is wasted time. ``target_run`` must not have links yet; it then
    resumes past link 0 as after a kill. Links are matched by folder name (size included),
    so a first link of another size is never picked up.
    """
    finished = sorted(Path(source_run).glob("links/link0_*/done.json"))
    target_links = Path(target_run) / "links"
    if not finished or target_links.exists():
        return False
    target_links.mkdir(parents=True)
    shutil.copytree(finished[0].parent, target_links / finished[0].parent.name)
    return True


def live_nnunet_teacher(config: TrainConfig, cache: TeacherCache, channels: list[str], device) -> LiveTeacher:
    """One fold of the cache's nnU-Net teacher, run live for feature losses (and for KD with
    ``kd_source="live"``).

    Raises:
        TrainConfigError: the cache's teacher is not an nnU-Net ensemble, the fold is not one of
            its members, or the fold's checkpoint differs from the one that made the cache.
    """
    from distill.teacher.features import WithContext, nnunet_feature_network  # nnU-Net only when asked for

    identity = cache.spec.teacher.get("identity") or {}
    checkpoints = identity.get("checkpoints") if isinstance(identity, dict) else None
    if not checkpoints:
        raise TrainConfigError(f"{config.cache}: the cache's teacher records no nnU-Net checkpoints; "
                               "teacher_model_dir works with caches of an nnU-Net teacher")  # fmt: skip
    fold = config.teacher_fold or next(iter(checkpoints))
    fold = fold if fold.startswith("fold_") else f"fold_{fold}"
    if fold not in checkpoints:
        raise TrainConfigError(f"teacher_fold {fold}: not a member of the cache's teacher ({', '.join(checkpoints)})")
    name = identity.get("checkpoint_name", "checkpoint_final.pth")
    path = Path(config.teacher_model_dir) / fold / name
    if not path.is_file():
        raise TrainConfigError(f"{path}: missing; teacher_model_dir must be the nnU-Net model folder the cache used")
    if file_sha256(path) != checkpoints[fold]:
        raise TrainConfigError(f"{path}: not the checkpoint the cache's teacher used (its sha256 differs from "
                               f"{config.cache}/spec.json); point teacher_model_dir at that model folder")  # fmt: skip
    network = nnunet_feature_network(Path(config.teacher_model_dir), fold, channels=channels, modalities=MODALITIES,
                                     checkpoint=name, device=str(device))  # fmt: skip
    if config.teacher_context:
        try:
            network = WithContext(network, config.teacher_context)
        except ValueError as error:
            raise TrainConfigError(f"teacher_context: {error}") from None
    return LiveTeacher(name=f"nnunet_{fold}", model=network, distils_outputs=config.kd_source == "live",
                       context=config.teacher_context)


def train_student(config: TrainConfig) -> TrainResult:
    """Train the chain described by ``config`` (resuming what exists in ``config.out``)."""
    dist = init_distributed(config.device)
    try:
        return _train(config, dist)
    finally:
        shutdown(dist)


def _train(config: TrainConfig, dist) -> TrainResult:
    out = prepare_output_dir(config.out, "run folder")
    cache = TeacherCache.open(config.cache)
    teacher = cache.spec.teacher
    output_kind, channels, teacher_params = (teacher["output_kind"], list(teacher["channels"]),
                                             int(teacher["parameters_per_member"]))
    final_config = _final_config(config, teacher_params, len(channels), output_kind)
    if final_config.output_kind != output_kind or final_config.out_channels != len(channels):
        raise TrainConfigError(
            f"the cache's teacher outputs {output_kind} {channels}; the student would output "
            f"{final_config.output_kind} with {final_config.out_channels} channels"
        )
    student_params = describe_student(build_student(final_config)).parameters
    sizes = [*plan_chain(config, teacher_params, student_params), student_params]
    train_ids, val_ids = split_cases(cache.case_ids, config.val_cases)
    _check_label_options(config, cache, output_kind, val_ids)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        check_resumable(out / "run.json", config)
        save_config(out / "run.json", config)
    has_ground_truth = all(cache.entry(c).has_regions for c in train_ids)

    links: list[LinkResult] = []
    live: list[LiveTeacher] = []
    # the first link learns from the cache; with teacher_model_dir it also sees nnU-Net's features
    feature_teacher = live_nnunet_teacher(config, cache, channels, dist.device) if config.teacher_model_dir else None
    start = time.perf_counter()
    for index, size in enumerate(sizes):
        is_final = index == len(sizes) - 1
        link_config = final_config if is_final else config_for_params(
            config.family, size, in_channels=4, out_channels=len(channels), output_kind=output_kind,
            **({"min_first_width": config.min_first_width} if config.min_first_width else {}))  # fmt: skip
        torch.manual_seed(config.seed + index)  # same initial weights for the same link in every run
        model = build_student(link_config)
        name = f"link{index}_{'student' if is_final else 'assistant'}_{describe_student(model).parameters}"
        teachers_of_link = live if live else [t for t in (feature_teacher,) if t is not None]
        # the patches carry context only for a live teacher that takes it (the first link's nnU-Net fold)
        context = max((t.context for t in teachers_of_link), default=0)
        sampler = PatchSampler(cache, train_ids, config.patch_size, config.foreground_fraction,
                               seed=config.seed + 1000 * index + 7919 * dist.rank,
                               et_fraction=config.et_fraction, context=context,
                               augment=config.augment)  # fmt: skip
        link = LinkConfig(name=name, link_dir=out / "links" / name, train=config, output_kind=output_kind,
                          has_ground_truth=has_ground_truth, val_case_ids=tuple(val_ids))  # fmt: skip
        result = train_link(link, student=model, sampler=sampler, dist=dist, live_teachers=teachers_of_link)
        links.append(result)
        model.eval().requires_grad_(False)
        live.append(LiveTeacher(name=name, model=model))

    final_model = live[-1].model
    summary = describe_student(final_model)
    weights_path, card_path = out / STUDENT_WEIGHTS, out / STUDENT_CARD
    if dist.is_main:
        calibration = None
        if config.calibrate_thresholds:
            probabilities, truths = validation_probabilities(final_model, cache, val_ids, dist.device)
            calibration = calibrate_thresholds(probabilities, truths, val_ids, regions=channels)
        card = _card(config, cache, final_config, summary, sizes, links, train_ids, val_ids, dist.world_size,
                     calibration)  # fmt: skip
        write_student_run(out, final_model.state_dict(), card.with_total_seconds(time.perf_counter() - start))
    return TrainResult(
        weights=weights_path, card=card_path, parameters=summary.parameters, macs_128=summary.macs_128,
        ratio=summary.parameters / teacher_params, chain=sizes, metrics=links[-1].metrics, links=links, rank=dist.rank,
    )  # fmt: skip
