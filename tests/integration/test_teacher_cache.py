"""`distill teacher-cache` end to end on a real compact nnU-Net: full and out-of-fold modes,
shards, Ray, a killed worker, a different teacher, verification."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from distill.cache import TeacherCache, verify_cache
from distill.data.case import load_case
from distill.data.discovery import find_cases
from distill.data.preprocess import restore_probabilities
from distill.errors import DistillError
from distill.teacher.nnunet import NnUNetTeacher, NnUNetTeacherConfig
from distill.teacher.run import TeacherCacheConfig, oof_members, run_teacher_cache, shard_of

pytestmark = [pytest.mark.nnunet, pytest.mark.slow]


def _config(nnunet_teacher, out, **kw):
    base = dict(model_dir=nnunet_teacher.model_dir, images=nnunet_teacher.raw_dataset_dir, out=out, progress=False)
    return TeacherCacheConfig(**{**base, **kw})


def test_full_mode_cache_is_complete_verified_and_resumable(nnunet_teacher, tmp_path):
    config = _config(nnunet_teacher, tmp_path / "cache", tta="none")
    first = run_teacher_cache(config)
    assert first.complete and len(first.done) == 6 and not first.failed
    assert verify_cache(tmp_path / "cache").ok
    cache = TeacherCache.open(tmp_path / "cache")
    assert cache.spec.mode == "full" and len(cache.case_ids) == 6
    second = run_teacher_cache(config)
    assert second.done == [] and len(second.skipped) == 6 and second.complete


def test_cached_maps_threshold_to_the_teachers_labels(nnunet_teacher, tmp_path):
    """Cache -> original grid -> threshold equals the teacher's own thresholded maps wherever the
    teacher is further than the quantisation step (1/255) from 0.5."""
    run_teacher_cache(_config(nnunet_teacher, tmp_path / "cache", folds=("0", "1"), tta="none"))
    cache = TeacherCache.open(tmp_path / "cache")
    files = find_cases(nnunet_teacher.raw_dataset_dir)[0]
    cached = cache.read_case(files.case_id)
    restored = restore_probabilities(cached.probabilities, cached.record)
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=nnunet_teacher.model_dir, folds=("0", "1"), tta="none"))
    direct = teacher.predict(load_case(files)).probabilities
    assert np.abs(restored - direct).max() <= 1 / 255
    confident = np.abs(direct - 0.5) > 1 / 255
    np.testing.assert_array_equal((restored > 0.5)[confident], (direct > 0.5)[confident])
    assert cached.regions is not None and cached.regions.shape[0] == 3


def test_out_of_fold_mode_uses_the_held_out_fold(nnunet_teacher, tmp_path):
    splits = json.loads((nnunet_teacher.preprocessed_dir / "splits_final.json").read_text())
    result = run_teacher_cache(_config(nnunet_teacher, tmp_path / "oof", mode="oof", tta="none",
                                       splits=nnunet_teacher.preprocessed_dir / "splits_final.json"))  # fmt: skip
    assert result.complete
    cache = TeacherCache.open(tmp_path / "oof")
    assert cache.spec.mode == "oof"
    for case_id in cache.case_ids:
        expected = oof_members(case_id, tuple(f"fold_{i}" for i in range(5)), splits)
        assert len(expected) == 1 and case_id in splits[int(expected[0][-1])]["val"]
        assert cache.entry(case_id).source["members"] == list(expected)


def test_oof_without_splits_is_a_clear_error(nnunet_teacher, tmp_path):
    with pytest.raises(DistillError, match="splits_final.json"):
        run_teacher_cache(_config(nnunet_teacher, tmp_path / "oof", mode="oof", tta="none"))


def test_shards_fill_one_cache(nnunet_teacher, tmp_path):
    out = tmp_path / "cache"
    first = run_teacher_cache(_config(nnunet_teacher, out, tta="none", folds=("0",), shard=(0, 2)))
    expected_first = [c.case_id for c in find_cases(nnunet_teacher.raw_dataset_dir) if shard_of(c.case_id, 2) == 0]
    assert sorted(first.done) == sorted(expected_first) and not first.complete
    second = run_teacher_cache(_config(nnunet_teacher, out, tta="none", folds=("0",), shard=(1, 2)))
    assert second.complete and verify_cache(out).ok


def test_a_different_teacher_cannot_write_into_the_cache(nnunet_teacher, tmp_path):
    run_teacher_cache(_config(nnunet_teacher, tmp_path / "cache", tta="none", folds=("0",), shard=(0, 2)))
    with pytest.raises(DistillError, match="teacher"):
        run_teacher_cache(_config(nnunet_teacher, tmp_path / "cache", tta="none", folds=("1",), shard=(1, 2)))


def test_ray_engine_fills_the_cache(nnunet_teacher, tmp_path):
    pytest.importorskip("ray")
    result = run_teacher_cache(
        _config(nnunet_teacher, tmp_path / "cache", tta="none", folds=("0",), engine="ray", workers=2)
    )
    assert result.complete and len(result.done) == 6
    assert verify_cache(tmp_path / "cache").ok


def _entries(out):
    return list((out / "cases").glob("*.json")) if (out / "cases").is_dir() else []


def test_killed_worker_then_rerun_completes_without_corruption(nnunet_teacher, tmp_path):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "distill", "teacher-cache", "-m", str(nnunet_teacher.model_dir),
               "--images", str(nnunet_teacher.raw_dataset_dir), "--out", str(out), "--tta", "mirror8"]  # fmt: skip
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not _entries(out):
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)  # mid-run: at least one case committed, others not
    worker.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(DistillError, match="incomplete"):
        TeacherCache.open(out)
    result = run_teacher_cache(_config(nnunet_teacher, out, tta="mirror8"))
    assert result.complete and len(result.skipped) >= 1
    report = verify_cache(out)
    assert report.ok, report.summary()


def test_verify_command_reports_damage(nnunet_teacher, tmp_path):
    out = tmp_path / "cache"
    run_teacher_cache(_config(nnunet_teacher, out, tta="none", folds=("0",)))
    entry = sorted((out / "cases").glob("*.json"))[0]
    entry.unlink()
    done = subprocess.run([sys.executable, "-m", "distill", "teacher-cache", "--out", str(out), "--verify"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert entry.stem in done.stdout


def _monai_member(tmp_path):
    from monai.networks.nets import SegResNet

    from distill.teacher.torch_member import save_member

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 8}
    return save_member(tmp_path / "member", "SegResNet", kwargs, SegResNet(**kwargs).state_dict(),
                       channels=["TC", "WT", "ET"], tta="none",
                       preprocessing={"normalisation": "zscore_nonzero", "divisor": 8})  # fmt: skip


def test_cross_architecture_ensemble_cache_and_fitted_weights(nnunet_teacher, tmp_path):
    """nnU-Net folds + a MONAI SegResNet member: weights fitted per region, then cached."""
    member = _monai_member(tmp_path)
    weights = tmp_path / "weights.json"
    fitted = subprocess.run([sys.executable, "-m", "distill", "teacher-weights", "-m", str(nnunet_teacher.model_dir),
                             "--member", str(member), "--cases", str(nnunet_teacher.raw_dataset_dir),
                             "--out", str(weights), "--folds", "0", "--tta", "none", "--step", "0.25"],
                            capture_output=True, text=True)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert "uniform" in fitted.stdout and weights.is_file()
    result = run_teacher_cache(_config(nnunet_teacher, tmp_path / "cache", folds=("0",), tta="none",
                                       members=(member,), member_weights=weights))  # fmt: skip
    assert result.complete
    spec = TeacherCache.open(tmp_path / "cache").spec
    assert spec.teacher["name"].startswith("ensemble") and spec.channels == ("WT", "TC", "ET")
