"""Bounded NIfTI and .npy decoding: identical arrays to distill's reader, every malformed input refused early."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import time

import nibabel as nib
import numpy as np
import pytest
from service_helpers import SECRET, case_images, gzip_bomb, nifti_bytes_of, oblique_affine

from distill.data.nifti import read_nifti
from serve.errors import ServeError
from serve.nifti_io import DecodeLimits, decode_nifti, encode_nifti
from serve.npy_io import decode_npy, encode_npy

LIMITS = DecodeLimits(max_part_bytes=64 << 20, max_voxels=2**22)


def refused(raw: bytes, status: int, code: str, limits: DecodeLimits = LIMITS) -> str:
    with pytest.raises(ServeError) as info:
        decode_nifti(raw, "t1", limits)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value.message


def header_patch(raw_nii: bytes, offset: int, fmt: str, *values) -> bytes:
    """Overwrite header bytes of an uncompressed NIfTI-1 (little-endian)."""
    data = bytearray(raw_nii)
    struct.pack_into("<" + fmt, data, offset, *values)
    return bytes(data)


# ----------------------------------------------------------------------------- same arrays as read_nifti


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_decoding_gives_the_array_and_affine_that_read_nifti_gives(tmp_path, dtype, gz):
    data = case_images(3)[0]
    raw = nifti_bytes_of(data, gz=gz, dtype=dtype)
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(raw)
    expected = read_nifti(path, dtype=np.float32)
    volume = decode_nifti(raw, "t1", LIMITS)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, expected.data)
    np.testing.assert_array_equal(volume.affine, expected.affine)


def test_scaled_integers_nifti2_and_multi_member_gzip_decode_like_nibabel(tmp_path):
    data = case_images(1)[2]
    image = nib.Nifti1Image(data.astype(np.int16), oblique_affine())
    image.header.set_slope_inter(0.5, -3.0)
    raw = image.to_bytes()
    path = tmp_path / "scaled.nii"
    path.write_bytes(raw)
    np.testing.assert_array_equal(decode_nifti(raw, "t2", LIMITS).data, read_nifti(path, dtype=np.float32).data)
    two = nifti_bytes_of(data, gz=False, version=2)
    np.testing.assert_array_equal(decode_nifti(two, "t2", LIMITS).data, data)
    members = gzip.compress(two[:1000], mtime=0) + gzip.compress(two[1000:], mtime=0)  # like bgzip / pigz -i
    np.testing.assert_array_equal(decode_nifti(members, "t2", LIMITS).data, data)


def test_a_4d_image_is_read_channels_first_only_where_channels_are_allowed():
    images = case_images(0)
    raw = nifti_bytes_of(np.moveaxis(images, 0, -1))
    volume = decode_nifti(raw, "image", DecodeLimits(64 << 20, 2**22, channels=4))
    np.testing.assert_array_equal(volume.data, images)
    assert "4D" in refused(raw, 422, "bad_dimensions")
    single = nifti_bytes_of(images[0][..., None])  # (X, Y, Z, 1) is a 3D volume
    assert decode_nifti(single, "t1", LIMITS).data.shape == images.shape[1:]


def test_output_header_is_fresh_geometry_only():
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[2, 3, 4] = 4
    image = nib.Nifti1Image.from_bytes(gzip.decompress(encode_nifti(labels, oblique_affine())))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), labels)
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-5)
    assert image.header.get_data_dtype() == np.uint8
    assert not bytes(image.header["descrip"]).strip(b"\x00") and not bytes(image.header["aux_file"]).strip(b"\x00")
    assert SECRET not in gzip.decompress(encode_nifti(labels, oblique_affine()))


# ----------------------------------------------------------------------------- refusals


def test_not_nifti_and_pairs_and_empty_are_refused():
    refused(b"", 400, "not_nifti")
    refused(b"hello world, certainly not a volume" * 20, 400, "not_nifti")
    refused(gzip.compress(b"\x00" * 400), 400, "not_nifti")
    raw = nifti_bytes_of(case_images()[0], gz=False)
    assert ".hdr/.img" in refused(raw[:344] + b"ni1\x00" + raw[348:], 400, "not_nifti")
    refused(raw[:344] + b"zz1\x00" + raw[348:], 400, "not_nifti")


@pytest.mark.parametrize("dims, code, status", [
    ((2, 20, 18, 1, 1, 1, 1, 1), "bad_dimensions", 422),           # 2D
    ((5, 20, 18, 14, 1, 2, 1, 1), "bad_dimensions", 422),          # 5D
    ((4, 20, 18, 14, 3, 1, 1, 1), "bad_dimensions", 422),          # 4D with 3 volumes for a single modality
    ((3, 20, 0, 14, 1, 1, 1, 1), "bad_dimensions", 422),           # a zero dimension
    ((3, -5, 18, 14, 1, 1, 1, 1), "bad_dimensions", 422),          # a negative one
    ((3, 32767, 32767, 32767, 1, 1, 1, 1), "volume_too_large", 413),  # absurd
    ((9, 20, 18, 14, 1, 1, 1, 1), "bad_header", 400),              # not a dimension count
])  # fmt: skip
def test_dimensions_are_checked_before_any_voxel_is_read(dims, code, status):
    raw = nifti_bytes_of(case_images()[0], gz=False)
    refused(header_patch(raw, 40, "8h", *dims), status, code)


def test_data_type_spacing_offset_scaling_and_affine_are_checked():
    raw = nifti_bytes_of(case_images()[0], gz=False)
    refused(header_patch(raw, 70, "hh", 32, 64), 422, "unsupported_dtype")  # complex64
    refused(header_patch(raw, 70, "hh", 128, 24), 422, "unsupported_dtype")  # RGB24
    refused(header_patch(raw, 70, "hh", 999, 16), 422, "unsupported_dtype")  # no such code
    refused(header_patch(raw, 80, "f", float("nan")), 422, "bad_header")  # pixdim[1]
    refused(header_patch(raw, 84, "f", 0.0), 422, "bad_header")
    refused(header_patch(raw, 88, "f", -1.0), 422, "bad_header")
    refused(header_patch(raw, 108, "f", 100.0), 400, "bad_header")  # vox_offset inside the header
    refused(header_patch(raw, 108, "f", float("inf")), 400, "bad_header")
    refused(header_patch(raw, 108, "f", 352.5), 400, "bad_header")
    refused(header_patch(raw, 112, "f", float("inf")), 422, "bad_header")  # scl_slope
    sform = header_patch(raw, 280, "4f", float("nan"), 0, 0, 0)  # srow_x
    refused(header_patch(sform, 254, "h", 1), 422, "bad_header")
    zero = header_patch(raw, 280, "12f", *([0.0] * 12))
    refused(header_patch(zero, 254, "h", 1), 422, "bad_header")  # singular affine
    huge = header_patch(raw, 280, "12f", 500.0, 0, 0, 0, 0, 500.0, 0, 0, 0, 0, 500.0, 0)
    refused(header_patch(huge, 254, "h", 1), 422, "bad_header")  # 500 mm voxels


def test_nan_and_inf_voxels_are_refused_with_a_count():
    data = case_images()[0].astype(np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    assert "2 voxels" in refused(nifti_bytes_of(data, dtype=np.float32), 422, "non_finite")
    big = nifti_bytes_of(np.full((4, 4, 4), 1e300), dtype=np.float64)  # overflows float32 as read_nifti casts
    refused(big, 422, "non_finite")
    refused(nifti_bytes_of(np.full((4, 4, 4), 1e20), dtype=np.float32), 422, "out_of_range")  # finite, not MRI


def test_truncated_and_lying_parts_are_refused():
    plain = nifti_bytes_of(case_images()[0], gz=False)
    compressed = gzip.compress(plain, mtime=0)
    refused(plain[:200], 400, "truncated")  # header cut off
    assert "ends early" in refused(plain[:-1], 400, "truncated")  # header claims more data than sent
    assert "gzip stream ends early" in refused(compressed[: len(compressed) // 2], 400, "truncated")
    refused(compressed[:-4], 400, "truncated")  # the end-of-stream trailer missing
    refused(plain + b"\x00" * 16, 400, "trailing_data")  # more data than the header declares
    refused(gzip.compress(plain + b"junk", mtime=0), 400, "trailing_data")
    refused(compressed + b"junk!", 400, "bad_gzip")
    corrupt = bytearray(compressed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(ServeError) as info:  # a flipped bit may still inflate, to other data: any 400 refusal
        decode_nifti(bytes(corrupt), "t1", LIMITS)
    assert info.value.status == 400 and info.value.code in ("bad_gzip", "trailing_data", "truncated")
    refused(compressed[:-8] + b"\x00" * 8, 400, "bad_gzip")  # CRC and size wrong


def test_the_per_part_limit_just_under_at_and_just_over():
    plain = nifti_bytes_of(case_images()[0].astype(np.uint8), gz=False, dtype=np.uint8)
    size = len(plain)  # vox_offset + voxels: what the header declares
    for raw in (plain, gzip.compress(plain, mtime=0)):
        decode_nifti(raw, "t1", DecodeLimits(size + 1, 2**22))
        decode_nifti(raw, "t1", DecodeLimits(size, 2**22))
        assert "per-part limit" in refused(raw, 413, "part_too_large", DecodeLimits(size - 1, 2**22))
    refused(plain, 413, "volume_too_large", DecodeLimits(1 << 30, int(np.prod(case_images().shape[1:])) - 1))


def test_a_gzip_bomb_is_refused_without_inflating_it():
    """1 GiB of zeros (1 MB of gzip) behind a header that declares a small volume."""
    header = nifti_bytes_of(np.zeros((8, 8, 8)), gz=False, dtype=np.uint8)
    bomb = gzip_bomb(header, 1024)
    assert len(bomb) < 2 << 20
    start = time.perf_counter()
    refused(bomb, 400, "trailing_data", DecodeLimits(256 << 20, 2**25))
    assert time.perf_counter() - start < 2.0  # it stopped after one byte past the declared size
    lying = header_patch(header, 40, "8h", 3, 1024, 1024, 1024, 1, 1, 1, 1)  # a header that admits 1 GiB
    refused(lying, 413, "part_too_large", DecodeLimits(256 << 20, 2**31))


# ----------------------------------------------------------------------------- .npy


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_refused(raw: bytes, status: int, code: str) -> None:
    with pytest.raises(ServeError) as info:
        decode_npy(raw, channels=4, divisor=16, max_voxels=2**20)
    assert (info.value.status, info.value.code) == (status, code), info.value.message


def test_npy_round_trip_and_refusals():
    array = np.random.default_rng(0).normal(size=(4, 16, 32, 16)).astype(np.float16)
    np.testing.assert_array_equal(decode_npy(npy(array), 4, 16, 2**20), array.astype(np.float32))
    np.testing.assert_array_equal(decode_npy(npy(np.asfortranarray(array)), 4, 16, 2**20), array.astype(np.float32))
    np.testing.assert_array_equal(decode_npy(npy(array.astype(">f4")), 4, 16, 2**20), array.astype(np.float32))
    npy_refused(pickle.dumps(array), 400, "invalid_npy")  # a pickle, not an .npy
    npy_refused(npy(np.array([array], dtype=object)), 422, "pickled_array")
    npy_refused(b"not an npy at all", 400, "invalid_npy")
    npy_refused(npy(array.astype(np.float64)), 422, "unsupported_dtype")
    npy_refused(npy(array.astype(np.int16)), 422, "unsupported_dtype")
    npy_refused(npy(array[:3]), 422, "wrong_shape")
    npy_refused(npy(array[0]), 422, "wrong_shape")
    npy_refused(npy(array[:, :15]), 422, "wrong_shape")  # not a multiple of the divisor
    npy_refused(npy(np.zeros((4, 128, 128, 128), np.float16)), 413, "volume_too_large")
    npy_refused(npy(array)[:-2], 400, "truncated")
    npy_refused(npy(array) + b"\x00\x00", 400, "trailing_data")
    bad = array.astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    npy_refused(npy(bad), 422, "non_finite")
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.load(io.BytesIO(encode_npy(labels)), allow_pickle=False), labels)
