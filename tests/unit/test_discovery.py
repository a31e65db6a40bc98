"""Finding cases in BraTS 2017-21, BraTS 2023+ and nnU-Net raw layouts."""

import json

import numpy as np
import pytest

from distill.data.discovery import MODALITIES, find_cases, find_label_maps
from distill.data.nifti import write_nifti
from distill.errors import DataError


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_brats2017_naming(tmp_path, write_brats_dataset, ext):
    write_brats_dataset(tmp_path, n=2, naming="brats2017", ext=ext)
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["Case_000", "Case_001"]
    assert cases[0].layout == "brats2017"
    assert [p.name for p in cases[0].image_paths] == [f"Case_000_{m}{ext}" for m in ("t1", "t1ce", "t2", "flair")]
    assert cases[0].label.name == f"Case_000_seg{ext}"


def test_brats2023_naming_maps_to_canonical_order(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path, n=1, naming="brats2023")
    (case,) = find_cases(tmp_path)
    assert case.case_id == "BraTS-GLI-00000-000"
    assert case.layout == "brats2023"
    assert [p.name.split("-")[-1] for p in case.image_paths] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]


def test_single_case_folder_and_flat_folder(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path, n=1)
    assert [c.case_id for c in find_cases(tmp_path / "Case_000")] == ["Case_000"]


def test_missing_modality_names_case_and_modality(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path, n=1)
    (tmp_path / "Case_000" / "Case_000_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'Case_000'.*missing modality t1ce"):
        find_cases(tmp_path)


def test_require_labels(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path, n=1)
    (tmp_path / "Case_000" / "Case_000_seg.nii.gz").unlink()
    assert find_cases(tmp_path)[0].label is None
    with pytest.raises(DataError, match="no label map"):
        find_cases(tmp_path, require_labels=True)


def test_mixed_namings_refused(tmp_path, write_brats_dataset):
    write_brats_dataset(tmp_path / "a", n=1, naming="brats2017")
    write_brats_dataset(tmp_path / "a", n=1, naming="brats2023")
    with pytest.raises(DataError, match="mixed BraTS namings"):
        find_cases(tmp_path / "a")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no BraTS cases found"):
        find_cases(tmp_path)


def _nnunet_dataset(root, oblique_affine, channel_names):
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": channel_names, "file_ending": ".nii.gz"}))
    for c in range(4):
        write_nifti(root / "imagesTr" / f"BRATS_001_{c:04d}.nii.gz", np.full((3, 3, 3), c, np.int16), oblique_affine)
    write_nifti(root / "labelsTr" / "BRATS_001.nii.gz", np.zeros((3, 3, 3), np.uint8), oblique_affine)


def test_nnunet_raw_uses_dataset_json_channel_order(tmp_path, oblique_affine):
    # A dataset whose channels are stored FLAIR, T1, T1ce, T2 must still come back in canonical order.
    _nnunet_dataset(tmp_path, oblique_affine, {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"})
    (case,) = find_cases(tmp_path)
    assert case.layout == "nnunet"
    assert [p.name for p in case.image_paths] == [f"BRATS_001_{c:04d}.nii.gz" for c in (1, 2, 3, 0)]
    assert dict(zip(MODALITIES, [p.name[-11:-7] for p in case.image_paths]))["flair"] == "0000"
    maps = find_label_maps(tmp_path)
    assert maps.layout == "nnunet" and list(maps.files) == ["BRATS_001"]


def test_nnunet_raw_with_unknown_channel_names(tmp_path, oblique_affine):
    _nnunet_dataset(tmp_path, oblique_affine, {"0": "CT", "1": "T1", "2": "T1ce", "3": "T2"})
    with pytest.raises(DataError, match="channel 0 is named 'ct'"):
        find_cases(tmp_path)


def test_label_maps_from_brats_and_flat_folders(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path / "gt", n=2)
    maps = find_label_maps(tmp_path / "gt")
    assert maps.layout == "brats2017" and sorted(maps.files) == ["Case_000", "Case_001"]
    for name in ("Case_000", "Case_001"):
        write_nifti(tmp_path / "pred" / f"{name}.nii.gz", np.zeros((3, 3, 3), np.uint8), oblique_affine)
    flat = find_label_maps(tmp_path / "pred")
    assert flat.layout is None and sorted(flat.files) == ["Case_000", "Case_001"]


def test_flat_folder_of_seg_files_uses_the_case_id(tmp_path, oblique_affine):
    for name in ("A_seg.nii.gz", "B-seg.nii.gz"):
        write_nifti(tmp_path / name, np.zeros((3, 3, 3), np.uint8), oblique_affine)
    assert sorted(find_label_maps(tmp_path).files) == ["A", "B"]
