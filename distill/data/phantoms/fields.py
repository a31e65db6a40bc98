"""Smooth random fields (cubic B-spline lattices) and the grid geometry the other stages share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.data.phantoms.config import brats_affine

# Cubic B-spline basis: mean of sum_k beta(t-k)^2 over t; normalises random fields to std ~1.
_BSPLINE_ENERGY = 151.0 / 315.0


def _cubic_bspline(d: np.ndarray) -> np.ndarray:
    """Uniform cubic B-spline kernel evaluated at offsets ``d`` (in node units)."""
    a = np.abs(d)
    inner = (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0
    outer = np.clip(2.0 - a, 0.0, None) ** 3 / 6.0
    return np.where(a < 1.0, inner, outer)


@dataclass(frozen=True)
class Lattice:
    """Random node values on a regular lattice in world mm; evaluated by separable cubic B-splines.

    ``values`` has shape (n0, n1, n2); node (a, b, c) sits at ``origin + spacing * (a, b, c)``.
    """

    values: np.ndarray
    origin: np.ndarray
    spacing: float

    @classmethod
    def random(cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, spacing: float) -> Lattice:
        """Lattice covering the box [lo, hi] mm, scaled so the evaluated field has std ~1."""
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        counts = np.ceil((hi - lo) / spacing).astype(int) + 4  # two extra nodes each side for spline support
        values = rng.standard_normal(tuple(counts)) / _BSPLINE_ENERGY**1.5
        return cls(values=values.astype(np.float32), origin=lo - 1.5 * spacing, spacing=float(spacing))

    def evaluate(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Field at the grid ``axes`` (three 1D arrays of world mm) -> float32 array (len0, len1, len2).

        Separable: three small matrix products instead of one 3D interpolation.
        """
        out = self.values
        for axis, positions in enumerate(axes):
            t = (np.asarray(positions, dtype=np.float64) - self.origin[axis]) / self.spacing
            weights = _cubic_bspline(t[:, None] - np.arange(self.values.shape[axis])[None, :]).astype(np.float32)
            out = np.moveaxis(np.tensordot(out, weights, axes=([axis], [1])), -1, axis)
        return np.ascontiguousarray(out, dtype=np.float32)


def grid_axes(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm of voxel centres along each axis of a grid with a diagonal affine -> 3 float64 1D arrays."""
    return tuple(affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3))  # type: ignore[return-value]


def fov_box_mm() -> tuple[np.ndarray, np.ndarray]:
    """World-mm corners of the BraTS field of view (fixed, whatever the spacing)."""
    corner_a = brats_affine((1.0, 1.0, 1.0)) @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_b = brats_affine((1.0, 1.0, 1.0)) @ np.array([239.5, 239.5, 154.5, 1.0])
    return np.minimum(corner_a, corner_b)[:3], np.maximum(corner_a, corner_b)[:3]


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation matrix from three uniform angles in [-max_deg, max_deg]."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def along(values: np.ndarray, axis: int) -> np.ndarray:
    """1D array -> float32 view shaped to broadcast along ``axis`` of a 3D grid."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)
