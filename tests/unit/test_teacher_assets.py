"""The real-data benchmark's teacher assets: finished folds saved, restored on a fresh clone, checked."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata" / "teacher_assets.py"


@pytest.fixture
def assets_module():
    spec = importlib.util.spec_from_file_location("teacher_assets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_model_dir(root: Path, finished=(0,), unfinished=(1,)) -> Path:
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    for fold in finished:
        (root / f"fold_{fold}" / "validation").mkdir(parents=True)
        (root / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"final%d" % fold)
        (root / f"fold_{fold}" / "validation" / "summary.json").write_text('{"mean": {}}')
    for fold in unfinished:
        (root / f"fold_{fold}").mkdir(parents=True)
        (root / f"fold_{fold}" / "checkpoint_latest.pth").write_bytes(b"latest%d" % fold)
    return root


def test_saved_folds_and_progress_restore_into_an_empty_working_folder(assets_module, tmp_path):
    model = fake_model_dir(tmp_path / "work" / "model")
    assets = tmp_path / "assets"
    assets_module.save_fold(model, 0, assets)
    assert assets_module.save_progress(model, assets) == [1]
    assert assets_module.finished_folds(assets) == [0]
    fresh = tmp_path / "fresh"
    restored = assets_module.restore(fresh, assets)
    assert set(restored) >= {"fold_0/checkpoint_final.pth", "fold_1/checkpoint_latest.pth", "plans.json"}
    assert (fresh / "fold_1" / "checkpoint_latest.pth").read_bytes() == b"latest1"
    assert assets_module.restore(fresh, assets) == []  # nothing is overwritten


def test_finishing_a_fold_drops_its_saved_progress(assets_module, tmp_path):
    model = fake_model_dir(tmp_path / "model", finished=(), unfinished=(2,))
    assets = tmp_path / "assets"
    assets_module.save_progress(model, assets)
    (model / "fold_2" / "checkpoint_final.pth").write_bytes(b"done")
    (model / "fold_2" / "checkpoint_latest.pth").unlink()
    assets_module.save_fold(model, 2, assets)
    assert not (assets / "fold_2" / "checkpoint_latest.pth").exists()
    assert "fold_2/checkpoint_latest.pth" not in (assets / "SHA256SUMS.json").read_text()


def test_an_altered_asset_is_refused_by_name(assets_module, tmp_path):
    model = fake_model_dir(tmp_path / "model", unfinished=())
    assets = tmp_path / "assets"
    assets_module.save_fold(model, 0, assets)
    (assets / "fold_0" / "checkpoint_final.pth").write_bytes(b"tampered")
    with pytest.raises(SystemExit, match="checkpoint_final.pth: missing or altered"):
        assets_module.restore(tmp_path / "fresh", assets)


def test_a_fold_record_is_saved_under_the_sums_it_is_checked_by(assets_module, tmp_path):
    model = fake_model_dir(tmp_path / "model", unfinished=())
    assets = tmp_path / "assets"
    sums = assets_module.save_fold(model, 0, assets, record={"fold": 0, "iterations": 2000})
    assert "fold_0/record.json" in sums
    restored = assets_module.restore(tmp_path / "fresh", assets)
    assert "fold_0/record.json" in restored
    assert (tmp_path / "fresh" / "fold_0" / "record.json").read_text().startswith('{\n  "fold": 0')
