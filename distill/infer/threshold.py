"""A training-free intensity-threshold segmenter: the floor every learned model must beat.

It encodes the radiological rules of thumb that BraTS annotators also start from: oedema and
tumour are hyperintense on FLAIR/T2 (whole tumour), enhancing tumour is hyperintense on
T1ce (ET), and the core is the enhancing rim together with what it encloses (TC). It works on
z-scored images (see :mod:`distill.data.preprocess`). The demo scores it until a student
exists, and reports keep it as the baseline row.

Training-free, but not untuned: its thresholds were chosen by hand on this project's phantoms,
so on phantoms it is a strong baseline (mean Dice about 0.66 on the demo's held-out cases) that
a briefly trained network has to earn its way past. Real scans defeat it far more often (mean
Dice 0.335 on the 6 held-out BraTS 2018 cases of the real-data protocol's folds 0-2, TC and ET
worst: benchmarks/realdata/protocol/SUMMARY.md), which is why that protocol reports it as the
floor under every learned model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from distill.data.conventions import get_convention
from distill.data.discovery import MODALITIES
from distill.data.preprocess import PreprocessConfig, preprocess, restore_labels
from distill.infer.postprocess import enforce_hierarchy, remove_small_components

T1CE, T2, FLAIR = MODALITIES.index("t1ce"), MODALITIES.index("t2"), MODALITIES.index("flair")


@dataclass(frozen=True)
class ThresholdConfig:
    """Thresholds in standard deviations of each modality within the brain."""

    flair_z: float = 1.3
    t2_z: float = 0.5
    t1ce_z: float = 2.0
    min_component_voxels: int = 20


def threshold_labels(case, convention: str = "brats2017", source: str = "") -> np.ndarray:
    """The baseline's label map for a loaded :class:`~distill.data.case.Case`, on the case's own grid.

    The images are z-scored and cropped as for a network (:func:`~distill.data.preprocess.preprocess`),
    thresholded, and the labels put back where the crop took them from, in ``convention``'s values.
    """
    prepared = preprocess(case.images, case.affine, config=PreprocessConfig(), source=source)
    regions = threshold_regions(prepared.images, prepared.brain_mask)
    return restore_labels(get_convention(convention).from_regions(regions), prepared.record)


def threshold_regions(images: np.ndarray, brain: np.ndarray, config: ThresholdConfig = ThresholdConfig()) -> np.ndarray:
    """Boolean WT/TC/ET regions ``(3, X, Y, Z)`` from z-scored images ``(4, X, Y, Z)`` and a brain mask."""
    hyperintense = (images[FLAIR] > config.flair_z) & (images[T2] > config.t2_z) & brain
    wt = remove_small_components(hyperintense, config.min_component_voxels)
    near_tumour = ndimage.binary_dilation(wt, iterations=2)
    et = remove_small_components((images[T1CE] > config.t1ce_z) & near_tumour, config.min_component_voxels)
    # The core is the enhancing rim plus whatever it encloses (necrosis), filled slice-free in 3D.
    tc = ndimage.binary_fill_holes(ndimage.binary_closing(et, iterations=2)) | et
    wt = wt | tc
    return enforce_hierarchy(np.stack([wt, tc, et]))
