"""Post-processing on hand-made arrays: hierarchy, small components, largest component."""

from __future__ import annotations

import numpy as np
import pytest

from distill.infer.postprocess import (
    PostprocessConfig,
    enforce_hierarchy,
    keep_largest_component,
    min_size_in_voxels,
    postprocess_labels,
    postprocess_regions,
    remove_small_components,
)


def _line(values: list[int]) -> np.ndarray:
    """A (1, 1, n) boolean volume from a list of 0/1."""
    return np.asarray(values, dtype=bool).reshape(1, 1, -1)


def test_enforce_hierarchy_clips_child_to_parent():
    wt = _line([1, 1, 1, 0, 0])
    tc = _line([0, 1, 1, 1, 0])
    et = _line([0, 0, 1, 1, 1])
    regions = np.stack([wt, tc, et])
    before = regions.copy()
    out = enforce_hierarchy(regions)
    # TC loses index 3 (outside WT); ET loses 3 and 4 (outside the clipped TC).
    np.testing.assert_array_equal(out[0], wt)
    np.testing.assert_array_equal(out[1], _line([0, 1, 1, 0, 0]))
    np.testing.assert_array_equal(out[2], _line([0, 0, 1, 0, 0]))
    np.testing.assert_array_equal(regions, before)


def test_enforce_hierarchy_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="shape"):
        enforce_hierarchy(np.zeros((2, 3, 3, 3), dtype=bool))


@pytest.fixture
def three_blobs() -> np.ndarray:
    """A 2x2x2 block (8 voxels), a diagonal pair (2 voxels touching at a corner), a single voxel."""
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0:2, 0:2, 0:2] = True
    mask[4, 0, 4] = True
    mask[5, 1, 5] = True
    mask[0, 5, 5] = True
    return mask


def test_remove_small_components_26_connectivity(three_blobs):
    out = remove_small_components(three_blobs, min_voxels=2)
    # The diagonal pair is one component under 26-connectivity and stays; the single voxel goes.
    assert out.sum() == 10
    assert out[4, 0, 4] and out[5, 1, 5] and not out[0, 5, 5]


def test_remove_small_components_6_connectivity(three_blobs):
    out = remove_small_components(three_blobs, min_voxels=2, connectivity=6)
    # Under 6-connectivity the diagonal pair is two single voxels: only the block remains.
    assert out.sum() == 8
    assert out[0:2, 0:2, 0:2].all()


def test_remove_small_components_threshold_is_inclusive(three_blobs):
    assert remove_small_components(three_blobs, min_voxels=8).sum() == 8
    assert remove_small_components(three_blobs, min_voxels=9).sum() == 0
    assert remove_small_components(three_blobs, min_voxels=0).sum() == 11


def test_keep_largest_component(three_blobs):
    out = keep_largest_component(three_blobs)
    assert out.sum() == 8 and out[0:2, 0:2, 0:2].all()


def test_keep_largest_of_empty_is_empty():
    out = keep_largest_component(np.zeros((3, 3, 3), dtype=bool))
    assert out.dtype == bool and not out.any()


def test_keep_largest_tie_goes_to_first_in_scan_order():
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[2, 2, 2] = True
    mask[0, 0, 0] = True
    out = keep_largest_component(mask)
    assert out.sum() == 1 and out[0, 0, 0]


def test_component_functions_need_3d_and_known_connectivity():
    with pytest.raises(ValueError, match="3D"):
        remove_small_components(np.ones((3, 3), dtype=bool), 2)
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_component(np.ones((3, 3, 3), dtype=bool), connectivity=8)


def test_min_size_in_ml_converts_with_spacing():
    # Voxels of 1 x 1 x 2 mm = 0.002 ml; 0.006 ml is exactly 3 voxels, 0.0061 ml needs 4.
    assert min_size_in_voxels(0.006, "ml", (1.0, 1.0, 2.0)) == 3
    assert min_size_in_voxels(0.0061, "ml", (1.0, 1.0, 2.0)) == 4
    assert min_size_in_voxels(5, "voxels", None) == 5
    with pytest.raises(ValueError, match="spacing"):
        min_size_in_voxels(0.006, "ml", None)


def _regions() -> np.ndarray:
    """WT: a 3-voxel line and a 2-voxel line; TC: one voxel in each WT part; ET = TC."""
    wt = np.zeros((1, 8, 1), dtype=bool)
    wt[0, 0:3, 0] = True
    wt[0, 5:7, 0] = True
    tc = np.zeros_like(wt)
    tc[0, 1, 0] = True
    tc[0, 6, 0] = True
    return np.stack([wt, tc, tc.copy()])


