"""Preprocessing and its inverse on non-identity affines."""

import numpy as np
import pytest
from synthetic_data import synthetic_case

from distill.data.preprocess import (
    PreprocessConfig,
    PreprocessRecord,
    bounding_box,
    brain_mask,
    crop,
    linear_sources,
    masked_mean_std,
    padding_for,
    place,
    preprocess,
    resample,
    restore_labels,
    restore_probabilities,
    restore_probabilities_in_crop,
    restore_thresholded,
    uncrop,
    zscore_in_mask,
    zscore_then_resample_linear,
)
from distill.errors import DataError


def _world_centroid(mask, affine):
    centre = np.argwhere(mask).mean(axis=0)
    return (affine @ np.r_[centre, 1.0])[:3]


def test_bounding_box_by_hand():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 4, 3] = True
    assert bounding_box(mask) == ((1, 4), (2, 5), (3, 4))


def test_padding_by_hand():
    assert padding_for((100, 90, 70), 16) == ((6, 6), (3, 3), (5, 5))
    assert padding_for((32, 33, 1), 8) == ((0, 0), (3, 4), (3, 4))


def test_zscore_inside_mask_only():
    images = np.array([[[[1.0, 3.0, 50.0]]]], dtype=np.float32)  # (1, 1, 1, 3)
    mask = np.array([[[True, True, False]]])
    out = zscore_in_mask(images, mask)
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 1.0, 0.0])  # mean 2, std 1 over the first two voxels


def test_masked_mean_std_by_hand():
    images = np.array([[[[1.0, 3.0, 50.0]]], [[[2.0, 2.0, 0.0]]]], dtype=np.float32)  # (2, 1, 1, 3)
    mask = np.array([[[True, True, False]]])
    means, stds = masked_mean_std(images, mask)
    np.testing.assert_allclose(means, [2.0, 2.0])
    np.testing.assert_allclose(stds, [1.0, 1e-8])  # a constant channel gets the floor, not a division by zero


def test_masked_statistics_agree_with_float64_over_the_masked_voxels():
    rng = np.random.default_rng(4)
    images = rng.normal(300.0, 80.0, size=(2, 61, 70, 53)).astype(np.float32)
    mask = rng.random(images.shape[1:]) < 0.4
    means, stds = masked_mean_std(images, mask)
    for c in range(2):
        inside = images[c][mask].astype(np.float64)
        np.testing.assert_allclose([means[c], stds[c]], [inside.mean(), inside.std()], rtol=1e-6)


def test_linear_sources_by_hand():
    # 2 -> 4 samples: positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper clamped to the last voxel)
    lower, upper, weight = linear_sources(4, 2)
    np.testing.assert_array_equal(lower, [0, 0, 0, 1])
    np.testing.assert_array_equal(upper, [1, 1, 1, 1])
    np.testing.assert_allclose(weight, [0.0, 0.25, 0.75, 0.25])


def test_box_resampling_matches_a_float64_evaluation_more_closely_than_torch():
    from distill.data.preprocess import _resample_linear_box

    source, target = (73, 83, 68), (146, 165, 136)  # a 2 mm brain box back to 1 mm
    coarse = np.random.default_rng(5).random((3, *source), dtype=np.float32)
    sources = [linear_sources(n_out, n_in) for n_out, n_in in zip(target, source)]
    whole = tuple((0, n) for n in target)
    exact = _resample_linear_box(
        coarse.astype(np.float64), [(lo, hi, w.astype(np.float64)) for lo, hi, w in sources], whole
    )
    ours = np.abs(_resample_linear_box(coarse, sources, whole) - exact).max()
    torch_path = np.abs(resample(coarse, target, order=1) - exact).max()
    assert ours < 5e-7 and ours <= torch_path


