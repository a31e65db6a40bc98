"""Build a compact, real nnU-Net v2 teacher on phantoms with nnU-Net's own code.

Used as the test fixture, by the demo, and as the recipe for CPU-sized teachers:

1. phantom cases written as an nnU-Net raw dataset (region-based BraTS ``dataset.json``);
2. nnU-Net's fingerprint extraction, experiment planning and preprocessing (3d_fullres);
3. a *compact plan* derived from nnU-Net's: same stages, strides, kernels, spacing and
   preprocessing, but ``features_per_stage = base * 2**stage`` capped at ``max_features``
   (nnU-Net's default is 32 … 320, ~31 M parameters at BraTS scale); the plan keeps the
   default ``data_identifier`` so the preprocessed data is reused as is;
4. every requested fold trained by ``nnUNetTrainer`` itself for a fixed number of
   iterations (0 = networks initialised by the trainer and saved in its checkpoint format),
   optionally followed by nnU-Net's validation with ``--npz``-style probabilities.

nnU-Net's poly learning rate steps once per *epoch* (``lr0 * (1 - epoch / num_epochs) ** 0.9``),
so the iteration budget is split into epochs (:func:`epoch_schedule`): one epoch of N iterations
would train at the initial rate throughout. Every epoch ends in nnU-Net's ``checkpoint_latest.pth``,
and a build that was killed continues from it the way ``nnUNetv2_train --c`` does. nnU-Net writes its
checkpoints in place, so a kill during a write would leave a truncated file; this build makes every
checkpoint write atomic (:func:`_write_checkpoints_atomically`).

nnU-Net reads its folders from environment variables at import time, so everything that
imports ``nnunetv2`` runs in a child process (``python -m distill.teacher.nnunet_build``)
whose environment names the folders of this build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.errors import DistillError

COMPACT_PLANS = "nnUNetPlans_distillCompact"
#: Epoch length for budgets large enough to have ``MIN_EPOCHS`` of them (nnU-Net's default is 250).
ITERATIONS_PER_EPOCH = 50
#: Fewest epochs a budget is split into: with 20 the last epoch trains at (1/20)**0.9 = 6.7 % of the
#: initial rate; shorter budgets get shorter epochs rather than fewer of them.
MIN_EPOCHS = 20
TRAINER = "nnUNetTrainer"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class CompactTeacherConfig:
    """What to build.

    Attributes:
        work_dir: receives ``nnUNet_raw/``, ``nnUNet_preprocessed/`` and ``nnUNet_results/``.
        dataset_id, dataset_name: the nnU-Net dataset.
        n_cases, seed, phantom_shape: the phantom training set (at least 5 cases for 5 folds).
        base_features, max_features: width rule of the compact plan.
        iterations: training iterations per fold (0 = initialised, untrained networks).
        folds: which folds to build.
        export_validation_probabilities: run nnU-Net's validation and keep its ``.npz`` files.
        raw_dataset: use this existing nnU-Net raw dataset folder instead of phantoms.
        patch_size: training patch of the compact plan (``None`` keeps nnU-Net's); each axis
            must be divisible by the product of that axis's pooling strides.
        augmentation_workers: nnU-Net's ``nnUNet_n_proc_DA``: 0 augments in the training process
            (deterministic given the seed; what tests use), N > 0 in N background processes that
            overlap with the network's step (faster on 2 cores, batch order not reproducible).
        progress_plot_every_epoch: nnU-Net redraws ``progress.png`` after every epoch (about
            1.3 s on 2 cores, a 3000x5400 px figure); ``False`` draws it once per fold at the end,
            for budgets of many short epochs (the demo's 3 s epochs) where the redraw is over a quarter of the time.
    """

    work_dir: Path
    dataset_id: int = 991
    dataset_name: str = "DistillPhantoms"
    n_cases: int = 6
    seed: int = 0
    phantom_shape: tuple[int, int, int] = (48, 48, 32)
    base_features: int = 4
    max_features: int = 32
    iterations: int = 0
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    export_validation_probabilities: bool = False
    raw_dataset: Path | None = None
    patch_size: tuple[int, int, int] | None = None
    augmentation_workers: int = 0
    progress_plot_every_epoch: bool = True

    @property
    def dataset_folder_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.dataset_name}"


@dataclass(frozen=True)
class CompactTeacher:
    """Where the built teacher lives and what it is."""

    model_dir: Path
    raw_dataset_dir: Path
    preprocessed_dir: Path
    parameters_per_member: int
    folds: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)


def epoch_schedule(iterations: int) -> tuple[int, int]:
    """``(num_epochs, iterations_per_epoch)`` covering at least ``iterations`` training iterations.

    Epochs of :data:`ITERATIONS_PER_EPOCH` once the budget allows :data:`MIN_EPOCHS` of them,
    otherwise ``MIN_EPOCHS`` shorter epochs (down to one iteration each), so the poly schedule
    anneals whatever the budget. ``iterations`` must be positive.
    """
    if iterations <= 0:
        raise DistillError(f"teacher iterations must be positive, got {iterations}")
    per_epoch = min(ITERATIONS_PER_EPOCH, max(1, iterations // MIN_EPOCHS))
    return -(-iterations // per_epoch), per_epoch


def nnunet_environment(work_dir: Path) -> dict[str, str]:
    """Environment for an nnU-Net child process working under ``work_dir``."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(work_dir / "nnUNet_raw"),
        nnUNet_preprocessed=str(work_dir / "nnUNet_preprocessed"),
        nnUNet_results=str(work_dir / "nnUNet_results"),
        nnUNet_def_n_proc="1",
    )
    return env


def model_dir_for(config: CompactTeacherConfig) -> Path:
    return (
        Path(config.work_dir)
        / "nnUNet_results"
        / config.dataset_folder_name
        / f"{TRAINER}__{COMPACT_PLANS}__{CONFIGURATION}"
    )


def build_compact_nnunet(config: CompactTeacherConfig, log_path: Path | None = None) -> CompactTeacher:
    """Build (or finish building) the teacher; steps already done are skipped."""
    work = Path(config.work_dir).resolve()
    config = CompactTeacherConfig(**{**asdict(config), "work_dir": work})
    raw_dir = work / "nnUNet_raw" / config.dataset_folder_name
    seconds: dict[str, float] = {}
    if config.raw_dataset is not None:
        if not (Path(config.raw_dataset) / "dataset.json").is_file():
            raise DistillError(f"{config.raw_dataset}: not an nnU-Net raw dataset (no dataset.json)")
        raw_dir.parent.mkdir(parents=True, exist_ok=True)
        if not raw_dir.exists():
            raw_dir.symlink_to(Path(config.raw_dataset).resolve(), target_is_directory=True)
    elif not (raw_dir / "dataset.json").is_file():
        from distill.data.phantoms import PhantomConfig, write_phantoms

        start = time.perf_counter()
        write_phantoms(raw_dir, n_cases=config.n_cases, seed=config.seed,
                       config=PhantomConfig(shape=config.phantom_shape), layout="nnunet", progress=False)  # fmt: skip
        seconds["phantoms"] = time.perf_counter() - start
    check_existing_compact_plan(
        work / "nnUNet_preprocessed" / config.dataset_folder_name / f"{COMPACT_PLANS}.json", config
    )
    start = time.perf_counter()
    payload = json.dumps({**asdict(config), "work_dir": str(work), "raw_dataset": None, "parent_pid": os.getpid()})
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        done = subprocess.run(
            [sys.executable, "-m", "distill.teacher.nnunet_build", payload],
            env=nnunet_environment(work), stdout=log, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        if log_path:
            log.close()
    refusal = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    if done.returncode == 2 and refusal:  # an expected refusal: the child's one line, without its logs
        raise DistillError(refusal[-1].removeprefix("error: "))
    if done.returncode != 0:
        raise DistillError(f"building the nnU-Net teacher in {work} failed:\n{done.stderr[-3000:]}")
    seconds["nnunet"] = time.perf_counter() - start
    summary = json.loads((model_dir_for(config) / "distill_build.json").read_text())
    return CompactTeacher(
        model_dir=model_dir_for(config),
        raw_dataset_dir=raw_dir,
        preprocessed_dir=work / "nnUNet_preprocessed" / config.dataset_folder_name,
        parameters_per_member=summary["parameters_per_member"],
        folds=tuple(config.folds),
        seconds={**seconds, **summary["seconds"]},
    )


# --------------------------------------------------------------------------- child process


def compact_plans(
    plans: dict, base_features: int, max_features: int, patch_size: tuple[int, ...] | None = None
) -> dict:
    """nnU-Net's plans with narrower 3d_fullres stages and optionally a smaller patch (see the module docstring)."""
    plans = json.loads(json.dumps(plans))
    plans["plans_name"] = COMPACT_PLANS
    configuration = plans["configurations"][CONFIGURATION]
    arch = configuration["architecture"]["arch_kwargs"]
    default_features = list(arch["features_per_stage"])
    arch["features_per_stage"] = [min(base_features * 2**i, max_features) for i in range(arch["n_stages"])]
    default_patch = list(configuration["patch_size"])
    if patch_size is not None:
        configuration["patch_size"] = _checked_patch(list(patch_size), arch["strides"])
    plans["distill_compact_plan"] = {
        "derived_from": "nnUNetPlans",
        "configuration": CONFIGURATION,
        "features_per_stage": {"default": default_features, "compact": arch["features_per_stage"]},
        "patch_size": {"default": default_patch, "compact": configuration["patch_size"]},
        "rule": f"min({base_features} * 2**stage, {max_features}); patch as given (or nnU-Net's); "
                "everything else (stages, strides, kernels, spacing, normalisation) as planned by nnU-Net",
    }  # fmt: skip
    return plans


def check_existing_compact_plan(compact_file: Path, config: CompactTeacherConfig) -> None:
    """Refuse to resume a build whose compact plan was written with other widths or another patch
    (the plan is written once and reused, so a changed option would otherwise be ignored)."""
    if not compact_file.is_file():
        return
    recorded = json.loads(compact_file.read_text()).get("distill_compact_plan", {})
    patch = recorded.get("patch_size")
    wanted_rule = f"min({config.base_features} * 2**stage, {config.max_features})"
    wanted_patch = list(config.patch_size) if config.patch_size else (patch or {}).get("default")
    if not recorded.get("rule", "").startswith(wanted_rule) or (patch and patch["compact"] != wanted_patch):
        raise DistillError(f"{compact_file}: written for features {recorded.get('rule')!r} and patch "
                           f"{(patch or {}).get('compact')}, not {wanted_rule} and {wanted_patch}; "
                           "use a new work folder")  # fmt: skip


def check_fold_schedule(fold_dir: Path, iterations: int) -> None:
    """Record the fold's iteration budget, or refuse to resume or reuse a fold trained with another one
    (a finished fold is otherwise kept whatever the options, and a checkpoint would continue under a
    different schedule)."""
    record = fold_dir / "distill_schedule.json"
    wanted = {"iterations": iterations,
              "epochs_x_iterations": list(epoch_schedule(iterations)) if iterations > 0 else [0, 0]}  # fmt: skip
    if record.is_file():
        found = json.loads(record.read_text())
        if found != wanted:
            raise DistillError(f"{record}: fold trained with {found}, not {wanted}; use a new work folder")
        return
    fold_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".json.partial")
    tmp.write_text(json.dumps(wanted) + "\n")
    os.replace(tmp, record)


def _checked_patch(patch: list[int], strides: list[list[int]]) -> list[int]:
    """``patch`` if every axis is divisible by its total pooling stride (the encoder's bottleneck grid)."""
    if len(patch) != len(strides[0]):
        raise DistillError(f"compact plan: patch {patch} has {len(patch)} axes, the network {len(strides[0])}")
    for axis, edge in enumerate(patch):
        total = 1
        for stage in strides:
            total *= stage[axis]
        if edge % total:
            raise DistillError(f"compact plan: patch edge {edge} on axis {axis} is not divisible by the network's "
                               f"total stride {total} on that axis")  # fmt: skip
    return patch


def _write_checkpoints_atomically(trainer) -> None:
    """Route ``trainer.save_checkpoint`` through a temporary file and a rename.

    nnU-Net's ``save_checkpoint`` calls ``torch.save`` on the final name; with one-iteration epochs
    (short budgets) a kill lands inside that write often enough to matter, and the resumed build then
    fails on a truncated ``checkpoint_latest.pth``. After this, a checkpoint is either the previous
    complete one or the new complete one.
    """
    save = trainer.save_checkpoint

    def save_atomically(filename: str) -> None:
        partial = f"{filename}.partial"
        save(partial)
        if os.path.exists(partial):  # nnU-Net skips the write on other ranks or with checkpointing disabled
            os.replace(partial, filename)

    trainer.save_checkpoint = save_atomically


def _load_latest_or_refuse(trainer, latest: Path) -> None:
    """``trainer.load_checkpoint(latest)``, or one line naming the file when it cannot be read."""
    try:
        trainer.load_checkpoint(str(latest))  # as nnUNetv2_train --c: weights, optimiser, epoch, curves
    except (EOFError, RuntimeError, OSError, KeyError) as error:
        # Only a file written before checkpoint writes were atomic (or damaged since) gets here.
        raise DistillError(f"{latest}: cannot continue from this checkpoint ({type(error).__name__}: {error}); "
                           "delete it to train the fold again from the start") from None  # fmt: skip


def _child(config: dict) -> None:  # pragma: no cover - runs in the child process, covered by integration tests
    import shutil

    import numpy as np
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    dataset_id = config["dataset_id"]
    pre_dir = Path(os.environ["nnUNet_preprocessed"]) / f"Dataset{dataset_id:03d}_{config['dataset_name']}"
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    if not (pre_dir / "nnUNetPlans.json").is_file():
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
        plan_experiments([dataset_id])
    compact_file = pre_dir / f"{COMPACT_PLANS}.json"
    if not compact_file.is_file():
        plans = json.loads((pre_dir / "nnUNetPlans.json").read_text())
        compact_file.write_text(
            json.dumps(
                compact_plans(plans, config["base_features"], config["max_features"], config["patch_size"]), indent=2
            )
        )
    plans = json.loads(compact_file.read_text())
    data_dir = pre_dir / plans["configurations"][CONFIGURATION]["data_identifier"]
    if not data_dir.is_dir():
        preprocess([dataset_id], COMPACT_PLANS, configurations=(CONFIGURATION,), num_processes=(1,), verbose=False)
    seconds["plan_and_preprocess"] = time.perf_counter() - start

    # Augmentation workers for training (0: in-process and deterministic). Set only now because
    # nnU-Net's planner passes the same number to torch.set_num_threads.
    os.environ["nnUNet_n_proc_DA"] = str(int(config.get("augmentation_workers", 0)))
    dataset_json = json.loads((pre_dir / "dataset.json").read_text())
    parameters = 0
    for fold in config["folds"]:
        start = time.perf_counter()
        torch.manual_seed(config["seed"] * 100 + fold)
        np.random.seed(config["seed"] * 100 + fold)
        fold_dir = Path(os.environ["nnUNet_results"]) / f"Dataset{dataset_id:03d}_{config['dataset_name']}" / \
            f"{TRAINER}__{COMPACT_PLANS}__{CONFIGURATION}" / f"fold_{fold}"
        latest = fold_dir / "checkpoint_latest.pth"
        # nnU-Net 2.8 reads (and pops) a "continue_training" flag from the plans it is given; it
        # decides whether its logger resumes the curves of an interrupted run.
        trainer_plans = {**json.loads(json.dumps(plans)), "continue_training": latest.is_file()}
        trainer = nnUNetTrainer(trainer_plans, CONFIGURATION, fold, dataset_json, device=torch.device("cpu"))
        _write_checkpoints_atomically(trainer)
        final = Path(trainer.output_folder) / "checkpoint_final.pth"
        check_fold_schedule(fold_dir, config["iterations"])
        if not final.is_file():
            if config["iterations"] > 0:
                # Set before initialize(): nnU-Net builds its PolyLRScheduler from num_epochs there.
                trainer.num_epochs, trainer.num_iterations_per_epoch = epoch_schedule(config["iterations"])
                trainer.num_val_iterations_per_epoch = max(1, trainer.num_iterations_per_epoch // 10)
                trainer.save_every = 1  # a killed build loses at most one epoch
                if latest.is_file():
                    _load_latest_or_refuse(trainer, latest)
                if not config.get("progress_plot_every_epoch", True):
                    trainer.logger.plot_progress_png = lambda folder: None  # drawn once below instead
                trainer.run_training()
                if not config.get("progress_plot_every_epoch", True):
                    type(trainer.logger).plot_progress_png(trainer.logger, trainer.output_folder)
            else:
                trainer.initialize()
                # nnU-Net records the flips it allows at inference while it sets up training
                # augmentation; an untrained checkpoint must record them too, or "mirror8"
                # prediction would silently run without mirroring.
                trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
                trainer.do_split()
                Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
                base = Path(trainer.output_folder_base)
                (base / "plans.json").write_text(json.dumps(plans, indent=2))
                (base / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
                shutil.copyfile(pre_dir / "dataset_fingerprint.json", base / "dataset_fingerprint.json")
                trainer.save_checkpoint(str(final))
            if config["export_validation_probabilities"]:
                trainer.initialize() if not trainer.was_initialized else None
                trainer.load_checkpoint(str(final))
                trainer.perform_actual_validation(save_probabilities=True)
        if not parameters:
            if not trainer.was_initialized:
                trainer.initialize()
            parameters = sum(p.numel() for p in trainer.network.parameters())
        seconds[f"fold_{fold}"] = time.perf_counter() - start
    out = Path(os.environ["nnUNet_results"]) / f"Dataset{dataset_id:03d}_{config['dataset_name']}"
    summary = {"parameters_per_member": parameters, "seconds": seconds, "iterations": config["iterations"],
               "epochs_x_iterations": list(epoch_schedule(config["iterations"])) if config["iterations"] else [0, 0]}
    (out / f"{TRAINER}__{COMPACT_PLANS}__{CONFIGURATION}" / "distill_build.json").write_text(
        json.dumps(summary, indent=2)
    )


if __name__ == "__main__":  # pragma: no cover
    from distill.core.lifecycle import exit_with_parent

    # a parent killed by a signal must not leave this trainer running into the folders (and onto
    # the cores) of the next attempt, which continues from the last checkpoint instead
    payload = json.loads(sys.argv[1])
    exit_with_parent(payload.get("parent_pid"))
    try:
        _child(payload)
    except DistillError as error:  # an expected refusal: one line for the parent to show
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
