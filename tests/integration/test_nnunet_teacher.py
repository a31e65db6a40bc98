"""The nnU-Net teacher adapter against nnU-Net's own prediction, on a real nnU-Net model folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.case import Case, load_case
from distill.data.discovery import find_cases
from distill.errors import DistillError
from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig, TeacherError

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]


def _first_case(teacher_build) -> Case:
    files = find_cases(teacher_build.raw_dataset_dir)[0]
    return load_case(files)


def test_build_is_a_real_nnunet_folder(nnunet_teacher):
    model = nnunet_teacher.model_dir
    assert (model / "plans.json").is_file() and (model / "dataset.json").is_file()
    for fold in range(5):
        checkpoint = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert checkpoint["trainer_name"] == "nnUNetTrainer"
        assert checkpoint["init_args"]["configuration"] == "3d_fullres"
    plans = json.loads((model / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4
    assert (nnunet_teacher.preprocessed_dir / "splits_final.json").is_file()


def test_probabilities_equal_nnunetv2_predict(nnunet_teacher, tmp_path):
    """Same folder, same case: our soft maps are nnU-Net's --save_probabilities output."""
    files = find_cases(nnunet_teacher.raw_dataset_dir)[0]
    (tmp_path / "in").mkdir()
    for path in files.image_paths:
        shutil.copy(path, tmp_path / "in" / path.name)
    command = [str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"), "-i", str(tmp_path / "in"),
               "-o", str(tmp_path / "out"), "-m", str(nnunet_teacher.model_dir), "-f", "0", "1", "2", "3", "4",
               "-device", "cpu", "--save_probabilities", "-npp", "1", "-nps", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = np.load(tmp_path / "out" / f"{files.case_id}.npz")["probabilities"].transpose(0, 3, 2, 1)

    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir))
    prediction = teacher.predict(load_case(files))
    assert prediction.n_passes == 40  # 5 folds x 8 flips
    assert prediction.probabilities.shape == reference.shape
    np.testing.assert_allclose(prediction.probabilities, reference, atol=1e-5)

    import nibabel as nib

    labels = np.asarray(nib.load(tmp_path / "out" / f"{files.case_id}.nii.gz").dataobj)
    regions = prediction.probabilities > 0.5  # WT, TC, ET, folded back as nnU-Net does (regions_class_order 1, 2, 3)
    ours = np.zeros(labels.shape, np.uint8)
    for value, region in zip((1, 2, 3), regions):
        ours[region] = value
    np.testing.assert_array_equal(ours, labels)
    assert prediction.uncertainty.min() >= 0 and prediction.uncertainty.max() > 0


def test_timed_prediction_is_the_same_ensemble_without_the_spread_record(nnunet_teacher):
    """The latency path runs nnU-Net's unmodified predictor: same probabilities as :meth:`predict`."""
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0", "2")))
    case = _first_case(nnunet_teacher)
    probabilities, timings = teacher.predict_timed(case)
    np.testing.assert_allclose(probabilities, teacher.predict(case).probabilities, atol=1e-6)
    assert set(timings) == {"preprocess", "model", "postprocess"} and min(timings.values()) > 0
    with pytest.raises(TeacherError, match="fold_7"):
        teacher.predict_timed(case, members=["fold_7"])


def test_info_describes_the_teacher(nnunet_teacher):
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0", "1")))
    info = teacher.info
    assert info.output_kind == "sigmoid" and info.channels == ("WT", "TC", "ET")
    assert info.members == ("fold_0", "fold_1") and info.tta == "mirror8"
    assert info.parameters_per_member == nnunet_teacher.parameters_per_member
    assert set(info.identity["checkpoints"]) == {"fold_0", "fold_1"}
    again = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0", "1")))
    assert again.info.identity_hash == info.identity_hash
    no_tta = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0", "1"), tta="none"))
    assert no_tta.info.identity_hash != info.identity_hash
    assert no_tta.predict(_first_case(nnunet_teacher)).n_passes == 2


def test_out_of_fold_members_use_single_folds(nnunet_teacher):
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, tta="none"))
    case = _first_case(nnunet_teacher)
    one = teacher.predict(case, members=["fold_3"])
    assert one.n_passes == 1
    assert np.all(one.uncertainty == 0)  # a single pass has no spread


def _copy_model(nnunet_teacher, tmp_path) -> Path:
    target = tmp_path / nnunet_teacher.model_dir.name
    shutil.copytree(nnunet_teacher.model_dir, target)
    return target


def test_missing_checkpoint_is_named(nnunet_teacher, tmp_path):
    model = _copy_model(nnunet_teacher, tmp_path)
    (model / "fold_2" / "checkpoint_final.pth").unlink()
    with pytest.raises(TeacherError, match=r"fold_2/checkpoint_final\.pth: checkpoint missing"):
        NnUNetTeacher(NnUNetTeacherConfig(model_dir=model, folds=("0", "1", "2")))
    assert NnUNetTeacher(NnUNetTeacherConfig(model_dir=model, tta="none")).folds == (
        "fold_0", "fold_1", "fold_3", "fold_4"
    )  # fmt: skip