def test_place_by_hand():
    placed = place(np.ones((1, 2, 1, 1), np.uint8), ((1, 3), (0, 1), (2, 3)), (4, 2, 3))
    assert placed.shape == (1, 4, 2, 3) and placed.sum() == 2
    assert placed[0, 1, 0, 2] == placed[0, 2, 0, 2] == 1


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (0.5, 0.7, 1.0)])  # coarser and finer than the input
def test_thresholding_only_the_hot_box_equals_thresholding_everything(oblique_affine, spacing):
    images, _ = synthetic_case(7, shape=(30, 26, 22))
    case = preprocess(images, oblique_affine, config=PreprocessConfig(target_spacing=spacing, divisor=8))
    rng = np.random.default_rng(3)
    probabilities = rng.random((3, *case.record.shape)).astype(np.float32) * 0.4  # all below 0.5 ...
    hot = tuple(slice(n // 3, n // 3 + 3) for n in case.record.shape)
    probabilities[(slice(None), *hot)] += 0.3  # ... except a small blob
    thresholds = np.array([0.5, 0.55, 0.6], np.float32)
    reference = restore_probabilities(probabilities, case.record) > thresholds.reshape(-1, 1, 1, 1)
    regions, box = restore_thresholded(probabilities, case.record, thresholds)
    full = place(regions, box, case.record.original_shape)
    inside = np.zeros(case.record.original_shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert reference.any() and inside.sum() < 0.5 * inside.size  # a real blob, and a box smaller than the grid
    assert not reference[:, ~inside].any()  # nothing above threshold outside the box
    # inside, the two resamplings may differ only where a map is within float rounding of its threshold
    near = np.abs(restore_probabilities(probabilities, case.record) - thresholds.reshape(-1, 1, 1, 1)) < 1e-5
    np.testing.assert_array_equal(full[~near], reference[~near])


def test_thresholding_nothing_above_gives_an_empty_box(oblique_affine):
    images, _ = synthetic_case(8, shape=(20, 18, 16))
    case = preprocess(images, oblique_affine, config=PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)))
    regions, box = restore_thresholded(np.full((3, *case.record.shape), 0.2, np.float32), case.record, np.full(3, 0.5))
    assert regions.shape == (3, 0, 0, 0)
    assert not place(regions, box, case.record.original_shape).any()


@pytest.mark.parametrize(("source", "target"), [((7, 5, 4), (3, 2, 2)), ((3, 2, 2), (7, 5, 4)), ((9, 1, 6), (4, 3, 6))])
def test_linear_resampling_matches_scipy_zoom(source, target):
    from scipy import ndimage

    volume = np.random.default_rng(1).normal(size=(2, *source)).astype(np.float32)
    factors = [n / o for n, o in zip(target, source)]
    expected = np.stack(
        [ndimage.zoom(c, factors, order=1, mode="nearest", grid_mode=True, prefilter=False) for c in volume]
    )
    np.testing.assert_allclose(resample(volume, target, order=1), expected, atol=1e-5)


@pytest.mark.parametrize("target", [(12, 11, 7), (24, 22, 14)])
def test_normalising_after_resampling_equals_normalising_before(oblique_affine, target):
    images, _ = synthetic_case(5, shape=(24, 22, 14))
    x, y, z = np.indices(images.shape[1:])
    images[:, (x - 2) ** 2 + (y - 2) ** 2 + (z - 2) ** 2 < 40] = 0  # a rounded brain edge, not a box
    mask = brain_mask(images)
    assert not crop(mask, bounding_box(mask)).all()
    box = bounding_box(mask)
    cropped, cropped_mask = crop(images, box), crop(mask, box)
    before = images.copy()
    weight = resample(cropped_mask.astype(np.float32), target, order=1)
    fused = zscore_then_resample_linear(cropped, cropped_mask, weight)
    reference = resample(zscore_in_mask(cropped, cropped_mask), target, order=1)
    np.testing.assert_allclose(fused, reference, atol=2e-5)
    np.testing.assert_array_equal(images, before)  # the caller's array is never written


def test_post_processing_inside_the_brain_box_equals_post_processing_the_whole_grid(oblique_affine):
    """The predictor thresholds and cleans up inside the crop, then places the result: component
    filters and the hierarchy must see the same regions as on the whole grid."""
    from distill.infer.postprocess import PostprocessConfig, postprocess_regions

    images, _ = synthetic_case(6, shape=(30, 26, 22))
    case = preprocess(images, oblique_affine, config=PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), divisor=8))
    probabilities = np.random.default_rng(2).random((3, *case.record.shape)).astype(np.float32)
    config = PostprocessConfig(enforce_hierarchy=True, min_size={"WT": 3, "ET": 2}, keep_largest=("TC",))
    in_crop = restore_probabilities_in_crop(probabilities, case.record)
    assert in_crop.shape == (3, *case.record.cropped_shape)
    whole = postprocess_regions(restore_probabilities(probabilities, case.record) > 0.5, config)
    placed = uncrop(postprocess_regions(in_crop > 0.5, config), case.record)
    assert whole.any() and not whole.all()
    np.testing.assert_array_equal(placed, whole)


