"""Loading a case: geometry checks name both files."""

import numpy as np
import pytest

from distill.data.case import load_case
from distill.data.discovery import find_cases
from distill.data.nifti import write_nifti
from distill.errors import DataError


def test_load_case_stacks_modalities_in_order(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path, n=1, shape=(12, 10, 8))
    case = load_case(find_cases(tmp_path)[0])
    assert case.images.shape == (4, 12, 10, 8) and case.images.dtype == np.float32
    assert case.labels.dtype == np.uint8 and set(np.unique(case.labels)) == {0, 1, 2, 4}
    np.testing.assert_allclose(case.affine, oblique_affine, atol=1e-5)


def test_shape_mismatch_names_both_files(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path, n=1, shape=(12, 10, 8))
    write_nifti(tmp_path / "Case_000" / "Case_000_t2.nii.gz", np.ones((12, 10, 9), np.int16), oblique_affine)
    with pytest.raises(
        DataError, match=r"Case_000_t2\.nii\.gz: shape \(12, 10, 9\) differs from .*Case_000_t1\.nii\.gz"
    ):
        load_case(find_cases(tmp_path)[0])


def test_affine_mismatch_names_both_files(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path, n=1, shape=(12, 10, 8))
    shifted = oblique_affine.copy()
    shifted[0, 3] += 1.5
    write_nifti(tmp_path / "Case_000" / "Case_000_seg.nii.gz", np.zeros((12, 10, 8), np.uint8), shifted)
    with pytest.raises(
        DataError, match=r"Case_000_seg\.nii\.gz: affine differs from .*Case_000_t1\.nii\.gz by up to 1\.5"
    ):
        load_case(find_cases(tmp_path)[0])


def test_non_integer_labels_refused(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path, n=1, shape=(12, 10, 8))
    write_nifti(tmp_path / "Case_000" / "Case_000_seg.nii.gz", np.full((12, 10, 8), 0.5, np.float32), oblique_affine)
    with pytest.raises(DataError, match=r"Case_000_seg\.nii\.gz: label map holds non-integer values"):
        load_case(find_cases(tmp_path)[0])


def test_nan_in_modality_refused(tmp_path, write_brats_dataset, oblique_affine):
    write_brats_dataset(tmp_path, n=1, shape=(12, 10, 8))
    data = np.ones((12, 10, 8), np.float32)
    data[3, 3, 3] = np.nan
    write_nifti(tmp_path / "Case_000" / "Case_000_flair.nii.gz", data, oblique_affine)
    with pytest.raises(DataError, match=r"Case_000_flair\.nii\.gz: 1 voxels are NaN or Inf"):
        load_case(find_cases(tmp_path)[0])
