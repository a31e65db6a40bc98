"""The compact nnU-Net plan: narrower stages, optionally a smaller patch, nothing else changed."""

import json

import pytest

from distill.errors import DistillError
from distill.teacher.nnunet_build import (
    COMPACT_PLANS,
    CompactTeacherConfig,
    check_existing_compact_plan,
    check_fold_schedule,
    compact_plans,
    epoch_schedule,
)


def nnunet_like_plans() -> dict:
    """The parts of an nnU-Net 3d_fullres plan the compact rule touches (4 stages, z pooled twice)."""
    return {
        "plans_name": "nnUNetPlans",
        "configurations": {
            "3d_fullres": {
                "patch_size": [96, 80, 80],
                "spacing": [2.0, 2.0, 2.0],
                "architecture": {
                    "arch_kwargs": {
                        "n_stages": 4,
                        "features_per_stage": [32, 64, 128, 256],
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]],
                    }
                },
            }
        },
    }


def test_features_follow_the_rule_and_the_rest_is_kept():
    plans = compact_plans(nnunet_like_plans(), base_features=8, max_features=32)
    configuration = plans["configurations"]["3d_fullres"]
    assert plans["plans_name"] == COMPACT_PLANS
    assert configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 32]
    assert configuration["patch_size"] == [96, 80, 80]
    assert configuration["spacing"] == [2.0, 2.0, 2.0]
    assert plans["distill_compact_plan"]["features_per_stage"]["default"] == [32, 64, 128, 256]


def test_patch_is_replaced_and_recorded():
    plans = compact_plans(nnunet_like_plans(), base_features=8, max_features=64, patch_size=(64, 64, 36))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [64, 64, 36]
    assert plans["distill_compact_plan"]["patch_size"] == {"default": [96, 80, 80], "compact": [64, 64, 36]}


@pytest.mark.parametrize("patch, axis, total", [((60, 64, 64), 0, 8), ((64, 64, 34), 2, 4)])
def test_patch_not_divisible_by_the_total_stride_is_refused(patch, axis, total):
    with pytest.raises(DistillError, match=f"edge {patch[axis]} on axis {axis} .* total stride {total}"):
        compact_plans(nnunet_like_plans(), base_features=8, max_features=64, patch_size=patch)


def test_patch_with_the_wrong_number_of_axes_is_refused():
    with pytest.raises(DistillError, match="2 axes"):
        compact_plans(nnunet_like_plans(), base_features=8, max_features=64, patch_size=(64, 64))


def test_input_plans_are_not_modified():
    original = nnunet_like_plans()
    compact_plans(original, base_features=8, max_features=64, patch_size=(64, 64, 64))
    assert original == nnunet_like_plans()


def test_a_build_resumed_with_other_options_is_refused(tmp_path):
    plan_file = tmp_path / "plans.json"
    plan_file.write_text(
        json.dumps(compact_plans(nnunet_like_plans(), base_features=8, max_features=64, patch_size=(64, 64, 64)))
    )
    same = CompactTeacherConfig(work_dir=tmp_path, base_features=8, max_features=64, patch_size=(64, 64, 64))
    check_existing_compact_plan(plan_file, same)
    check_existing_compact_plan(tmp_path / "absent.json", same)
    for other in (dict(patch_size=(32, 32, 32)), dict(patch_size=None), dict(max_features=32)):
        config = CompactTeacherConfig(**{**same.__dict__, **other})
        with pytest.raises(DistillError, match="use a new work folder"):
            check_existing_compact_plan(plan_file, config)


@pytest.mark.parametrize(
    "iterations, expected",
    [(1000, (20, 50)), (2000, (40, 50)), (120, (20, 6)), (20, (20, 1)), (999, (21, 49)), (3, (3, 1))],
)
def test_epoch_schedule_splits_the_budget_into_annealing_epochs(iterations, expected):
    epochs, per_epoch = epoch_schedule(iterations)
    assert (epochs, per_epoch) == expected
    assert epochs * per_epoch >= iterations


@pytest.mark.parametrize("iterations", [20, 120, 1000, 2000])
def test_poly_rate_of_the_last_epoch_is_below_a_tenth_of_the_first(iterations):
    # nnU-Net's PolyLRScheduler: lr0 * (1 - epoch / num_epochs) ** 0.9, stepped once per epoch.
    epochs, _ = epoch_schedule(iterations)
    assert (1 - (epochs - 1) / epochs) ** 0.9 < 0.1


def test_epoch_schedule_refuses_a_non_positive_budget():
    with pytest.raises(DistillError, match="must be positive"):
        epoch_schedule(0)


def test_a_fold_resumed_with_another_budget_is_refused(tmp_path):
    check_fold_schedule(tmp_path / "fold_0", 1000)
    check_fold_schedule(tmp_path / "fold_0", 1000)  # same budget: resumes
    assert json.loads((tmp_path / "fold_0" / "distill_schedule.json").read_text())["epochs_x_iterations"] == [20, 50]
    with pytest.raises(DistillError, match="fold_0.*use a new work folder"):
        check_fold_schedule(tmp_path / "fold_0", 2000)
