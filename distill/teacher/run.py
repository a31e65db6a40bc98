"""``distill teacher-cache``: run the teacher once over the training cases and cache what students need.

For each case: read and check it, run the teacher (all folds, or in out-of-fold mode only the
folds that did not train on it), preprocess the images with Distill's preprocessing (the grid
students train on), move the teacher's soft maps and uncertainty onto that grid, and write one
cache entry. Complete entries whose key still matches are skipped, so a killed run resumes.
``--shard i/n`` splits the cases deterministically by a hash of the case id; ``--engine ray``
runs the shards as Ray tasks that write into the same cache (entries are atomic, and the
cache spec is checked by every writer). The manifest is written once every case is complete.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill import __version__
from distill.cache import CacheSpec, CacheWriter
from distill.core.hashing import file_sha256
from distill.core.paths import prepare_output_dir, prepare_output_file
from distill.data.case import load_case
from distill.data.conventions import resolve_convention
from distill.data.discovery import CaseFiles, find_cases, find_label_maps
from distill.data.preprocess import PreprocessConfig, preprocess, to_preprocessed_grid
from distill.errors import DistillError
from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig

MODES = ("full", "oof")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class TeacherCacheConfig:
    """Everything ``distill teacher-cache`` needs.

    Attributes:
        model_dir: nnU-Net model folder (``<Trainer>__<Plans>__<configuration>``).
        images: cases in any layout Distill reads (ground truth taken from there when present).
        out: cache folder.
        labels: separate folder of ground-truth label maps, if not beside the images.
        folds, checkpoint, tta, tile_step, device: passed to the nnU-Net teacher.
        mode: ``"full"`` (every fold on every case) or ``"oof"`` (only folds that did not train on it).
        splits: nnU-Net's ``splits_final.json`` for ``oof`` (default: looked for in and beside the model folder).
        shard: ``(index, count)``, 0-based, or ``None`` for every case.
        engine: ``"local"`` or ``"ray"`` (``workers`` Ray tasks, one shard each).
        label_convention: of the ground truth (``auto`` detects).
        target_spacing: spacing of the students' grid in mm (``None`` keeps the original grid).
        workers: Ray tasks (one shard each) with ``engine="ray"``.
        members: extra teacher members (MONAI configs) averaged with the nnU-Net ensemble.
        member_weights: per-region weights fitted by ``distill teacher-weights``.
    """

    model_dir: Path
    images: Path
    out: Path
    labels: Path | None = None
    folds: tuple[str, ...] | None = None
    checkpoint: str = "checkpoint_final.pth"
    tta: str = "mirror8"
    tile_step: float = 0.5
    device: str = "cpu"
    mode: str = "full"
    splits: Path | None = None
    shard: tuple[int, int] | None = None
    engine: str = "local"
    workers: int = 2
    label_convention: str = "auto"
    target_spacing: tuple[float, float, float] | None = None
    members: tuple[Path, ...] = ()
    member_weights: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DistillError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise DistillError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.shard is not None and not (self.shard[1] >= 1 and 0 <= self.shard[0] < self.shard[1]):
            raise DistillError(f"--shard must be i/n with 0 <= i < n, got {self.shard[0]}/{self.shard[1]}")
        if self.mode == "oof" and self.members:
            raise DistillError("out-of-fold mode holds out nnU-Net folds; extra --member models cannot be held out")


@dataclass
class TeacherCacheResult:
    cache_dir: Path
    n_cases: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    complete: bool = False

    @property
    def seconds_per_case(self) -> float | None:
        return self.seconds / len(self.done) if self.done else None

    def merge(self, other: TeacherCacheResult) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.bytes_written += other.bytes_written


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` -> ``(1, 4)`` (0-based index)."""
    if not text:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise DistillError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from exc
    return index, count


def shard_of(case_id: str, count: int) -> int:
    """Deterministic shard of a case: stable across runs, machines and added cases."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") % count


def read_splits(config: TeacherCacheConfig) -> list[dict]:
    """nnU-Net's cross-validation splits (list of {"train": [...], "val": [...]} per fold)."""
    candidates = (
        [config.splits]
        if config.splits
        else [config.model_dir / "splits_final.json", config.model_dir.parent / "splits_final.json"]
    )
    for path in candidates:
        if path is not None and Path(path).is_file():
            try:
                return json.loads(Path(path).read_text())
            except json.JSONDecodeError as exc:
                raise DistillError(f"{path}: not valid JSON ({exc})") from exc
    raise DistillError(
        f"out-of-fold mode needs nnU-Net's splits_final.json (looked in {', '.join(str(c) for c in candidates)}); "
        "pass --splits nnUNet_preprocessed/<Dataset>/splits_final.json"
    )