def test_corrupt_checkpoint_is_named(nnunet_teacher, tmp_path):
    model = _copy_model(nnunet_teacher, tmp_path)
    (model / "fold_1" / "checkpoint_final.pth").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TeacherError, match=r"fold_1/checkpoint_final\.pth: unreadable nnU-Net checkpoint"):
        NnUNetTeacher(NnUNetTeacherConfig(model_dir=model))


def test_plans_that_do_not_match_the_checkpoint(nnunet_teacher, tmp_path):
    model = _copy_model(nnunet_teacher, tmp_path)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] = 6
    (model / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(TeacherError, match="does not fit"):
        NnUNetTeacher(NnUNetTeacherConfig(model_dir=model, folds=("0",)))


def test_missing_plans_json(nnunet_teacher, tmp_path):
    model = _copy_model(nnunet_teacher, tmp_path)
    (model / "plans.json").unlink()
    with pytest.raises(TeacherError, match=r"plans\.json: missing"):
        NnUNetTeacher(NnUNetTeacherConfig(model_dir=model))


def test_wrong_channel_count(nnunet_teacher):
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0",), tta="none"))
    case = _first_case(nnunet_teacher)
    bad = Case(case_id="three", images=case.images[:3], affine=case.affine, labels=None)
    with pytest.raises(DistillError, match="case three: expected 4 channels, got 3"):
        teacher.predict(bad)


def test_an_untrained_build_still_mirrors_eight_ways(nnunet_teacher, tmp_path):
    """``iterations=0`` (initialised networks, used for latency benchmarks) must record nnU-Net's
    inference mirroring axes like a trained checkpoint, or "mirror8" runs only one pass per fold."""
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet

    work = _copy_without_results(nnunet_teacher, tmp_path / "work")  # nnU-Net's planning is not under test
    build = build_compact_nnunet(
        CompactTeacherConfig(work_dir=work, iterations=0, folds=(0,)), log_path=tmp_path / "build.log"
    )
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=build.model_dir, folds=("0",)))
    assert teacher.mirror_axes == (0, 1, 2) and teacher.info.tta == "mirror8"
    assert teacher.predict(_first_case(build)).n_passes == 8


def _copy_without_results(build, destination: Path) -> Path:
    """The fixture's raw and preprocessed folders (planning and preprocessing are then skipped)."""
    work = build.model_dir.parents[2]
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(work / name, destination / name, symlinks=True)
    return destination


def test_a_killed_fold_continues_and_its_learning_rate_anneals(nnunet_teacher, tmp_path):
    """20 iterations become 20 epochs under nnU-Net's poly schedule; a build killed after its first
    epochs continues from nnU-Net's checkpoint_latest.pth rather than starting again."""
    import os
    import signal
    import time

    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet, model_dir_for

    work = _copy_without_results(nnunet_teacher, tmp_path / "work")
    config = CompactTeacherConfig(work_dir=work, iterations=20, folds=(0,))
    fold_dir = model_dir_for(config) / "fold_0"
    script = ("from pathlib import Path; "
              "from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet; "
              f"build_compact_nnunet(CompactTeacherConfig(work_dir=Path({str(work)!r}), iterations=20, "
              "folds=(0,)))")  # fmt: skip
    first = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        logs = list(fold_dir.glob("training_log_*.txt"))
        # Kill once epoch 3 has started. Epochs here are one iteration long, so the kill often lands
        # inside a checkpoint write; the build's atomic writes must leave a complete file regardless.
        if logs and "Epoch 3" in logs[0].read_text():
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the first build was expected to be killed mid-training"
    assert (fold_dir / "checkpoint_latest.pth").is_file() and not (fold_dir / "checkpoint_final.pth").exists()
    resumed_from = torch.load(
        fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False
    )["current_epoch"]
    assert resumed_from >= 3

    time.sleep(1.1)  # nnU-Net names its training logs by the second
    build_compact_nnunet(config)
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    lrs = final["logging"]["lrs"]
    assert final["current_epoch"] == 20 and len(lrs) == 20
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < 0.1 * lrs[0]
    assert all(later < earlier for earlier, later in zip(lrs, lrs[1:]))
    second_log = sorted(fold_dir.glob("training_log_*.txt"))[-1].read_text()
    assert f"Epoch {resumed_from}" in second_log and "Epoch 0\n" not in second_log


def test_a_truncated_checkpoint_is_refused_in_one_line(nnunet_teacher, tmp_path):
    """A checkpoint_latest.pth cut short (written by a build before writes were atomic) is named, not a traceback."""
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet, model_dir_for

    work = _copy_without_results(nnunet_teacher, tmp_path / "work")
    config = CompactTeacherConfig(work_dir=work, iterations=20, folds=(0,))
    fold_dir = model_dir_for(config) / "fold_0"
    fold_dir.mkdir(parents=True)
    latest = fold_dir / "checkpoint_latest.pth"
    buffer = tmp_path / "whole.pth"
    torch.save({"current_epoch": 3, "network_weights": {"w": torch.zeros(1000)}}, buffer)
    latest.write_bytes(buffer.read_bytes()[:200])
    with pytest.raises(DistillError) as refused:
        build_compact_nnunet(config)
    message = str(refused.value)
    assert "\n" not in message and str(latest) in message and "delete it" in message
    assert latest.read_bytes() == buffer.read_bytes()[:200], "the refused checkpoint must be left as it was"
