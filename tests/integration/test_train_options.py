"""The train-student options of issue 14 item 2, each run end to end on the stub-teacher cache.

Each test trains a few steps from ``stub_cache`` (tests/conftest.py, no nnU-Net) and checks
that the option changes what it should and nothing else: with the same seed, the first
batch and initial weights are the same, so a changed KD term shows in step 0's ``kd/raw``
while ``supervised/raw`` stays equal. Default behaviour is pinned separately: the options at
their defaults leave weights, logs and the training hash as they were.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distill.cache import TeacherCache
from distill.students.card import read_card
from distill.train import TrainConfig, TrainConfigError, train_student
from distill.train.calibrate import THRESHOLD_GRID
from distill.train.sampler import PatchSampler

FAST = dict(params=6000, steps=3, batch_size=1, patch_size=(24, 24, 24), checkpoint_every=3, progress=False,
            val_cases=0)


def _log(run: Path) -> list[dict[str, str]]:
    link = next((run / "links").glob("link0_*"))
    with open(link / "log.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def baseline(stub_cache, tmp_path_factory) -> list[dict[str, str]]:
    """Log of a run with every option at its default."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, **FAST))
    return _log(out)


@pytest.mark.parametrize("options", [dict(kd_correction="adjust"), dict(kd_correction="mask"),
                                     dict(kd_balance="region"), dict(kd_balance="dice"),
                                     dict(kd_correction="adjust", kd_balance="region")])  # fmt: skip
def test_kd_options_change_the_kd_term_and_only_it(stub_cache, tmp_path, baseline, options):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, **options, **FAST))
    first, before = _log(out)[0], baseline[0]
    assert first["supervised/raw"] == before["supervised/raw"]  # same batch, same initial weights
    assert float(first["kd/raw"]) != float(before["kd/raw"])
    assert math.isfinite(float(first["total"]))
    card = read_card(out / "student.json")
    for key, value in options.items():
        assert card.loss[key] == value and card.training[key] == value


def test_kd_warmup_ramps_lambda_and_the_supervised_weight_with_it(stub_cache, tmp_path):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, **{**FAST, "steps": 5}, kd_weight=0.7, kd_warmup_steps=4))
    rows = _log(out)
    # λ(t) = 0.7 t / 4 at steps 0..4, the supervised weight 1 - λ(t)
    assert [float(r["kd/weight"]) for r in rows] == pytest.approx([0.0, 0.175, 0.35, 0.525, 0.7])
    assert [float(r["supervised/weight"]) for r in rows] == pytest.approx([1.0, 0.825, 0.65, 0.475, 0.3])
    assert rows[0]["kd/weighted"] == "0.0"  # not evaluated while its weight is 0
    assert read_card(out / "student.json").training["kd_warmup_steps"] == 4


def test_temperature_one_trains_and_is_recorded(stub_cache, tmp_path, baseline):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, temperature=1.0, **FAST))
    assert float(_log(out)[0]["kd/raw"]) != float(baseline[0]["kd/raw"])  # T = 2 by default
    assert read_card(out / "student.json").loss["temperature"] == 1.0


def test_cosine_schedule_with_warmup_sets_the_logged_learning_rates(stub_cache, tmp_path):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, **{**FAST, "steps": 5}, lr=0.01, lr_schedule="cosine",
                              lr_warmup_steps=2))  # fmt: skip
    # warm-up 0.01 * 1/2, 0.01 * 2/2; then t = 0, 1/3, 2/3 of the 3 remaining steps: 0.01 (1 + cos πt) / 2
    expected = [0.005, 0.01, 0.01, 0.01 * 0.75, 0.01 * 0.25]
    assert [float(r["lr"]) for r in _log(out)] == pytest.approx(expected)


def _share_with_et(sampler: PatchSampler, draws: int) -> float:
    hits = sum(bool(sampler.sample(1).regions[0, 2].any()) for _ in range(draws))
    return hits / draws


def test_et_oversampling_raises_the_share_of_patches_holding_et(stub_cache):
    cache = TeacherCache.open(stub_cache)
    cases = list(cache.case_ids)
    # small patches (8³) in 32x32x24 volumes: a random patch rarely holds ET, an ET-centred one always
    plain = PatchSampler(cache, cases, (8, 8, 8), foreground_fraction=0.0, seed=3)
    oversampled = PatchSampler(cache, cases, (8, 8, 8), foreground_fraction=0.0, seed=3, et_fraction=0.8)
    share_plain, share_et = _share_with_et(plain, 200), _share_with_et(oversampled, 200)
    # every ET-centred patch holds ET: at least 0.8 expected; binomial sd at n = 200 is < 0.03
    assert share_et >= 0.72 and share_et > share_plain + 0.3, (share_plain, share_et)


