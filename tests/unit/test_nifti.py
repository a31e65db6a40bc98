"""NIfTI reading checks and fresh-header atomic writing."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from distill.data.nifti import read_header, read_nifti, write_nifti
from distill.errors import DataError


def test_round_trip_keeps_data_affine_and_spacing(tmp_path, oblique_affine):
    data = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    path = write_nifti(tmp_path / "x.nii.gz", data, oblique_affine)
    volume = read_nifti(path)
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.affine, oblique_affine, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (1.2, 0.9, 2.5), atol=1e-5)
    with gzip.open(path) as fh:  # really gzip-compressed
        assert len(fh.read()) > 348


def test_written_header_carries_no_input_metadata(tmp_path, oblique_affine):
    src = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), oblique_affine)
    src.header["descrip"] = b"Jane Doe 1970-01-01"
    src.header["aux_file"] = b"mrn-12345"
    src.header["intent_name"] = b"secret"
    src.header["db_name"] = b"hospital"
    src.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"patient comment"))
    nib.save(src, tmp_path / "in.nii")
    volume = read_nifti(tmp_path / "in.nii")
    write_nifti(tmp_path / "out.nii", volume.data, volume.affine)
    raw = (tmp_path / "out.nii").read_bytes()
    for secret in (b"Jane", b"mrn-12345", b"secret", b"hospital", b"patient comment"):
        assert secret not in raw
    out = nib.load(tmp_path / "out.nii")
    assert len(out.header.extensions) == 0
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file not found"):
        read_nifti(tmp_path / "nope.nii.gz")


def test_not_a_nifti(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"this is not an image at all" * 20)
    with pytest.raises(DataError, match=r"fake\.nii\.gz: not a readable NIfTI"):
        read_nifti(path)


def test_wrong_extension(tmp_path):
    path = tmp_path / "image.mha"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=r"image\.mha: not a NIfTI file name"):
        read_nifti(path)


def test_truncated_gzip_names_the_file(tmp_path, oblique_affine):
    path = write_nifti(
        tmp_path / "t.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), oblique_affine
    )
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"t\.nii\.gz: truncated or corrupt"):
        read_nifti(path)


def test_truncated_uncompressed_names_the_file(tmp_path, oblique_affine):
    path = write_nifti(tmp_path / "t.nii", np.ones((20, 20, 20), np.float32), oblique_affine)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(DataError, match=r"t\.nii: .*truncated"):
        read_nifti(path)


def test_nan_and_inf_are_refused(tmp_path, oblique_affine):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", data, oblique_affine)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 2 voxels are NaN or Inf"):
        read_nifti(path)


def test_header_voxel_limit_checked_before_reading(tmp_path, oblique_affine):
    path = write_nifti(tmp_path / "big.nii", np.ones((10, 10, 10), np.uint8), oblique_affine)
    with pytest.raises(DataError, match="claims 1000 voxels"):
        read_header(path, max_voxels=999)


def test_4d_volume_is_refused(tmp_path, oblique_affine):
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 2), np.float32), oblique_affine), tmp_path / "four.nii")
    with pytest.raises(DataError, match=r"four\.nii: expected a 3D volume"):
        read_nifti(tmp_path / "four.nii")


def test_failed_write_leaves_nothing(tmp_path, oblique_affine):
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "bad.nii.gz", np.ones((2, 2)), oblique_affine)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.int32, np.bool_])
def test_label_maps_are_stored_as_unscaled_integers(tmp_path, oblique_affine, dtype):
    labels = np.zeros((6, 5, 4), dtype=dtype)
    labels[1:3, 1:3, 1:3] = 1
    if dtype is not np.bool_:
        labels[2, 2, 2] = 4
    path = write_nifti(tmp_path / "seg.nii.gz", labels, oblique_affine)
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    slope, inter = image.header.get_slope_inter()
    assert slope is None and inter is None
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels.astype(np.uint8))


def test_wide_integers_that_do_not_fit_uint8_keep_their_values(tmp_path, oblique_affine):
    data = np.array([-5, 0, 3000], dtype=np.int64).reshape(3, 1, 1)
    image = nib.load(write_nifti(tmp_path / "img.nii", data, oblique_affine))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)


def test_float_maps_stay_float32(tmp_path, oblique_affine):
    data = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    image = nib.load(write_nifti(tmp_path / "p.nii.gz", data, oblique_affine))
    assert image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)
