"""BraTS-like synthetic brain-tumour phantoms for tests, CI and the demo.

Each phantom is a skull-stripped four-modality MRI (T1, T1ce, T2, FLAIR) of a glioma-like
lesion with a BraTS 2017-2021 label map (0 background, 1 NCR/NET, 2 oedema, 4 enhancing).
The aim is data on which a network has to learn something real, so:

* anatomy comes from the MNI152 2009 grey/white-matter templates packaged with nilearn
  (no download), warped per case by a random rotation, scaling, shift and a smooth elastic
  displacement, and placed where BraTS brains sit in the 240x240x155 mm field of view;
* tumours have random size, lobulated shape and position in white matter, with nested
  necrosis inside an enhancing rim inside the core, and oedema spreading preferentially
  along white matter; the tumour pushes surrounding tissue aside (mass effect);
* intensities are tissue- and modality-specific with per-case jitter, tumour texture,
  enhancing vessels on T1ce, a multiplicative bias field, partial-volume blur and Rician
  noise, so intensity ranges of the classes overlap and no single threshold segments them.

Everything is driven by one integer seed through :class:`numpy.random.SeedSequence`;
geometry is defined in millimetres, so one seed gives the same brain and tumour at 1 mm,
2 mm or a small CI shape, up to voxelisation (on grids coarser than ~4 mm, minimum lesion
sizes of 1.5 voxels can enlarge the smallest lesions).

Coordinates: output arrays are indexed (i, j, k) with a BraTS-style LPS affine
``diag(-s, -s, s)`` plus an offset; at 1 mm it equals the affine of real BraTS files. The
anatomy is placed in world (RAS+, mm) coordinates, so it is correctly oriented whatever
the voxel order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from distill.core.atomic import atomic_write_json
from distill.data.conventions import get_convention
from distill.data.nifti import write_nifti
from distill.errors import DistillError

KINDS: tuple[str, ...] = ("glioblastoma", "low-grade", "small-enhancing", "multifocal")
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LAYOUTS: tuple[str, ...] = ("brats2021", "nnunet")
BRATS_FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)

# BraTS 2017-2021 label values written into Phantom.labels.
NCR, ED, ET = 1, 2, 4
# Dominant normal tissue written into Phantom.tissue (0 outside the brain).
CSF, GM, WM = 1, 2, 3

DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "glioblastoma": 0.5,
    "low-grade": 0.2,
    "small-enhancing": 0.15,
    "multifocal": 0.15,
}

# Mean centre of the brain in the 1 mm BraTS voxel grid, measured on BraTS 2018 cases
# (non-zero T1 voxels), and how much smaller those brains are than the MNI152 2009 brain
# mask (volume ratio ~0.78, i.e. ~0.93 per axis; SRI24 brains are stripped more tightly).
BRATS_BRAIN_CENTRE_VOXEL = (118.5, 135.0, 74.5)
BRATS_TO_TEMPLATE_SIZE = 0.93
# Gliomas are mostly supratentorial: tumour centres lie above this template z (mm).
MIN_TUMOUR_CENTRE_Z_MM = -5.0
# Lesion centres and the brain bounding box are found on a grid this coarse.
COARSE_SPACING_MM = 4.0
# Cubic B-spline basis: mean of sum_k beta(t-k)^2 over t; normalises random fields to std ~1.
_BSPLINE_ENERGY = 151.0 / 315.0

# Mean intensity of each tissue class relative to normal white matter, per modality
# (t1, t1ce, t2, flair). Ratios follow typical 1.5/3 T glioma MRI and the label-wise
# medians of BraTS 2018 cases: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR suppresses CSF
# and shows oedema bright; necrosis is fluid-like (dark T1/T1ce, bright T2); the
# non-enhancing solid tumour of low-grade lesions is T2/FLAIR bright without enhancement.
# The enhancing tumour's T1ce value is drawn per case (see _draw_contrast).
TISSUE_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.33, 0.36, 2.60, 0.30),
    "gm": (0.74, 0.76, 1.35, 1.18),
    "wm": (1.00, 1.00, 1.00, 1.00),
    "oedema": (0.80, 0.82, 1.90, 1.75),
    "necrosis": (0.45, 0.42, 2.30, 1.15),
    "solid": (0.70, 0.72, 1.75, 1.55),
    "enhancing": (0.80, 1.55, 1.60, 1.45),
}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms look; every field has a sensible default.

    The grid always covers the BraTS field of view of 240x240x155 mm: ``spacing_mm=1``
    gives 240x240x155 voxels, ``2`` gives 120x120x78. ``shape`` overrides that for small
    CI volumes (e.g. ``(64, 64, 64)``); the spacing then becomes FOV / shape per axis
    (anisotropic, e.g. 3.75x3.75x2.42 mm for 64³).

    Attributes:
        spacing_mm: isotropic voxel size in mm (ignored when ``shape`` is set).
        shape: explicit output shape; ``None`` derives it from ``spacing_mm``.
        kind_weights: relative probability of each tumour kind (keys from ``KINDS``).
        rotation_deg: maximum random rotation about each axis.
        scale_jitter: per-axis random scaling of the brain, ±this fraction.
        elastic_mm: standard deviation of the smooth elastic displacement.
        bias_strength: standard deviation of the log bias field (0.2 ≈ ±20 %).
        noise_fraction: Rician noise standard deviation relative to white-matter signal in
            1 mm voxels; coarser grids get less (÷ sqrt of the voxel volume in mm³), as
            averaging 1 mm voxels would give.
    """

    spacing_mm: float = 2.0
    shape: tuple[int, int, int] | None = None
    kind_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    rotation_deg: float = 8.0
    scale_jitter: float = 0.10
    elastic_mm: float = 3.0
    bias_strength: float = 0.20
    noise_fraction: float = 0.03

    def __post_init__(self) -> None:
        if self.shape is None:
            if not (0.5 <= self.spacing_mm <= 8.0):
                raise DistillError(f"phantom spacing must be between 0.5 and 8 mm, got {self.spacing_mm}")
        elif len(self.shape) != 3 or any(int(n) < 24 or int(n) > 512 for n in self.shape):
            raise DistillError(f"phantom shape must be three sizes between 24 and 512, got {self.shape}")
        unknown = sorted(set(self.kind_weights) - set(KINDS))
        if unknown:
            raise DistillError(f"unknown phantom tumour kinds {unknown}; known: {', '.join(KINDS)}")
        weights = list(self.kind_weights.values())
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise DistillError(
                f"phantom kind weights must be non-negative with a positive sum, got {dict(self.kind_weights)}"
            )
        for name in ("rotation_deg", "scale_jitter", "elastic_mm", "bias_strength", "noise_fraction"):
            if getattr(self, name) < 0:
                raise DistillError(f"phantom setting {name} must be non-negative, got {getattr(self, name)}")
        if self.scale_jitter >= 0.5:
            raise DistillError(f"phantom scale_jitter must be below 0.5, got {self.scale_jitter}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Output array shape (I, J, K)."""
        if self.shape is not None:
            return (int(self.shape[0]), int(self.shape[1]), int(self.shape[2]))
        return tuple(int(math.ceil(fov / self.spacing_mm - 1e-6)) for fov in BRATS_FOV_MM)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along (I, J, K)."""
        if self.shape is not None:
            return tuple(fov / n for fov, n in zip(BRATS_FOV_MM, self.grid_shape))  # type: ignore[return-value]
        return (float(self.spacing_mm),) * 3  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) affine of the output grid."""
        return brats_affine(self.voxel_size)


def brats_affine(voxel_size: tuple[float, float, float]) -> np.ndarray:
    """BraTS-style LPS affine ``diag(-sx, -sy, sz)`` whose field-of-view edges do not move with spacing.

    At 1 mm this is exactly the affine of BraTS files (origin 0, 239, 0); at coarser
    spacings voxel 0 is centred on the block of 1 mm voxels it covers.
    """
    sx, sy, sz = (float(s) for s in voxel_size)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [0.5 - sx / 2, 239.5 - sy / 2, -0.5 + sz / 2]
    return affine


# --------------------------------------------------------------------------- result types


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


@dataclass(frozen=True)
class PhantomResult:
    """What :func:`write_phantoms` did.

    Attributes:
        out_dir: the dataset folder.
        layout: ``"brats2021"`` or ``"nnunet"``.
        case_ids: all case ids of this run, in order.
        written: ids generated and written by this call.
        skipped: ids whose files all existed already (resumed runs).
        seconds_per_case: mean wall time to generate and write one case, ``None`` if none was written.
    """

    out_dir: Path
    layout: str
    case_ids: tuple[str, ...]
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds_per_case: float | None


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class _Templates:
    """MNI152 2009 tissue maps as float32 arrays on the 1 mm template grid (197x233x189).

    ``mm_to_voxel`` is the inverse template affine; ``centre_mm`` the brain-mask centroid.
    """

    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    mm_to_voxel: np.ndarray
    centre_mm: np.ndarray


@functools.lru_cache(maxsize=1)
def _load_raw_templates() -> _Templates:
    """Load the packaged 1 mm MNI152 templates once per process (~2 s, mostly importing nilearn)."""
    from nilearn import datasets  # imported lazily: slow, and only phantoms need it

    def as_array(img) -> np.ndarray:  # type: ignore[no-untyped-def]
        return np.ascontiguousarray(np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32))

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = as_array(mask_img)
    gm = as_array(datasets.load_mni152_gm_template(resolution=1)) * mask
    wm = as_array(datasets.load_mni152_wm_template(resolution=1)) * mask
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    centroid_voxel = np.argwhere(mask > 0.5).mean(axis=0)
    centre_mm = affine[:3, :3] @ centroid_voxel + affine[:3, 3]
    return _Templates(gm=gm, wm=wm, mask=mask, mm_to_voxel=np.linalg.inv(affine), centre_mm=centre_mm)


