"""Anatomy: the random pose and elastic warp that place the template brain, and tissue sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from distill.data.phantoms.config import CSF, GM, WM, PhantomConfig, brats_affine
from distill.data.phantoms.fields import Lattice, along, fov_box_mm, random_rotation
from distill.data.phantoms.templates import Templates

# Mean centre of the brain in the 1 mm BraTS voxel grid, measured on BraTS 2018 cases
# (non-zero T1 voxels), and how much smaller those brains are than the MNI152 2009 brain
# mask (volume ratio ~0.78, i.e. ~0.93 per axis; SRI24 brains are stripped more tightly).
BRATS_BRAIN_CENTRE_VOXEL = (118.5, 135.0, 74.5)
BRATS_TO_TEMPLATE_SIZE = 0.93


@dataclass(frozen=True)
class Warp:
    """World (output, mm) -> template voxel mapping: ``linear @ p + offset + displacement(p)``.

    ``displacement`` holds three lattices (template voxel units = mm) for x, y, z.
    """

    linear: np.ndarray
    offset: np.ndarray
    displacement: tuple[Lattice, Lattice, Lattice]


def draw_warp(rng: np.random.Generator, config: PhantomConfig, templates: Templates) -> Warp:
    """Random pose (rotation, per-axis scale, shift) and elastic field placing the template brain."""
    brats_centre = brats_affine((1.0, 1.0, 1.0)) @ np.array([*BRATS_BRAIN_CENTRE_VOXEL, 1.0])
    centre_world = brats_centre[:3] + rng.uniform(-4.0, 4.0, size=3)
    # world -> template mm: undo the size difference and the random per-case scale
    scale = 1.0 / (BRATS_TO_TEMPLATE_SIZE * (1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter, size=3)))
    to_template_mm = random_rotation(rng, config.rotation_deg) @ np.diag(scale)
    offset_mm = templates.centre_mm - to_template_mm @ centre_world
    to_voxel = templates.mm_to_voxel
    linear = to_voxel[:3, :3] @ to_template_mm
    offset = to_voxel[:3, :3] @ offset_mm + to_voxel[:3, 3]
    lo, hi = fov_box_mm()
    # a ~30 mm lattice gives gyral-scale bends without tearing; amplitude in template voxels (= mm)
    displacement = tuple(
        Lattice(values=lat.values * config.elastic_mm, origin=lat.origin, spacing=lat.spacing)
        for lat in (Lattice.random(rng, lo, hi, 30.0) for _ in range(3))
    )
    return Warp(linear=linear, offset=offset, displacement=displacement)  # type: ignore[arg-type]


def template_coordinates(
    warp: Warp, axes: tuple[np.ndarray, np.ndarray, np.ndarray], shift: tuple[np.ndarray, ...] | None = None
) -> np.ndarray:
    """Template voxel coordinates of every output voxel -> float32 array (3, len0, len1, len2).

    ``shift`` (three arrays of the grid shape, mm) moves the sampled world point, which is
    how the tumour's mass effect pushes tissue aside.
    """
    shape = tuple(len(a) for a in axes)
    coords = np.empty((3, *shape), dtype=np.float32)
    points = [along(axes[a], a) if shift is None else along(axes[a], a) - shift[a] for a in range(3)]
    for c, lattice in enumerate(warp.displacement):
        out = coords[c]
        out[...] = lattice.evaluate(axes) + np.float32(warp.offset[c])
        for a in range(3):
            out += np.float32(warp.linear[c, a]) * points[a]
    return coords


def sample_volume(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``volume`` at ``coords`` (3, *S) -> float32 array S; zero outside."""
    return ndimage.map_coordinates(
        volume, coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
    )


def sample_tissues(templates: Templates, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, GM and WM fractions at ``coords`` (3, *S) -> three float32 arrays S.

    GM and WM are only sampled where the mask is non-zero: they are zero wherever it is
    (the maps were multiplied by the mask), and skipping the rest halves the work at 1 mm.
    """
    mask = sample_volume(templates.mask, coords)
    inside = mask > 0
    points = coords[:, inside]
    fractions = []
    for volume in (templates.gm, templates.wm):
        full = np.zeros_like(mask)
        full[inside] = sample_volume(volume, points)
        fractions.append(full)
    return mask, fractions[0], fractions[1]


def dominant_tissue(brain: np.ndarray, csf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """uint8 map of the largest tissue fraction: 1 CSF, 2 GM, 3 WM, 0 outside ``brain``."""
    tissue = np.where((wm >= gm) & (wm >= csf), WM, np.where(gm >= csf, GM, CSF)).astype(np.uint8)
    tissue[~brain] = 0
    return tissue