@pytest.mark.parametrize("divisor", [1, 8, 16])
def test_round_trip_without_resampling_is_exact(oblique_affine, divisor):
    images, labels = synthetic_case(3, shape=(30, 26, 22))
    case = preprocess(images, oblique_affine, labels, PreprocessConfig(divisor=divisor))
    assert all(n % divisor == 0 for n in case.record.shape)
    assert case.images.shape == (4, *case.record.shape)
    np.testing.assert_array_equal(restore_labels(case.labels, case.record), labels)
    # the preprocessed grid's affine maps every voxel to the same world point as before
    np.testing.assert_allclose(
        _world_centroid(case.labels == 4, case.record.affine), _world_centroid(labels == 4, oblique_affine), atol=1e-9
    )


def test_round_trip_with_resampling_keeps_geometry(oblique_affine):
    images, labels = synthetic_case(4, shape=(40, 44, 12))  # spacing 1.2 x 0.9 x 2.5 mm
    case = preprocess(images, oblique_affine, labels, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), divisor=4))
    np.testing.assert_allclose(case.record.spacing, (2.0, 2.0, 2.0), rtol=0.15)
    restored = restore_labels(case.labels, case.record)
    assert restored.shape == labels.shape
    # Whole tumour survives a 2 mm round trip closely; world position of the tumour is preserved.
    wt, wt_back = labels > 0, restored > 0
    assert 2 * (wt & wt_back).sum() / (wt.sum() + wt_back.sum()) > 0.85
    np.testing.assert_allclose(
        _world_centroid(case.labels > 0, case.record.affine), _world_centroid(wt, oblique_affine), atol=1.0
    )


def test_probabilities_restore_to_original_grid(oblique_affine):
    images, labels = synthetic_case(5, shape=(24, 20, 16))
    case = preprocess(images, oblique_affine, labels, PreprocessConfig(divisor=8))
    probs = np.stack([(case.labels > 0), np.isin(case.labels, (1, 4)), case.labels == 4]).astype(np.float32)
    back = restore_probabilities(probs, case.record)
    assert back.shape == (3, 24, 20, 16)
    np.testing.assert_array_equal(back[2] > 0.5, labels == 4)
    assert back[:, 0, 0, 0].tolist() == [0.0, 0.0, 0.0]  # outside the brain crop


def test_outside_brain_stays_zero(oblique_affine):
    images, labels = synthetic_case(6, shape=(20, 18, 14))
    case = preprocess(images, oblique_affine, labels, PreprocessConfig(target_spacing=(2.0, 2.0, 2.0), divisor=4))
    assert np.all(case.images[:, ~case.brain_mask] == 0)


def test_record_json_round_trip(oblique_affine):
    images, labels = synthetic_case(7)
    record = preprocess(images, oblique_affine, labels, PreprocessConfig(divisor=16)).record
    again = PreprocessRecord.from_dict(__import__("json").loads(__import__("json").dumps(record.to_dict())))
    assert again == record
    np.testing.assert_allclose(again.affine, record.affine)


def test_empty_brain_mask_is_an_error(oblique_affine):
    with pytest.raises(DataError, match="case_x: empty brain mask"):
        preprocess(np.zeros((4, 5, 5, 5), np.float32), oblique_affine, source="case_x")


def test_nan_is_an_error(oblique_affine):
    images, _ = synthetic_case(0)
    images[0, 5, 5, 5] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        preprocess(images, oblique_affine)


def test_restore_refuses_wrong_grid(oblique_affine):
    images, labels = synthetic_case(1)
    record = preprocess(images, oblique_affine, labels).record
    with pytest.raises(ValueError, match="preprocessed grid"):
        restore_labels(np.zeros((3, 3, 3), np.uint8), record)


def test_maps_follow_the_images_onto_the_preprocessed_grid(oblique_affine):
    from distill.data.preprocess import to_preprocessed_grid

    images, labels = synthetic_case(8, shape=(24, 20, 16))
    case = preprocess(images, oblique_affine, labels, PreprocessConfig(divisor=8))
    maps = np.stack([labels == 4, labels > 0]).astype(np.float32)
    on_grid = to_preprocessed_grid(maps, case.record)
    assert on_grid.shape == (2, *case.record.shape)
    np.testing.assert_array_equal(on_grid[0] > 0.5, case.labels == 4)
    np.testing.assert_array_equal(restore_probabilities(on_grid, case.record), maps)