def test_et_fraction_zero_draws_exactly_the_patches_of_the_sampler_without_it(stub_cache):
    cache = TeacherCache.open(stub_cache)
    cases = list(cache.case_ids)
    a = PatchSampler(cache, cases, (16, 16, 16), 0.33, seed=5)
    b = PatchSampler(cache, cases, (16, 16, 16), 0.33, seed=5, et_fraction=0.0)
    for _ in range(10):
        assert np.array_equal(a.sample(2).images.numpy(), b.sample(2).images.numpy())


def test_context_draws_the_same_patches_and_surrounds_them(stub_cache):
    cache = TeacherCache.open(stub_cache)
    cases = list(cache.case_ids)
    bare = PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=5, et_fraction=0.2)
    wide = PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=5, et_fraction=0.2, context=8)
    for _ in range(6):  # 32x32x24 volumes: most boxes reach past the volume and are zero-padded there
        a, b = bare.sample(2), wide.sample(2)
        assert a.context_images is None and b.context_images.shape == (2, 4, 32, 32, 32)
        for name in ("images", "teacher_probs", "teacher_uncertainty", "regions"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(b.context_images[:, :, 8:24, 8:24, 8:24], b.images)  # the centre is the patch
    with pytest.raises(ValueError, match="context must be >= 0"):
        PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=5, context=-1)


def test_strong_augmentation_changes_the_images_and_nothing_else(stub_cache):
    """The first patch of a strong sampler has the light sampler's box and flips (same draws, same
    maps and labels); only its intensities differ, and only where a transform fired."""
    cache = TeacherCache.open(stub_cache)
    cases = list(cache.case_ids)
    changed = 0
    for seed in range(10):
        light = PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=seed).sample(1)
        strong = PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=seed, augment="strong").sample(1)
        for name in ("teacher_probs", "teacher_uncertainty", "regions"):
            assert torch.equal(getattr(light, name), getattr(strong, name)), name
        changed += not torch.equal(light.images, strong.images)
    assert 4 <= changed <= 10, changed  # a patch is left alone with probability ~0.21
    with pytest.raises(ValueError, match="augment must be one of light, strong; got 'heavy'"):
        PatchSampler(cache, cases, (16, 16, 16), 0.5, seed=0, augment="heavy")


def test_strong_augmentation_acts_on_the_context_box_the_teacher_sees(stub_cache):
    """The teacher's box and the student's patch get one augmentation (the patch is the box's centre),
    and it is not the light one: the first box of each seed differs from the light sampler's."""
    cache = TeacherCache.open(stub_cache)
    changed = 0
    for seed in range(6):
        light = PatchSampler(cache, list(cache.case_ids), (16, 16, 16), 0.5, seed=seed, context=8).sample(1)
        strong = PatchSampler(cache, list(cache.case_ids), (16, 16, 16), 0.5, seed=seed, context=8,
                              augment="strong").sample(1)  # fmt: skip
        assert torch.equal(strong.context_images[:, :, 8:24, 8:24, 8:24], strong.images)
        assert torch.equal(light.teacher_probs, strong.teacher_probs)
        changed += not torch.equal(light.context_images, strong.context_images)
    assert changed >= 2, changed


def test_strong_augmentation_trains_and_is_recorded(stub_cache, tmp_path):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, augment="strong", **FAST))
    assert read_card(out / "student.json").training["augment"] == "strong"


def test_et_fraction_trains_end_to_end(stub_cache, tmp_path):
    out = tmp_path / "run"
    train_student(TrainConfig(cache=stub_cache, out=out, et_fraction=0.5, foreground_fraction=0.3, **FAST))
    assert read_card(out / "student.json").training["et_fraction"] == 0.5


def test_min_first_width_gives_a_30k_student_four_first_channels(stub_cache, tmp_path):
    out = tmp_path / "run"
    small = {**FAST, "params": 30_000, "steps": 1, "patch_size": (16, 16, 16)}
    result = train_student(TrainConfig(cache=stub_cache, out=out, **small, min_first_width=4))
    card = read_card(out / "student.json")
    assert card.student.widths[0] >= 4 and abs(result.parameters - 30_000) <= 0.05 * 30_000
    assert card.training["min_first_width"] == 4


