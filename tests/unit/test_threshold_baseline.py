"""The training-free threshold baseline on a hand-made case whose answer is known."""

import numpy as np

from distill.data.case import Case
from distill.data.conventions import get_convention
from distill.infer.threshold import threshold_labels


def _case() -> tuple[Case, np.ndarray]:
    """A 32³ 'brain' (zero outside a margin of 3) with a FLAIR/T2-bright 8³ cube, whose centre
    4³ enhances on T1ce. Returns the case and the expected WT mask."""
    rng = np.random.default_rng(0)
    images = np.zeros((4, 32, 32, 32), np.float32)
    brain = np.zeros((32, 32, 32), bool)
    brain[3:-3, 3:-3, 3:-3] = True
    images[:, brain] = 100.0 + 5.0 * rng.standard_normal((4, int(brain.sum())))
    tumour = np.zeros_like(brain)
    tumour[12:20, 12:20, 12:20] = True
    images[2][tumour] += 60.0  # T2
    images[3][tumour] += 80.0  # FLAIR
    images[1][14:18, 14:18, 14:18] += 80.0  # T1ce enhancement
    affine = np.diag([2.0, -1.5, 1.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 7.0)
    return Case(case_id="hand", images=images, affine=affine, labels=None), tumour


def test_the_baseline_finds_the_hyperintense_cube_and_its_enhancing_centre():
    case, tumour = _case()
    labels = threshold_labels(case, "brats2017")
    assert labels.shape == case.shape and set(np.unique(labels)) <= {0, 1, 2, 4}
    wt, tc, et = get_convention("brats2017").to_regions(labels)
    assert 2 * (wt & tumour).sum() / (wt.sum() + tumour.sum()) > 0.9
    assert et[14:18, 14:18, 14:18].mean() > 0.9 and not et[~tumour].any()
    assert (tc <= wt).all() and (et <= tc).all()


def test_a_case_without_hyperintensity_gets_no_tumour():
    case, _ = _case()
    # T1 alone carries no tumour; each modality keeps its own noise, as scanners give it
    images = case.images.copy()
    brain = images[0] > 0
    images[:, brain] = 100.0 + 5.0 * np.random.default_rng(1).standard_normal((4, int(brain.sum())))
    flat = Case(case_id="flat", images=images, affine=case.affine, labels=None)
    assert not threshold_labels(flat, "brats2017").any()
