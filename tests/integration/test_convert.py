"""`distill data convert`: nnU-Net raw datasets from BraTS 2017-21 and 2023+ cases."""

import json

import numpy as np
import pytest

from distill.data.convert import ConvertConfig, convert_to_nnunet
from distill.data.discovery import find_cases
from distill.data.nifti import read_nifti
from distill.errors import DataError, LabelConventionError


def _convert(source, out, **kw):
    return convert_to_nnunet(
        ConvertConfig(source=source, out_root=out, dataset_id=7, dataset_name="Test", progress=False, **kw)
    )


@pytest.mark.parametrize("naming", ["brats2017", "brats2023"])
def test_labels_become_nnunet_numbering(tmp_path, write_brats_dataset, naming, oblique_affine):
    write_brats_dataset(tmp_path / "src", n=2, naming=naming)
    result = _convert(tmp_path / "src", tmp_path / "raw")
    assert result.dataset_dir.name == "Dataset007_Test" and result.n_training == 2 and result.n_written == 2
    source_case = find_cases(tmp_path / "src")[0]
    original = read_nifti(source_case.label).data
    converted = read_nifti(result.dataset_dir / "labelsTr" / f"{source_case.case_id}.nii.gz")
    et_label = 4 if naming == "brats2017" else 3
    # nnU-Net numbering: 1 oedema, 2 necrotic core, 3 enhancing (hand mapping)
    np.testing.assert_array_equal(converted.data == 3, original == et_label)
    np.testing.assert_array_equal(converted.data == 2, original == 1)
    np.testing.assert_array_equal(converted.data == 1, original == 2)
    np.testing.assert_allclose(converted.affine, oblique_affine, atol=1e-5)
    t1ce = read_nifti(result.dataset_dir / "imagesTr" / f"{source_case.case_id}_0001.nii.gz").data
    np.testing.assert_array_equal(t1ce, read_nifti(source_case.images["t1ce"]).data)


def test_dataset_json_is_region_based(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "src", n=1)
    result = _convert(tmp_path / "src", tmp_path / "raw")
    dataset = json.loads((result.dataset_dir / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert dataset["labels"] == {
        "background": 0,
        "whole tumor": [1, 2, 3],
        "tumor core": [2, 3],
        "enhancing tumor": [3],
    }
    assert dataset["regions_class_order"] == [1, 2, 3]
    assert dataset["numTraining"] == 1 and dataset["file_ending"] == ".nii.gz"


def test_resampling_to_2mm(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "src", n=1, shape=(20, 18, 14))  # spacing 1.2 x 0.9 x 2.5
    result = _convert(tmp_path / "src", tmp_path / "raw", target_spacing=(2.0, 2.0, 2.0))
    volume = read_nifti(next((result.dataset_dir / "labelsTr").iterdir()))
    assert volume.data.shape == (12, 8, 18)  # round(20*1.2/2), round(18*0.9/2), round(14*2.5/2)
    np.testing.assert_allclose(volume.spacing, (2.0, 2.025, 1.944), atol=1e-3)
    assert set(np.unique(volume.data)) <= {0, 1, 2, 3}


def test_rerun_skips_complete_cases_and_redoes_missing(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "src", n=2)
    first = _convert(tmp_path / "src", tmp_path / "raw")
    (first.dataset_dir / "imagesTr" / "Case_001_0002.nii.gz").unlink()  # as if killed mid-case
    second = _convert(tmp_path / "src", tmp_path / "raw")
    assert (second.n_written, second.n_skipped) == (1, 1)
    assert (first.dataset_dir / "imagesTr" / "Case_001_0002.nii.gz").is_file()


def test_cases_without_labels_go_to_imagesTs(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "src", n=2)
    (tmp_path / "src" / "Case_001" / "Case_001_seg.nii.gz").unlink()
    result = _convert(tmp_path / "src", tmp_path / "raw")
    assert (result.n_training, result.n_test) == (1, 1)
    assert (result.dataset_dir / "imagesTs" / "Case_001_0000.nii.gz").is_file()


def test_label_3_in_2017_naming_is_refused(tmp_path, write_brats_dataset, oblique_affine):
    from distill.data.nifti import write_nifti

    write_brats_dataset(tmp_path / "src", n=1)
    labels = np.zeros((20, 18, 14), np.uint8)
    labels[5, 5, 5] = 3
    write_nifti(tmp_path / "src" / "Case_000" / "Case_000_seg.nii.gz", labels, oblique_affine)
    with pytest.raises(LabelConventionError, match=r"Case_000_seg\.nii\.gz: label 3"):
        _convert(tmp_path / "src", tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset007_Test" / "dataset.json").exists()


def test_bad_dataset_name(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "src", n=1)
    with pytest.raises(DataError, match="dataset name"):
        convert_to_nnunet(ConvertConfig(source=tmp_path / "src", out_root=tmp_path, dataset_name="a b", progress=False))


@pytest.mark.nnunet
def test_nnunet_accepts_the_converted_dataset(tmp_path, write_brats_dataset):
    """nnU-Net's own integrity check passes on what we wrote."""
    verify = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity")
    write_brats_dataset(tmp_path / "src", n=2, naming="brats2023")
    result = _convert(tmp_path / "src", tmp_path / "raw")
    verify.verify_dataset_integrity(str(result.dataset_dir), num_processes=1)


@pytest.mark.realdata
def test_real_case_converts_at_2mm(tmp_path, brats18_dir):
    case_dir = brats18_dir / "Brats18_CBICA_AQN_1"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / case_dir.name).symlink_to(case_dir)
    result = _convert(tmp_path / "src", tmp_path / "raw", target_spacing=(2.0, 2.0, 2.0))
    labels = read_nifti(result.dataset_dir / "labelsTr" / "Brats18_CBICA_AQN_1.nii.gz")
    assert labels.data.shape == (120, 120, 78)
    original = read_nifti(case_dir / "Brats18_CBICA_AQN_1_seg.nii.gz").data
    # ET volume in mm^3 is preserved within 15% after resampling to 2 mm (8 mm^3 per voxel)
    assert abs((labels.data == 3).sum() * 8 - (original == 4).sum()) / (original == 4).sum() < 0.15