def oof_members(case_id: str, folds: Sequence[str], splits: list[dict]) -> tuple[str, ...]:
    """Folds whose training set does not contain the case (all folds for a case outside training)."""
    members = []
    for fold in folds:
        index = fold.removeprefix("fold_")
        if not index.isdigit() or int(index) >= len(splits):
            raise DistillError(f"{fold}: no such fold in splits_final.json ({len(splits)} folds)")
        if case_id not in splits[int(index)]["train"]:
            members.append(fold)
    if not members:
        raise DistillError(f"case {case_id}: every selected fold trained on it; out-of-fold soft labels impossible")
    return tuple(members)


def build_teacher(config: TeacherCacheConfig):
    """The nnU-Net ensemble, or a weighted ensemble of it with extra members."""
    return build_ensemble(config.model_dir, config.members, config.member_weights, folds=config.folds,
                          checkpoint=config.checkpoint, tta=config.tta, tile_step=config.tile_step,
                          device=config.device)  # fmt: skip


def build_ensemble(model_dir, members=(), member_weights=None, **nnunet_options):
    """nnU-Net folds alone, or together with MONAI members (uniform or fitted per-region weights)."""
    nnunet = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, **nnunet_options))
    if not members:
        return nnunet
    from distill.teacher.ensemble import WeightedEnsemble
    from distill.teacher.torch_member import TorchMemberTeacher

    teachers = [nnunet, *(TorchMemberTeacher(path, device=nnunet_options.get("device", "cpu")) for path in members)]
    if member_weights:
        return WeightedEnsemble.from_weights_file(teachers, member_weights)
    return WeightedEnsemble(teachers)


@dataclass(frozen=True)
class TeacherWeightsJob:
    """``distill teacher-weights``: fit per-region member weights on validation cases."""

    model_dir: Path
    members: tuple[Path, ...]
    cases: Path
    output: Path
    folds: tuple[str, ...] | None = None
    tta: str = "mirror8"
    device: str = "cpu"
    label_convention: str = "auto"
    step: float = 0.1


def run_teacher_weights(job: TeacherWeightsJob):
    """Run every member once per validation case, fit weights per region, write them; returns the fit."""
    from distill.teacher.ensemble import TeacherWeightsConfig, fit_teacher_weights
    from distill.teacher.torch_member import TorchMemberTeacher

    if not job.members:
        raise DistillError("teacher-weights needs at least one --member besides the nnU-Net folds")
    prepare_output_file(job.output, "weights file")
    nnunet = NnUNetTeacher(
        NnUNetTeacherConfig(model_dir=job.model_dir, folds=job.folds, tta=job.tta, device=job.device)
    )
    teachers = [nnunet, *(TorchMemberTeacher(path, device=job.device) for path in job.members)]
    cases = [load_case(files) for files in find_cases(job.cases, require_labels=True)]
    return fit_teacher_weights(TeacherWeightsConfig(members=teachers, cases=cases, output=job.output,
                                                    label_convention=job.label_convention, step=job.step))  # fmt: skip


def _input_hashes(files: CaseFiles, label: Path | None) -> dict[str, str]:
    paths = {**files.images, **({"label": label} if label else {})}
    return {name: file_sha256(path) for name, path in paths.items()}


def _label_paths(config: TeacherCacheConfig, cases: list[CaseFiles]) -> dict[str, Path | None]:
    if config.labels is None:
        return {c.case_id: c.label for c in cases}
    found = find_label_maps(config.labels).files
    return {c.case_id: found.get(c.case_id) for c in cases}


