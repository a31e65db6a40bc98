"""Label conventions: every label of every convention mapped to regions by hand, and back."""

import numpy as np
import pytest

from distill.data.conventions import (
    CONVENTIONS,
    LAYOUT_BRATS2017,
    LAYOUT_BRATS2023,
    LAYOUT_NNUNET,
    detect_convention,
    get_convention,
    resolve_convention,
)
from distill.errors import LabelConventionError

# label -> (WT, TC, ET), written out by hand from the BraTS papers / nnU-Net's conversion script.
EXPECTED_REGIONS = {
    "brats2017": {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 4: (1, 1, 1)},
    "brats2023": {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 3: (1, 1, 1)},
    "brats2024-gli": {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 3: (1, 1, 1), 4: (0, 0, 0)},
    "brats2013": {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 3: (1, 1, 0), 4: (1, 1, 1)},
    "nnunet": {0: (0, 0, 0), 1: (1, 0, 0), 2: (1, 1, 0), 3: (1, 1, 1)},
}
# (WT, TC, ET) -> label written back, by hand.
EXPECTED_WRITE = {
    "brats2017": {(0, 0, 0): 0, (1, 0, 0): 2, (1, 1, 0): 1, (1, 1, 1): 4},
    "brats2023": {(0, 0, 0): 0, (1, 0, 0): 2, (1, 1, 0): 1, (1, 1, 1): 3},
    "brats2024-gli": {(0, 0, 0): 0, (1, 0, 0): 2, (1, 1, 0): 1, (1, 1, 1): 3},
    "brats2013": {(0, 0, 0): 0, (1, 0, 0): 2, (1, 1, 0): 1, (1, 1, 1): 4},
    "nnunet": {(0, 0, 0): 0, (1, 0, 0): 1, (1, 1, 0): 2, (1, 1, 1): 3},
}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_to_regions_matches_hand_table(name):
    convention = get_convention(name)
    labels = np.array(sorted(EXPECTED_REGIONS[name]), dtype=np.uint8)
    regions = convention.to_regions(labels)
    assert regions.shape == (3, len(labels))
    for i, label in enumerate(labels):
        assert tuple(int(v) for v in regions[:, i]) == EXPECTED_REGIONS[name][int(label)], (name, label)


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_from_regions_matches_hand_table(name):
    convention = get_convention(name)
    keys = list(EXPECTED_WRITE[name])
    regions = np.array(keys, dtype=bool).T  # (3, n)
    labels = convention.from_regions(regions)
    assert labels.tolist() == [EXPECTED_WRITE[name][k] for k in keys]


def test_regions_are_nested_for_every_label():
    for name, table in EXPECTED_REGIONS.items():
        for wt, tc, et in table.values():
            assert wt >= tc >= et, name


def test_conversion_2017_to_2023_and_nnunet_by_hand():
    labels = np.array([[0, 1], [2, 4]], dtype=np.uint8)
    b17 = get_convention("brats2018")
    assert b17.convert_to(labels, get_convention("brats2023")).tolist() == [[0, 1], [2, 3]]
    assert b17.convert_to(labels, get_convention("nnunet")).tolist() == [[0, 2], [1, 3]]
    assert get_convention("nnunet").convert_to(np.array([0, 1, 2, 3]), b17).tolist() == [0, 2, 1, 4]


def test_lossy_conventions_are_documented_behaviour():
    # 2013: label 3 (non-enhancing core) is in TC, so it comes back as 1; 2024: cavity 4 is no tumour.
    assert get_convention("brats2013").convert_to(np.array([3]), get_convention("brats2013")).tolist() == [1]
    assert get_convention("brats2024-gli").convert_to(np.array([4]), get_convention("brats2024-gli")).tolist() == [0]


def test_from_regions_overwrites_in_region_order_when_hierarchy_is_broken():
    # ET outside TC and WT still becomes ET, as nnU-Net's regions_class_order does.
    regions = np.array([[0], [0], [1]], dtype=bool)
    assert get_convention("brats2017").from_regions(regions).tolist() == [4]


def test_unknown_label_values_name_the_source():
    with pytest.raises(LabelConventionError, match=r"seg\.nii\.gz.*\[3\].*brats2017"):
        get_convention("brats2017").to_regions(np.array([0, 3]), source="seg.nii.gz")


def test_unknown_convention_name():
    with pytest.raises(LabelConventionError, match="unknown label convention 'brats1999'"):
        get_convention("brats1999")


@pytest.mark.parametrize(
    ("values", "layout", "expected"),
    [
        ({0, 1, 2, 4}, LAYOUT_BRATS2017, "brats2017"),
        ({0, 2}, LAYOUT_BRATS2017, "brats2017"),
        ({0, 1, 2, 3}, LAYOUT_BRATS2023, "brats2023"),
        ({0, 1, 2, 3, 4}, LAYOUT_BRATS2023, "brats2024-gli"),
        ({0, 1, 2, 3}, LAYOUT_NNUNET, "nnunet"),
        ({0, 1, 2, 4}, None, "brats2017"),
        ({0, 4}, None, "brats2017"),
    ],
)
def test_detection_table(values, layout, expected):
    assert detect_convention(values, layout).name == expected


@pytest.mark.parametrize(
    ("values", "layout", "message"),
    [
        ({0, 1, 2, 3}, LAYOUT_BRATS2017, "brats2013"),  # label 3 in 2017-21 naming
        ({0, 1, 2, 3}, None, "brats2023"),  # 2023 vs nnU-Net
        ({0, 1, 2, 3, 4}, None, "cannot tell"),  # 2013 vs 2024
        ({0, 1, 2}, None, "cannot tell"),  # nothing distinguishing
        ({0, 1, 2, 7}, LAYOUT_BRATS2023, r"\[7\]"),
        ({0, 4}, LAYOUT_NNUNET, r"\[4\]"),
    ],
)
def test_detection_refuses_ambiguous_or_invalid(values, layout, message):
    with pytest.raises(LabelConventionError, match=message):
        detect_convention(values, layout, source="labels/")


def test_resolve_prefers_explicit_name():
    assert resolve_convention("brats2013", {0, 1, 2, 3, 4}, None, "x").name == "brats2013"
    assert resolve_convention("auto", {0, 4}, None, "x").name == "brats2017"