@pytest.fixture(scope="module")
def calibrated_run(stub_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calibrated") / "run"
    options = {**FAST, "val_cases": 1, "steps": 4}
    train_student(TrainConfig(cache=stub_cache, out=out, **options, calibrate_thresholds=True))
    return out


def test_calibrated_thresholds_appear_on_the_card(calibrated_run):
    card = read_card(calibrated_run / "student.json")
    calibration = card.calibration
    assert calibration is not None and calibration.cases == card.data.val_cases and len(calibration.cases) == 1
    assert set(calibration.thresholds) == {"WT", "TC", "ET"}
    assert all(t in THRESHOLD_GRID for t in calibration.thresholds.values())
    for region in ("WT", "TC", "ET"):
        # the default is in the grid, so calibration never scores below it; at 0.5 it is the validation Dice
        assert calibration.dice_calibrated[region] >= calibration.dice_default[region]
        assert calibration.dice_default[region] == pytest.approx(card.validation[f"dice_gt/{region}"], abs=1e-12)
    stored = json.loads((calibrated_run / "student.json").read_text())
    assert stored["calibration"]["thresholds"] == calibration.thresholds
    assert card.summary()["calibration"]["thresholds"] == calibration.thresholds


def test_export_uses_the_cards_thresholds_unless_given(calibrated_run, tmp_path):
    from distill.export.run import ExportConfig, export_package, package_thresholds
    from distill.package import ModelPackage

    card = read_card(calibrated_run / "student.json")
    expected = tuple(card.calibration.thresholds[r] for r in ("WT", "TC", "ET"))
    package = ModelPackage.open(export_package(ExportConfig(run_dir=calibrated_run, out=tmp_path / "pkg",
                                                            n_phantoms=1)).package_dir)  # fmt: skip
    assert package.thresholds == expected
    assert package.manifest.output.threshold_source == "student card calibration"
    # an explicit choice wins and says so; a card without calibration keeps 0.5 and writes no source
    explicit = ExportConfig(run_dir=calibrated_run, out=tmp_path / "other", thresholds=(0.5, 0.4, 0.3))
    assert package_thresholds(explicit, card) == ((0.5, 0.4, 0.3), "explicit")
    from dataclasses import replace

    assert package_thresholds(ExportConfig(run_dir=calibrated_run, out=tmp_path / "x"),
                              replace(card, calibration=None)) == ((0.5, 0.5, 0.5), None)  # fmt: skip


def test_calibration_without_validation_cases_is_refused(stub_cache, tmp_path):
    with pytest.raises(TrainConfigError, match="calibrate_thresholds needs validation cases"):
        TrainConfig(cache=stub_cache, out=tmp_path / "run", calibrate_thresholds=True, **FAST)
    # 5 cache cases, 5 asked for: none left to train, so split_cases keeps them all for training
    with pytest.raises(TrainConfigError, match="leave none"):
        train_student(TrainConfig(cache=stub_cache, out=tmp_path / "run", calibrate_thresholds=True,
                                  **{**FAST, "val_cases": 5}))  # fmt: skip


def test_recipe_and_set_through_the_command_line(stub_cache, tmp_path, monkeypatch):
    import distill.train
    from distill.cli import app

    seen = {}

    class Result:
        rank = 1  # makes the command return without printing

    def fake_train(config):
        seen["config"] = config
        return Result()

    monkeypatch.setattr(distill.train, "train_student", fake_train)
    runner = CliRunner()
    command = ["train-student", "--cache", str(stub_cache), "--out", str(tmp_path / "run"), "--recipe", "brats-30k",
               "--steps", "300", "--set", "kd_balance=dice", "--set", "et_fraction=0.1"]  # fmt: skip
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    config = seen["config"]
    # the recipe's options, the flag given (--steps), then --set; flags left at their defaults do not undo the recipe
    assert (config.recipe, config.params, config.min_first_width, config.steps) == ("brats-30k", 30_000, 4, 300)
    assert (config.kd_balance, config.et_fraction) == ("dice", 0.1)
    assert (config.kd_correction, config.temperature) == ("adjust", 1.0)
    assert config.kd_weight == 0.5 and not config.calibrate_thresholds  # the recipes ship 0.5 thresholds
    # an explicit --ratio replaces the recipe's --params
    result = runner.invoke(app, [*command[:7], "--ratio", "0.2"])
    assert result.exit_code == 0, result.output
    assert (seen["config"].params, seen["config"].ratio) == (None, 0.2)
    # without a recipe, every flag is what it was
    plain = ["train-student", "--cache", str(stub_cache), "--out", str(tmp_path / "r"), "--params", "6000"]
    result = runner.invoke(app, plain)
    assert result.exit_code == 0 and seen["config"] == TrainConfig(cache=stub_cache, out=tmp_path / "r", params=6000)


@pytest.mark.parametrize("args, message", [
    (["--recipe", "brats-1k"], "unknown recipe 'brats-1k'; known recipes: brats-100k, brats-30k"),
    (["--params", "6000", "--set", "kd_balance=channel"], "kd_balance must be one of voxel, region, dice"),
    (["--params", "6000", "--set", "nonsense=1"], "--set nonsense: unknown option"),
])  # fmt: skip
def test_bad_recipe_and_set_values_are_one_line_errors(stub_cache, tmp_path, args, message):
    import subprocess
    import sys

    command = [sys.executable, "-m", "distill", "train-student", "--cache", str(stub_cache),
               "--out", str(tmp_path / "run"), *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) <= 2, done.stderr