def _cache_case(case_files, label_path, teacher, writer, spec, config, members, convention_name, key) -> int:
    case = load_case(replace(case_files, label=label_path))
    start = time.perf_counter()
    prediction = teacher.predict(case, members) if members is not None else teacher.predict(case)
    teacher_seconds = time.perf_counter() - start
    prepared = preprocess(case.images, case.affine, case.labels, PreprocessConfig(target_spacing=config.target_spacing),
                          source=case.case_id)  # fmt: skip
    regions = None
    if prepared.labels is not None:
        convention = resolve_convention(convention_name, np.unique(case.labels), case_files.layout, str(label_path))
        regions = convention.to_regions(prepared.labels, source=str(label_path))
    entry = writer.write_case(
        case.case_id,
        key=key,
        images=prepared.images,
        probabilities=to_preprocessed_grid(prediction.probabilities, prepared.record),
        uncertainty=to_preprocessed_grid(prediction.uncertainty, prepared.record),
        regions=regions,
        record=prepared.record.to_dict(),
        source={
            "case_id": case.case_id,
            "layout": case_files.layout,
            "members": list(members or spec.teacher["members"]),
        },
        n_passes=prediction.n_passes,
        seconds=teacher_seconds,
    )
    return writer.stored_bytes(entry)


def cache_spec(config: TeacherCacheConfig, teacher) -> CacheSpec:
    preprocessing = {"target_spacing": list(config.target_spacing) if config.target_spacing else None,
                     "divisor": 1, "image_order": 1, "normalisation": "zscore_in_brain_mask"}  # fmt: skip
    return CacheSpec.for_teacher(teacher.info, config.mode, preprocessing, toolkit_version=__version__)


def _run_local(config: TeacherCacheConfig) -> TeacherCacheResult:
    cases = find_cases(config.images)
    labels = _label_paths(config, cases)
    teacher = build_teacher(config)
    spec = cache_spec(config, teacher)
    writer = CacheWriter.open(config.out, spec, expected_case_ids=[c.case_id for c in cases])
    splits = read_splits(config) if config.mode == "oof" else None
    selected = [c for c in cases if config.shard is None or shard_of(c.case_id, config.shard[1]) == config.shard[0]]
    result = TeacherCacheResult(cache_dir=Path(config.out), n_cases=len(cases))
    start = time.perf_counter()
    bar = tqdm(selected, desc="teacher-cache", unit="case", disable=not config.progress)
    for files in bar:
        bar.set_postfix_str(files.case_id)
        members = oof_members(files.case_id, teacher.info.members, splits) if splits is not None else None
        inputs = {**_input_hashes(files, labels[files.case_id]), "label_convention": config.label_convention}
        key = writer.case_key(members or teacher.info.members, inputs)
        if writer.is_complete(files.case_id, key):
            result.skipped.append(files.case_id)
            continue
        try:
            result.bytes_written += _cache_case(files, labels[files.case_id], teacher, writer, spec, config, members,
                                                config.label_convention, key)  # fmt: skip
            result.done.append(files.case_id)
        except DistillError as exc:
            result.failed[files.case_id] = str(exc)
    result.seconds = time.perf_counter() - start
    # Every shard tries to finalise after its own writes; the last one to finish sees every case.
    result.complete = writer.finalize([c.case_id for c in cases])
    return result


def _run_shard_task(config: TeacherCacheConfig) -> TeacherCacheResult:
    import torch

    torch.set_num_threads(1)  # one core per Ray task; tasks run side by side
    return _run_local(config)


def _run_ray(config: TeacherCacheConfig) -> TeacherCacheResult:
    try:
        import ray
    except ImportError as exc:
        raise DistillError("--engine ray needs Ray: pip install 'distill[ray]'") from exc
    gpus = 1 if config.device.startswith("cuda") else 0
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus)(_run_shard_task)
    n = max(1, config.workers)
    futures = [task.remote(replace(config, engine="local", shard=(i, n), progress=False)) for i in range(n)]
    result = TeacherCacheResult(cache_dir=Path(config.out), n_cases=0)
    for shard_result in ray.get(futures):
        result.merge(shard_result)
        result.n_cases = shard_result.n_cases
        result.complete = result.complete or shard_result.complete
    return result


def run_teacher_cache(config: TeacherCacheConfig) -> TeacherCacheResult:
    """Fill (or finish) the cache at ``config.out``; returns what was done, skipped and failed."""
    start = time.perf_counter()
    prepare_output_dir(config.out, "cache folder")  # before the teacher loads: a bad --out costs nothing
    result = _run_ray(config) if config.engine == "ray" else _run_local(config)
    result.seconds = time.perf_counter() - start
    return result