@functools.lru_cache(maxsize=4)
def _templates_for(voxel_size: tuple[float, float, float]) -> _Templates:
    """Templates low-pass filtered for an output grid of ``voxel_size`` mm.

    Sampling 1 mm maps at coarser spacing with trilinear interpolation would alias thin
    sulci; a Gaussian of ~0.4 voxel per axis stands in for the scanner's partial volume.
    """
    raw = _load_raw_templates()
    sigma = tuple(0.4 * max(s - 1.0, 0.0) for s in voxel_size)
    if max(sigma) < 0.2:
        return raw

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, mode="constant").astype(np.float32, copy=False)

    return dataclasses.replace(raw, gm=blur(raw.gm), wm=blur(raw.wm), mask=blur(raw.mask))


def _rounded_voxel_size(config: PhantomConfig) -> tuple[float, float, float]:
    """Voxel size rounded so close spacings share one cached template set."""
    return tuple(round(s, 1) for s in config.voxel_size)  # type: ignore[return-value]


def preload_templates(config: PhantomConfig | None = None) -> float:
    """Load and cache the templates (for ``config``'s grid, if given); returns the seconds it took.

    Without ``config`` only the 1 mm templates are loaded; with it they are also blurred
    for its voxel size. Benchmarks call this first so per-case timings exclude the one-off work.
    """
    start = time.perf_counter()
    if config is None:
        _load_raw_templates()
    else:
        _templates_for(_rounded_voxel_size(config))
    return time.perf_counter() - start


