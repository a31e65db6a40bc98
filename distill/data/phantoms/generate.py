"""One phantom from one seed: anatomy, tumour and intensities put together (:func:`make_phantom`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from distill.data.phantoms.anatomy import (
    Warp,
    dominant_tissue,
    draw_warp,
    sample_tissues,
    sample_volume,
    template_coordinates,
)
from distill.data.phantoms.config import BRATS_FOV_MM, MODALITIES, PhantomConfig, brats_affine
from distill.data.phantoms.fields import grid_axes
from distill.data.phantoms.intensity import draw_contrast, synthesise
from distill.data.phantoms.templates import Templates, load_raw_templates, rounded_voxel_size, templates_for
from distill.data.phantoms.tumour import draw_kind, mass_effect_shift, plan_lesions, rasterise_lesions, snap_to_voxel
from distill.errors import DistillError

# Gliomas are mostly supratentorial: tumour centres lie above this template z (mm).
MIN_TUMOUR_CENTRE_Z_MM = -5.0
# Lesion centres and the brain bounding box are found on a grid this coarse.
COARSE_SPACING_MM = 4.0


@dataclass(frozen=True)
class Phantom:
    """One synthetic case; every array has the grid shape ``S = config.grid_shape``.

    Attributes:
        images: modality ("t1", "t1ce", "t2", "flair") -> int16 array ``S``, zero outside the brain.
        labels: uint8 array ``S`` in the BraTS 2017-2021 convention (0, 1 NCR/NET, 2 ED, 4 ET).
        affine: 4x4 voxel-to-world affine (LPS voxel order, RAS+ world, mm).
        kind: tumour kind, one of ``KINDS``.
        brain_mask: bool array ``S``, the skull-stripped brain.
        tissue: uint8 array ``S``, dominant normal tissue (0 outside, 1 CSF, 2 GM, 3 WM),
            ignoring the tumour (look at ``labels`` for that).
    """

    images: dict[str, np.ndarray]
    labels: np.ndarray
    affine: np.ndarray
    kind: str
    brain_mask: np.ndarray
    tissue: np.ndarray


def _coarse_survey(
    warp: Warp, templates: Templates
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Warp the brain onto a 4 mm grid to find its extent and the candidate tumour centres.

    Returns the coarse grid ``axes``, the brain mask (bool, coarse shape), the candidate
    centres (N, 3 world mm) and their depth below the brain surface (N,) in mm.
    """
    coarse_shape = tuple(int(math.ceil(fov / COARSE_SPACING_MM)) for fov in BRATS_FOV_MM)
    axes = grid_axes(brats_affine((COARSE_SPACING_MM,) * 3), coarse_shape)
    coords = template_coordinates(warp, axes)
    brain = sample_volume(templates.mask, coords) > 0.5
    wm = sample_volume(templates.wm, coords)
    depth = ndimage.distance_transform_edt(brain) * COARSE_SPACING_MM
    to_z_mm = np.linalg.inv(templates.mm_to_voxel)[2]
    template_z_mm = to_z_mm[0] * coords[0] + to_z_mm[1] * coords[1] + to_z_mm[2] * coords[2] + to_z_mm[3]
    candidate = brain & (wm > 0.6) & (template_z_mm > MIN_TUMOUR_CENTRE_Z_MM) & (depth >= 2 * COARSE_SPACING_MM)
    if not candidate.any():
        candidate = brain & (wm > 0.5)
    idx = np.argwhere(candidate)
    centres = np.stack([axes[a][idx[:, a]] for a in range(3)], axis=1)
    return axes, brain, centres, depth[candidate]


def _working_box(
    coarse_axes: tuple[np.ndarray, ...], coarse_brain: np.ndarray, config: PhantomConfig
) -> tuple[slice, ...]:
    """Output-index box holding the brain (with a margin for the elastic warp and mass effect)."""
    affine = config.affine
    shape = config.grid_shape
    idx = np.argwhere(coarse_brain)
    margin_mm = 12.0
    box = []
    for a in range(3):
        world = coarse_axes[a][[idx[:, a].min(), idx[:, a].max()]]
        index = (world - affine[a, 3]) / affine[a, a]
        lo = int(math.floor(index.min() - margin_mm / abs(affine[a, a])))
        hi = int(math.ceil(index.max() + margin_mm / abs(affine[a, a]))) + 1
        box.append(slice(max(lo, 0), min(hi, shape[a])))
    return tuple(box)


def make_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Generate one synthetic BraTS-like case, fully determined by ``seed`` and ``config``.

    Args:
        seed: non-negative integer.
        config: grid and appearance settings; defaults to 2 mm (120x120x78).

    Returns:
        A :class:`Phantom` whose arrays have shape ``config.grid_shape``.
    """
    config = config or PhantomConfig()
    if seed < 0:
        raise DistillError(f"phantom seed must be non-negative, got {seed}")
    anatomy_ss, tumour_ss, contrast_ss, noise_ss = np.random.SeedSequence(seed).spawn(4)
    anatomy_rng, tumour_rng = np.random.default_rng(anatomy_ss), np.random.default_rng(tumour_ss)
    contrast_rng, noise_rng = np.random.default_rng(contrast_ss), np.random.default_rng(noise_ss)

    templates = templates_for(rounded_voxel_size(config))
    shape, voxel_size, affine = config.grid_shape, config.voxel_size, config.affine
    warp = draw_warp(anatomy_rng, config, templates)
    contrasts = draw_contrast(contrast_rng, config)

    # the survey uses the unblurred templates so that tumour positions do not depend on the grid
    coarse_axes, coarse_brain, candidates, depth = _coarse_survey(warp, load_raw_templates())
    kind = draw_kind(tumour_rng, config)
    lesions = plan_lesions(
        tumour_rng,
        kind,
        candidates,
        depth,
        min_radius=1.5 * max(voxel_size),
        # fixed in mm (not voxels) so positions do not change with the grid; 2 voxels at most
        # grids keep foci apart even under 26-connectivity
        separation_margin=max(12.0, 2.0 * max(voxel_size)),
    )
    # put each centre on a voxel centre so the innermost label always gets at least one voxel
    full_axes = grid_axes(affine, shape)
    lesions = [snap_to_voxel(lesion, full_axes) for lesion in lesions]

    box = _working_box(coarse_axes, coarse_brain, config)
    axes = tuple(full_axes[a][box[a]] for a in range(3))
    coords = template_coordinates(warp, axes, shift=mass_effect_shift(lesions, axes))
    mask, gm, wm = sample_tissues(templates, coords)
    del coords
    brain = mask > 0.5
    csf = np.clip(mask - gm - wm, 0.0, None)
    fractions = {"gm": gm, "wm": wm, "csf": csf}
    tumour = rasterise_lesions(lesions, axes, brain, wm, csf)

    images = {}
    for modality in MODALITIES:
        local = synthesise(contrasts[modality], modality, fractions, tumour, axes, brain, noise_rng)
        images[modality] = _embed(local, box, shape, np.int16)
    tissue_local = dominant_tissue(brain, csf, gm, wm)
    return Phantom(
        images=images,
        labels=_embed(tumour.labels, box, shape, np.uint8),
        affine=affine,
        kind=kind,
        brain_mask=_embed(brain, box, shape, np.bool_),
        tissue=_embed(tissue_local, box, shape, np.uint8),
    )


def _embed(local: np.ndarray, box: tuple[slice, ...], shape: tuple[int, int, int], dtype: type) -> np.ndarray:
    """Place the working-box array into a zero array of the full grid ``shape``."""
    out = np.zeros(shape, dtype=dtype)
    out[box] = local
    return out