def test_postprocess_min_size_in_ml_then_hierarchy():
    # 0.006 ml at 0.002 ml per voxel = 3 voxels: the 2-voxel WT part goes; the TC and ET voxel
    # inside it are then outside WT and go too, because the hierarchy is enforced last.
    config = PostprocessConfig(enforce_hierarchy=True, min_size={"WT": 0.006}, min_size_unit="ml")
    out = postprocess_regions(_regions(), config, spacing=(1.0, 1.0, 2.0))
    assert out[0, 0, :, 0].tolist() == [True, True, True, False, False, False, False, False]
    assert np.flatnonzero(out[1]).tolist() == [1]
    assert np.flatnonzero(out[2]).tolist() == [1]


def test_postprocess_without_hierarchy_leaves_children_alone():
    config = PostprocessConfig(min_size={"WT": 3})
    out = postprocess_regions(_regions(), config)
    assert out[0].sum() == 3
    assert out[1].sum() == 2 and out[2].sum() == 2


def test_postprocess_keep_largest_per_region():
    regions = _regions()
    config = PostprocessConfig(keep_largest=("WT",))
    out = postprocess_regions(regions, config)
    assert np.flatnonzero(out[0]).tolist() == [0, 1, 2]
    np.testing.assert_array_equal(out[1:], regions[1:])


def test_postprocess_noop_returns_equal_copy():
    regions = _regions()
    config = PostprocessConfig()
    assert config.is_noop
    out = postprocess_regions(regions, config)
    np.testing.assert_array_equal(out, regions)
    assert out is not regions


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_size": {"NCR": 3}}, "unknown region"),
        ({"keep_largest": ("XX",)}, "unknown region"),
        ({"min_size_unit": "mm3"}, "min_size_unit"),
        ({"min_size": {"ET": -1}}, ">= 0"),
        ({"connectivity": 4}, "connectivity"),
    ],
)
def test_postprocess_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PostprocessConfig(**kwargs)


def test_postprocess_regions_checks_shape():
    with pytest.raises(ValueError, match="shape"):
        postprocess_regions(np.zeros((3, 4, 4), dtype=bool), PostprocessConfig())


def test_a_label_map_is_cleaned_as_its_regions_would_be():
    # BraTS 2017-21 labels on a 1 x 9 x 1 row: a 3-voxel tumour (ED, NCR, ET) and, apart from it,
    # a 1-voxel ET false positive; keeping WT's largest component removes the stray voxel, and the
    # hierarchy then drops its ET with it.
    labels = np.array([2, 1, 4, 0, 0, 0, 0, 4, 0], dtype=np.uint8).reshape(1, 9, 1)
    cleaned = postprocess_labels(labels, "brats2017", PostprocessConfig(keep_largest=("WT",), enforce_hierarchy=True))
    assert cleaned.ravel().tolist() == [2, 1, 4, 0, 0, 0, 0, 0, 0]
    # nnU-Net's internal labels (1 WT-only, 2 TC-only, 3 ET) go through the same regions
    internal = np.array([1, 2, 3, 0, 0, 0, 0, 3, 0], dtype=np.uint8).reshape(1, 9, 1)
    both = PostprocessConfig(keep_largest=("WT",), enforce_hierarchy=True)
    assert postprocess_labels(internal, "nnunet", both).ravel().tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 0]
    # without the hierarchy the stray ET survives WT's clean-up: labels write ET wherever ET is set
    alone = PostprocessConfig(keep_largest=("WT",), enforce_hierarchy=False)
    assert postprocess_labels(internal, "nnunet", alone).ravel().tolist() == [1, 2, 3, 0, 0, 0, 0, 3, 0]
    # nothing asked: the map comes back unchanged
    assert np.array_equal(postprocess_labels(labels, "brats2017", PostprocessConfig(enforce_hierarchy=False)), labels)


def test_a_childs_largest_component_is_found_inside_its_parent():
    # TC has a 1-voxel component inside WT and a 3-voxel one outside it. Counted inside WT (as on
    # a label map) the kept TC is the voxel inside; counted raw, the outside one would win and
    # the hierarchy would then erase TC altogether.
    wt = _line([1, 1, 0, 0, 0, 0])
    tc = _line([0, 1, 0, 1, 1, 1])
    et = _line([0, 0, 0, 0, 0, 0])
    out = postprocess_regions(np.stack([wt, tc, et]), PostprocessConfig(keep_largest=("TC",), enforce_hierarchy=True))
    assert out[1].ravel().tolist() == [False, True, False, False, False, False]