# --------------------------------------------------------------------------- smooth random fields


def _cubic_bspline(d: np.ndarray) -> np.ndarray:
    """Uniform cubic B-spline kernel evaluated at offsets ``d`` (in node units)."""
    a = np.abs(d)
    inner = (4.0 - 6.0 * a**2 + 3.0 * a**3) / 6.0
    outer = np.clip(2.0 - a, 0.0, None) ** 3 / 6.0
    return np.where(a < 1.0, inner, outer)


@dataclass(frozen=True)
class _Lattice:
    """Random node values on a regular lattice in world mm; evaluated by separable cubic B-splines.

    ``values`` has shape (n0, n1, n2); node (a, b, c) sits at ``origin + spacing * (a, b, c)``.
    """

    values: np.ndarray
    origin: np.ndarray
    spacing: float

    @classmethod
    def random(cls, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, spacing: float) -> _Lattice:
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


def _grid_axes(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World mm of voxel centres along each axis of a grid with a diagonal affine -> 3 float64 1D arrays."""
    return tuple(affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3))  # type: ignore[return-value]


def _fov_box_mm() -> tuple[np.ndarray, np.ndarray]:
    """World-mm corners of the BraTS field of view (fixed, whatever the spacing)."""
    corner_a = brats_affine((1.0, 1.0, 1.0)) @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_b = brats_affine((1.0, 1.0, 1.0)) @ np.array([239.5, 239.5, 154.5, 1.0])
    return np.minimum(corner_a, corner_b)[:3], np.maximum(corner_a, corner_b)[:3]


# --------------------------------------------------------------------------- anatomy warp


@dataclass(frozen=True)
class _Warp:
    """World (output, mm) -> template voxel mapping: ``linear @ p + offset + displacement(p)``.

    ``displacement`` holds three lattices (template voxel units = mm) for x, y, z.
    """

    linear: np.ndarray
    offset: np.ndarray
    displacement: tuple[_Lattice, _Lattice, _Lattice]


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation matrix from three uniform angles in [-max_deg, max_deg]."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_warp(rng: np.random.Generator, config: PhantomConfig, templates: _Templates) -> _Warp:
    """Random pose (rotation, per-axis scale, shift) and elastic field placing the template brain."""
    brats_centre = brats_affine((1.0, 1.0, 1.0)) @ np.array([*BRATS_BRAIN_CENTRE_VOXEL, 1.0])
    centre_world = brats_centre[:3] + rng.uniform(-4.0, 4.0, size=3)
    # world -> template mm: undo the size difference and the random per-case scale
    scale = 1.0 / (BRATS_TO_TEMPLATE_SIZE * (1.0 + rng.uniform(-config.scale_jitter, config.scale_jitter, size=3)))
    to_template_mm = _random_rotation(rng, config.rotation_deg) @ np.diag(scale)
    offset_mm = templates.centre_mm - to_template_mm @ centre_world
    to_voxel = templates.mm_to_voxel
    linear = to_voxel[:3, :3] @ to_template_mm
    offset = to_voxel[:3, :3] @ offset_mm + to_voxel[:3, 3]
    lo, hi = _fov_box_mm()
    # a ~30 mm lattice gives gyral-scale bends without tearing; amplitude in template voxels (= mm)
    displacement = tuple(
        _Lattice(values=lat.values * config.elastic_mm, origin=lat.origin, spacing=lat.spacing)
        for lat in (_Lattice.random(rng, lo, hi, 30.0) for _ in range(3))
    )
    return _Warp(linear=linear, offset=offset, displacement=displacement)  # type: ignore[arg-type]


def _template_coordinates(
    warp: _Warp, axes: tuple[np.ndarray, np.ndarray, np.ndarray], shift: tuple[np.ndarray, ...] | None = None
) -> np.ndarray:
    """Template voxel coordinates of every output voxel -> float32 array (3, len0, len1, len2).

    ``shift`` (three arrays of the grid shape, mm) moves the sampled world point, which is
    how the tumour's mass effect pushes tissue aside.
    """
    shape = tuple(len(a) for a in axes)
    coords = np.empty((3, *shape), dtype=np.float32)
    points = [_along(axes[a], a) if shift is None else _along(axes[a], a) - shift[a] for a in range(3)]
    for c, lattice in enumerate(warp.displacement):
        out = coords[c]
        out[...] = lattice.evaluate(axes) + np.float32(warp.offset[c])
        for a in range(3):
            out += np.float32(warp.linear[c, a]) * points[a]
    return coords


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """1D array -> float32 view shaped to broadcast along ``axis`` of a 3D grid."""
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``volume`` at ``coords`` (3, *S) -> float32 array S; zero outside."""
    return ndimage.map_coordinates(
        volume, coords, order=1, mode="constant", cval=0.0, prefilter=False, output=np.float32
    )


# --------------------------------------------------------------------------- tumour geometry


@dataclass(frozen=True)
class _Lesion:
    """One tumour focus in world mm; levels are in units of the core's ellipsoidal radius.

    A voxel at normalised radius ``r_eff`` (ellipsoid radius times a lobulating noise
    factor) is core if ``r_eff < 1``, necrotic/non-enhancing if also ``r_eff < necrosis_level``
    (when ``enhancing``), and oedema if its own noisy radius is below ``oedema_level``.
    """

    centre: np.ndarray
    rotation: np.ndarray
    radii: np.ndarray
    necrosis_level: float
    oedema_level: float
    lobulation: float
    oedema_lobulation: float
    enhancing: bool
    fluid_fraction: float
    enhancing_focus_mm: float
    mass_effect: float
    field_seed: int

    @property
    def core_extent_mm(self) -> float:
        """Largest distance from the centre a core voxel can have."""
        return float(self.radii.max() / (1.0 - self.lobulation))

    @property
    def extent_mm(self) -> float:
        """Largest distance from the centre any labelled voxel can have (core or oedema)."""
        oedema_reach = self.oedema_level / (1.0 - self.oedema_lobulation)
        return float(self.radii.max() * max(1.0 / (1.0 - self.lobulation), oedema_reach))


def _draw_kind(rng: np.random.Generator, config: PhantomConfig) -> str:
    names = [k for k in KINDS if config.kind_weights.get(k, 0.0) > 0]
    weights = np.array([config.kind_weights[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# Ranges (uniform) of one focus per lesion style. radius: core radius in mm; necrosis and
# oedema: levels in units of the core radius (see _Lesion); fluid: how necrotic (vs solid)
# label-1 tissue looks; mass: mass-effect strength. "focus" is one lesion of a multifocal case.
LESION_STYLES: dict[str, dict[str, tuple[float, float]]] = {
    "glioblastoma": {
        "radius": (14, 30), "necrosis": (0.45, 0.8), "oedema": (1.4, 2.3), "fluid": (0.6, 0.95), "mass": (0.2, 0.45)
    },
    "low-grade": {
        "radius": (12, 26), "necrosis": (1.0, 1.0), "oedema": (1.15, 1.5), "fluid": (0.0, 0.2), "mass": (0.1, 0.25)
    },
    "small-enhancing": {
        "radius": (4, 9), "necrosis": (0.25, 0.5), "oedema": (2.0, 3.5), "fluid": (0.6, 0.95), "mass": (0.05, 0.2)
    },
    "focus": {
        "radius": (6, 13), "necrosis": (0.3, 0.6), "oedema": (1.3, 1.8), "fluid": (0.5, 0.95), "mass": (0.1, 0.3)
    },
}


def _draw_lesion_shape(rng: np.random.Generator, style: str, min_radius: float) -> dict:
    """Size, nesting levels and appearance of one focus of the given style (``_Lesion`` fields)."""
    ranges = LESION_STYLES[style]
    draw = {name: float(rng.uniform(*bounds)) for name, bounds in ranges.items()}
    enhancing = style != "low-grade"
    necrosis = draw["necrosis"]
    if style == "small-enhancing" and rng.random() < 0.5:
        necrosis = 0.0  # a solid enhancing nodule without necrosis
    # low-grade lesions sometimes carry a tiny enhancing focus ("little or no ET")
    focus = float(rng.uniform(2.0, 4.0)) if style == "low-grade" and rng.random() < 0.3 else 0.0
    return {
        "radii": max(draw["radius"], min_radius) * rng.uniform(0.75, 1.25, size=3),
        "necrosis_level": necrosis,
        "oedema_level": draw["oedema"],
        "lobulation": float(rng.uniform(0.15, 0.35)),
        "oedema_lobulation": float(rng.uniform(0.15, 0.35)),
        "enhancing": enhancing,
        "fluid_fraction": draw["fluid"],
        "enhancing_focus_mm": focus,
        "mass_effect": draw["mass"],
    }


def _plan_lesions(
    rng: np.random.Generator,
    kind: str,
    candidates: np.ndarray,
    depth_mm: np.ndarray,
    min_radius: float,
    separation_margin: float,
) -> list[_Lesion]:
    """Choose size and position of each focus of a ``kind`` tumour.

    Args:
        candidates: (N, 3) world-mm points in supratentorial white matter.
        depth_mm: (N,) distance of each candidate to the brain surface.
        min_radius: smallest core radius in mm (so a core is never thinner than a voxel).
        separation_margin: extra gap in mm between the labelled extents of two foci, so
            multifocal lesions stay separate connected components.
    """
    styles = {"multifocal": ["focus"] * int(rng.integers(2, 4))}.get(kind, [kind])
    lesions: list[_Lesion] = []
    for style in styles:
        params = _draw_lesion_shape(rng, style, min_radius)
        for _attempt in range(12):
            trial = _Lesion(centre=np.zeros(3), rotation=np.eye(3), field_seed=0, **params)
            # a core may touch the brain surface a little (cortical tumours) but not leave it
            ok = depth_mm >= min(0.7 * trial.core_extent_mm, float(depth_mm.max()) * 0.8)
            for other in lesions:
                gap = np.linalg.norm(candidates - other.centre, axis=1)
                ok &= gap > trial.extent_mm + other.extent_mm + separation_margin
            if ok.any():
                break
            params["radii"] = np.maximum(params["radii"] * 0.8, min_radius)  # shrink until the focus fits
        if not ok.any():
            if not lesions:
                raise RuntimeError("no white-matter position left for a tumour; the brain warp is degenerate")
            break  # keep the foci placed so far
        centre = candidates[rng.choice(np.flatnonzero(ok))] + rng.uniform(-1.5, 1.5, size=3)
        lesions.append(
            _Lesion(
                centre=centre,
                rotation=_random_rotation(rng, 180.0),
                field_seed=int(rng.integers(2**63)),
                **params,
            )
        )
    return lesions


def _lesion_box(lesion: _Lesion, axes: tuple[np.ndarray, ...], reach_mm: float) -> tuple[slice, slice, slice]:
    """Index ranges of ``axes`` within ``reach_mm`` of the lesion centre along each axis."""
    slices = []
    for a in range(3):
        inside = np.flatnonzero(np.abs(axes[a] - lesion.centre[a]) <= reach_mm)
        slices.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return tuple(slices)  # type: ignore[return-value]


def _mass_effect_shift(lesions: list[_Lesion], axes: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Radial displacement (mm) that makes tissue appear pushed away from each lesion centre.

    The sampled point moves towards the centre by ``k * d * exp(-(d/w)^2)``; for k < 1 the
    radial map stays monotonic, so tissue is compressed around the lesion, never folded.
    -> three float32 arrays of the grid shape.
    """
    shape = tuple(len(a) for a in axes)
    shift = tuple(np.zeros(shape, dtype=np.float32) for _ in range(3))
    for lesion in lesions:
        width = 1.5 * lesion.core_extent_mm
        box = _lesion_box(lesion, axes, 2.5 * width)
        rel = [_along(axes[a][box[a]] - lesion.centre[a], a) for a in range(3)]
        distance2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
        factor = np.float32(lesion.mass_effect) * np.exp(-distance2 / np.float32(width**2))
        for a in range(3):
            shift[a][box] += factor * rel[a]
    return shift


@dataclass
class _TumourMaps:
    """Per-voxel tumour description on the working grid (all arrays the grid shape).

    labels: uint8 BraTS labels; oedema_strength: 0..1 how strongly oedema changes the
    tissue signal; fluid: 0..1 how fluid-like (necrotic) a label-1 voxel looks;
    texture: smooth zero-mean field for tumour heterogeneity.
    """

    labels: np.ndarray
    oedema_strength: np.ndarray
    fluid: np.ndarray
    texture: np.ndarray


def _rasterise_lesions(
    lesions: list[_Lesion], axes: tuple[np.ndarray, ...], brain: np.ndarray, wm: np.ndarray, csf: np.ndarray
) -> _TumourMaps:
    """Draw all lesions onto the grid given by ``axes``; ``brain``, ``wm``, ``csf`` have its shape."""
    shape = brain.shape
    maps = _TumourMaps(
        labels=np.zeros(shape, dtype=np.uint8),
        oedema_strength=np.zeros(shape, dtype=np.float32),
        fluid=np.zeros(shape, dtype=np.float32),
        texture=np.zeros(shape, dtype=np.float32),
    )
    for lesion in lesions:
        _rasterise_one(lesion, axes, brain, wm, csf, maps)
    return maps


def _rasterise_one(
    lesion: _Lesion, axes: tuple[np.ndarray, ...], brain: np.ndarray, wm: np.ndarray, csf: np.ndarray, maps: _TumourMaps
) -> None:
    """Add one lesion to ``maps`` (in place), inside the box that can hold its labels."""
    box = _lesion_box(lesion, axes, lesion.extent_mm + 1.0)
    local_axes = tuple(axes[a][box[a]] for a in range(3))
    if min(len(a) for a in local_axes) == 0:
        return
    rng = np.random.default_rng(lesion.field_seed)
    lo, hi = lesion.centre - lesion.extent_mm, lesion.centre + lesion.extent_mm
    mean_radius = float(lesion.radii.mean())
    shape_noise = np.tanh(_Lattice.random(rng, lo, hi, max(0.5 * mean_radius, 3.0)).evaluate(local_axes))
    texture = np.tanh(_Lattice.random(rng, lo, hi, 4.0).evaluate(local_axes))
    oedema_noise = np.tanh(_Lattice.random(rng, lo, hi, max(0.8 * mean_radius, 5.0)).evaluate(local_axes))

    # ellipsoidal radius in the lesion's own rotated frame
    rel = [_along(local_axes[a] - lesion.centre[a], a) for a in range(3)]
    r2 = np.zeros(shape_noise.shape, dtype=np.float32)
    for b in range(3):
        u = sum(np.float32(lesion.rotation[a, b]) * rel[a] for a in range(3))
        r2 += (u / np.float32(lesion.radii[b])) ** 2
    radius = np.sqrt(r2)
    r_core = radius * (1.0 + np.float32(lesion.lobulation) * shape_noise)
    r_oedema = radius * (1.0 + np.float32(lesion.oedema_lobulation) * oedema_noise)

    in_brain = brain[box]
    free = maps.labels[box] == 0  # never overwrite another focus
    core = (r_core < 1.0) & in_brain & free
    # oedema spreads along white matter and stays out of CSF spaces
    oedema_level = np.float32(lesion.oedema_level) * (0.55 + 0.45 * wm[box])
    oedema = (r_oedema < oedema_level) & in_brain & free & (csf[box] < 0.5) & ~core
    if lesion.enhancing:
        # rim thickness varies around the lesion (nodular enhancement)
        necrotic = core & (r_core < np.float32(lesion.necrosis_level) * (1.0 + 0.3 * texture))
        enhancing = core & ~necrotic
    else:
        necrotic = core.copy()
        enhancing = np.zeros_like(core)
        if lesion.enhancing_focus_mm > 0:
            focus = core & (radius * float(lesion.radii.mean()) < lesion.enhancing_focus_mm)
            enhancing |= focus
            necrotic &= ~focus

    labels = maps.labels[box]
    labels[oedema] = ED
    labels[necrotic] = NCR
    labels[enhancing] = ET
    strength = np.clip((oedema_level - r_oedema) / (0.5 * oedema_level), 0.0, 1.0)
    maps.oedema_strength[box][oedema] = (0.25 + 0.75 * strength)[oedema]
    maps.fluid[box][necrotic] = np.clip(lesion.fluid_fraction + 0.35 * texture, 0.0, 1.0)[necrotic]
    tumour = oedema | core
    maps.texture[box][tumour] = texture[tumour]


# --------------------------------------------------------------------------- intensities


@dataclass(frozen=True)
class _Contrast:
    """Per-case tissue means (relative to white matter) and scanner settings for one modality."""

    means: dict[str, float]
    gain: float
    noise_sigma: float
    bias: _Lattice
    bias_strength: float
    texture: _Lattice
    hyperintensity: float
    hyperintensity_field: _Lattice


def _draw_contrast(rng: np.random.Generator, config: PhantomConfig) -> dict[str, _Contrast]:
    """Per-case, per-modality contrast: jittered tissue means, gain, noise, bias and texture fields."""
    lo, hi = _fov_box_mm()
    # white-matter hyperintensities sit at the same places on T2 and FLAIR
    hyperintensity_field = _Lattice.random(rng, lo, hi, 7.0)
    hyperintensity = float(rng.uniform(0.0, 0.9))
    contrasts = {}
    for m, modality in enumerate(MODALITIES):
        # ±6 % per normal tissue keeps their order but shifts overlaps from case to case;
        # tumour appearance varies more between patients (±10 %)
        means = {
            tissue: values[m] * float(np.exp((0.06 if tissue in ("csf", "gm") else 0.10) * rng.standard_normal()))
            for tissue, values in TISSUE_CONTRAST.items()
        }
        means["wm"] = 1.0
        if modality == "t1ce":
            means["enhancing"] = float(rng.uniform(1.3, 1.85))
        gain = float(rng.uniform(300.0, 1200.0))
        contrasts[modality] = _Contrast(
            means=means,
            gain=gain,
            noise_sigma=config.noise_fraction * float(rng.uniform(0.7, 1.3)) / math.sqrt(math.prod(config.voxel_size)),
            bias=_Lattice.random(rng, lo, hi, 90.0),
            bias_strength=config.bias_strength * float(rng.uniform(0.5, 1.0)),
            texture=_Lattice.random(rng, lo, hi, 6.0),
            hyperintensity=hyperintensity * (0.6 if modality == "t2" else 1.0),
            hyperintensity_field=hyperintensity_field,
        )
    return contrasts


def _synthesise(
    contrast: _Contrast,
    modality: str,
    fractions: dict[str, np.ndarray],
    tumour: _TumourMaps,
    axes: tuple[np.ndarray, ...],
    brain: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One modality on the working grid -> int16 array, zero outside ``brain``.

    ``fractions`` maps "csf", "gm", "wm" to partial-volume fractions (float32, grid shape).
    """
    mu = contrast.means
    image = fractions["wm"] * mu["wm"] + fractions["gm"] * mu["gm"] + fractions["csf"] * mu["csf"]
    texture = contrast.texture.evaluate(axes)
    image *= 1.0 + 0.04 * texture
    if modality == "t1ce":
        # enhancing vessels in sulci and cisterns: bright spots that are not tumour
        image += 1.5 * fractions["csf"] * np.clip(texture - 1.2, 0.0, None)
    if modality in ("t2", "flair"):
        # patchy white-matter hyperintensities (small-vessel disease, common at glioma age):
        # bright on T2/FLAIR like oedema but not tumour, so a FLAIR threshold is not enough
        patches = np.clip(contrast.hyperintensity_field.evaluate(axes) - 1.0, 0.0, None)
        image += contrast.hyperintensity * fractions["wm"] * patches

    labels = tumour.labels
    heterogeneity = 1.0 + 0.15 * tumour.texture
    oedema = labels == ED
    s = tumour.oedema_strength[oedema]
    image[oedema] = (1.0 - s) * image[oedema] + s * mu["oedema"] * heterogeneity[oedema]
    core = labels == NCR
    w = tumour.fluid[core]
    image[core] = (w * mu["necrosis"] + (1.0 - w) * mu["solid"]) * heterogeneity[core]
    enhancing = labels == ET
    # enhancement is patchy: stronger texture than elsewhere in the tumour
    image[enhancing] = mu["enhancing"] * (1.0 + 0.25 * tumour.texture[enhancing])

    # scanner point-spread: a fraction of a voxel, in every axis
    image = ndimage.gaussian_filter(image, sigma=0.5, mode="nearest")
    image *= np.exp(np.float32(contrast.bias_strength) * contrast.bias.evaluate(axes))
    image *= np.float32(contrast.gain)

    # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
    values = image[brain]
    sigma = np.float32(contrast.noise_sigma * contrast.gain)
    real = values + sigma * rng.standard_normal(values.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(values.shape, dtype=np.float32)
    out = np.zeros(brain.shape, dtype=np.int16)
    # skull-stripped BraTS images are zero outside the brain; keep brain voxels >= 1
    out[brain] = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 1, np.iinfo(np.int16).max).astype(np.int16)
    return out


# --------------------------------------------------------------------------- one phantom


def _coarse_survey(
    warp: _Warp, templates: _Templates
) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Warp the brain onto a 4 mm grid to find its extent and the candidate tumour centres.

    Returns the coarse grid ``axes``, the brain mask (bool, coarse shape), the candidate
    centres (N, 3 world mm) and their depth below the brain surface (N,) in mm.
    """
    coarse_shape = tuple(int(math.ceil(fov / COARSE_SPACING_MM)) for fov in BRATS_FOV_MM)
    axes = _grid_axes(brats_affine((COARSE_SPACING_MM,) * 3), coarse_shape)
    coords = _template_coordinates(warp, axes)
    brain = _sample(templates.mask, coords) > 0.5
    wm = _sample(templates.wm, coords)
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

    templates = _templates_for(_rounded_voxel_size(config))
    shape, voxel_size, affine = config.grid_shape, config.voxel_size, config.affine
    warp = _draw_warp(anatomy_rng, config, templates)
    contrasts = _draw_contrast(contrast_rng, config)

    # the survey uses the unblurred templates so that tumour positions do not depend on the grid
    coarse_axes, coarse_brain, candidates, depth = _coarse_survey(warp, _load_raw_templates())
    kind = _draw_kind(tumour_rng, config)
    lesions = _plan_lesions(
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
    full_axes = _grid_axes(affine, shape)
    lesions = [_snap_to_voxel(lesion, full_axes) for lesion in lesions]

    box = _working_box(coarse_axes, coarse_brain, config)
    axes = tuple(full_axes[a][box[a]] for a in range(3))
    coords = _template_coordinates(warp, axes, shift=_mass_effect_shift(lesions, axes))
    mask, gm, wm = _sample_tissues(templates, coords)
    del coords
    brain = mask > 0.5
    csf = np.clip(mask - gm - wm, 0.0, None)
    fractions = {"gm": gm, "wm": wm, "csf": csf}
    tumour = _rasterise_lesions(lesions, axes, brain, wm, csf)

    images = {}
    for modality in MODALITIES:
        local = _synthesise(contrasts[modality], modality, fractions, tumour, axes, brain, noise_rng)
        images[modality] = _embed(local, box, shape, np.int16)
    tissue_local = _dominant_tissue(brain, csf, gm, wm)
    return Phantom(
        images=images,
        labels=_embed(tumour.labels, box, shape, np.uint8),
        affine=affine,
        kind=kind,
        brain_mask=_embed(brain, box, shape, np.bool_),
        tissue=_embed(tissue_local, box, shape, np.uint8),
    )


def _sample_tissues(templates: _Templates, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, GM and WM fractions at ``coords`` (3, *S) -> three float32 arrays S.

    GM and WM are only sampled where the mask is non-zero: they are zero wherever it is
    (the maps were multiplied by the mask), and skipping the rest halves the work at 1 mm.
    """
    mask = _sample(templates.mask, coords)
    inside = mask > 0
    points = coords[:, inside]
    fractions = []
    for volume in (templates.gm, templates.wm):
        full = np.zeros_like(mask)
        full[inside] = _sample(volume, points)
        fractions.append(full)
    return mask, fractions[0], fractions[1]


def _dominant_tissue(brain: np.ndarray, csf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """uint8 map of the largest tissue fraction: 1 CSF, 2 GM, 3 WM, 0 outside ``brain``."""
    tissue = np.where((wm >= gm) & (wm >= csf), WM, np.where(gm >= csf, GM, CSF)).astype(np.uint8)
    tissue[~brain] = 0
    return tissue


def _snap_to_voxel(lesion: _Lesion, axes: tuple[np.ndarray, ...]) -> _Lesion:
    centre = np.array([axes[a][np.argmin(np.abs(axes[a] - lesion.centre[a]))] for a in range(3)])
    return dataclasses.replace(lesion, centre=centre)


def _embed(local: np.ndarray, box: tuple[slice, ...], shape: tuple[int, int, int], dtype: type) -> np.ndarray:
    """Place the working-box array into a zero array of the full grid ``shape``."""
    out = np.zeros(shape, dtype=dtype)
    out[box] = local
    return out


# --------------------------------------------------------------------------- writing datasets


def case_id(index: int) -> str:
    """Case id of the ``index``-th phantom, e.g. ``Phantom_00007``."""
    return f"Phantom_{index:05d}"


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset made with ``seed``; independent of the dataset size."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0])


def case_files(out_dir: Path, cid: str, layout: str) -> dict[str, Path]:
    """Where each volume of a case goes: keys are the modalities and ``"seg"``."""
    if layout == "brats2021":
        folder = out_dir / cid
        return {name: folder / f"{cid}_{name}.nii.gz" for name in (*MODALITIES, "seg")}
    if layout == "nnunet":
        files = {m: out_dir / "imagesTr" / f"{cid}_{c:04d}.nii.gz" for c, m in enumerate(MODALITIES)}
        files["seg"] = out_dir / "labelsTr" / f"{cid}.nii.gz"
        return files
    raise DistillError(f"unknown phantom layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def nnunet_dataset_json(n_cases: int, seed: int, config: PhantomConfig) -> dict:
    """nnU-Net v2 ``dataset.json`` for region-based BraTS training on the phantoms."""
    size = "x".join(str(n) for n in config.grid_shape)
    return {
        "name": "DistillPhantoms",
        "description": f"BraTS-like synthetic phantoms, seed {seed}, grid {size}",
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
        "regions_class_order": [1, 2, 3],
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }


def _write_case(phantom: Phantom, files: dict[str, Path], layout: str) -> None:
    """Write images first and the label map last, each atomically."""
    for modality in MODALITIES:
        write_nifti(files[modality], phantom.images[modality], phantom.affine)
    labels = phantom.labels
    if layout == "nnunet":
        labels = get_convention("brats2017").convert_to(labels, get_convention("nnunet"))
    write_nifti(files["seg"], labels, phantom.affine)


def _refuse_foreign_nnunet_cases(out_dir: Path, ids: tuple[str, ...]) -> None:
    """nnU-Net needs numTraining to match labelsTr; refuse folders holding other cases."""
    labels_dir = out_dir / "labelsTr"
    if not labels_dir.is_dir():
        return
    expected = {f"{cid}.nii.gz" for cid in ids}
    foreign = sorted(p.name for p in labels_dir.glob("*.nii.gz") if p.name not in expected)
    if foreign:
        raise DistillError(
            f"{labels_dir}: holds {len(foreign)} label file(s) this run would not write (e.g. {foreign[0]}); "
            "write the phantoms into an empty folder or ask for at least as many cases"
        )


def write_phantoms(
    out_dir: Path,
    n_cases: int,
    seed: int,
    config: PhantomConfig | None = None,
    layout: str = "brats2021",
    progress: bool = True,
) -> PhantomResult:
    """Generate ``n_cases`` phantoms into ``out_dir`` in BraTS 2021 or nnU-Net raw layout.

    * ``brats2021``: ``out_dir/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1/2/4.
    * ``nnunet``: ``imagesTr/<id>_0000..0003.nii.gz`` (T1, T1ce, T2, FLAIR),
      ``labelsTr/<id>.nii.gz`` in nnU-Net's BraTS numbering (1 ED, 2 NCR, 3 ET) and
      ``dataset.json`` for region training, written last.

    Case ``k`` uses :func:`case_seed` ``(seed, k)``, so it is the same whatever ``n_cases``.
    Cases whose files all exist are skipped, so an interrupted run can be resumed; the
    files are not checked against ``seed`` or ``config``, so resume with the same settings.
    """
    config = config or PhantomConfig()
    out_dir = Path(out_dir)
    if n_cases < 0:
        raise DistillError(f"number of phantom cases must be non-negative, got {n_cases}")
    if seed < 0:
        raise DistillError(f"phantom seed must be non-negative, got {seed}")
    case_files(out_dir, case_id(0), layout)  # validates the layout before any work
    ids = tuple(case_id(i) for i in range(n_cases))
    if layout == "nnunet":
        _refuse_foreign_nnunet_cases(out_dir, ids)

    written, skipped, seconds = [], [], 0.0
    for index in tqdm(range(n_cases), desc="phantoms", unit="case", disable=not progress):
        cid = ids[index]
        files = case_files(out_dir, cid, layout)
        if all(path.is_file() for path in files.values()):
            skipped.append(cid)
            continue
        start = time.perf_counter()
        _write_case(make_phantom(case_seed(seed, index), config), files, layout)
        seconds += time.perf_counter() - start
        written.append(cid)

    if layout == "nnunet":
        atomic_write_json(out_dir / "dataset.json", nnunet_dataset_json(n_cases, seed, config))
    return PhantomResult(
        out_dir=out_dir,
        layout=layout,
        case_ids=ids,
        written=tuple(written),
        skipped=tuple(skipped),
        seconds_per_case=seconds / len(written) if written else None,
    )
