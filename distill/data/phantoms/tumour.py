"""Tumour geometry: lesion kinds, sizes and positions, mass effect, and nested label maps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from distill.data.phantoms.config import ED, ET, KINDS, NCR, PhantomConfig
from distill.data.phantoms.fields import Lattice, along, random_rotation


@dataclass(frozen=True)
class Lesion:
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


def draw_kind(rng: np.random.Generator, config: PhantomConfig) -> str:
    names = [k for k in KINDS if config.kind_weights.get(k, 0.0) > 0]
    weights = np.array([config.kind_weights[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# Ranges (uniform) of one focus per lesion style. radius: core radius in mm; necrosis and
# oedema: levels in units of the core radius (see Lesion); fluid: how necrotic (vs solid)
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
    """Size, nesting levels and appearance of one focus of the given style (``Lesion`` fields)."""
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


def plan_lesions(
    rng: np.random.Generator,
    kind: str,
    candidates: np.ndarray,
    depth_mm: np.ndarray,
    min_radius: float,
    separation_margin: float,
) -> list[Lesion]:
    """Choose size and position of each focus of a ``kind`` tumour.

    Args:
        candidates: (N, 3) world-mm points in supratentorial white matter.
        depth_mm: (N,) distance of each candidate to the brain surface.
        min_radius: smallest core radius in mm (so a core is never thinner than a voxel).
        separation_margin: extra gap in mm between the labelled extents of two foci, so
            multifocal lesions stay separate connected components.
    """
    styles = {"multifocal": ["focus"] * int(rng.integers(2, 4))}.get(kind, [kind])
    lesions: list[Lesion] = []
    for style in styles:
        params = _draw_lesion_shape(rng, style, min_radius)
        for _attempt in range(12):
            trial = Lesion(centre=np.zeros(3), rotation=np.eye(3), field_seed=0, **params)
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
            Lesion(
                centre=centre,
                rotation=random_rotation(rng, 180.0),
                field_seed=int(rng.integers(2**63)),
                **params,
            )
        )
    return lesions


def _lesion_box(lesion: Lesion, axes: tuple[np.ndarray, ...], reach_mm: float) -> tuple[slice, slice, slice]:
    """Index ranges of ``axes`` within ``reach_mm`` of the lesion centre along each axis."""
    slices = []
    for a in range(3):
        inside = np.flatnonzero(np.abs(axes[a] - lesion.centre[a]) <= reach_mm)
        slices.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return tuple(slices)  # type: ignore[return-value]


def mass_effect_shift(lesions: list[Lesion], axes: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
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
        rel = [along(axes[a][box[a]] - lesion.centre[a], a) for a in range(3)]
        distance2 = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2
        factor = np.float32(lesion.mass_effect) * np.exp(-distance2 / np.float32(width**2))
        for a in range(3):
            shift[a][box] += factor * rel[a]
    return shift


@dataclass
class TumourMaps:
    """Per-voxel tumour description on the working grid (all arrays the grid shape).

    labels: uint8 BraTS labels; oedema_strength: 0..1 how strongly oedema changes the
    tissue signal; fluid: 0..1 how fluid-like (necrotic) a label-1 voxel looks;
    texture: smooth zero-mean field for tumour heterogeneity.
    """

    labels: np.ndarray
    oedema_strength: np.ndarray
    fluid: np.ndarray
    texture: np.ndarray


def rasterise_lesions(
    lesions: list[Lesion], axes: tuple[np.ndarray, ...], brain: np.ndarray, wm: np.ndarray, csf: np.ndarray
) -> TumourMaps:
    """Draw all lesions onto the grid given by ``axes``; ``brain``, ``wm``, ``csf`` have its shape."""
    shape = brain.shape
    maps = TumourMaps(
        labels=np.zeros(shape, dtype=np.uint8),
        oedema_strength=np.zeros(shape, dtype=np.float32),
        fluid=np.zeros(shape, dtype=np.float32),
        texture=np.zeros(shape, dtype=np.float32),
    )
    for lesion in lesions:
        _rasterise_one(lesion, axes, brain, wm, csf, maps)
    return maps


def _rasterise_one(
    lesion: Lesion, axes: tuple[np.ndarray, ...], brain: np.ndarray, wm: np.ndarray, csf: np.ndarray, maps: TumourMaps
) -> None:
    """Add one lesion to ``maps`` (in place), inside the box that can hold its labels."""
    box = _lesion_box(lesion, axes, lesion.extent_mm + 1.0)
    local_axes = tuple(axes[a][box[a]] for a in range(3))
    if min(len(a) for a in local_axes) == 0:
        return
    rng = np.random.default_rng(lesion.field_seed)
    lo, hi = lesion.centre - lesion.extent_mm, lesion.centre + lesion.extent_mm
    mean_radius = float(lesion.radii.mean())
    shape_noise = np.tanh(Lattice.random(rng, lo, hi, max(0.5 * mean_radius, 3.0)).evaluate(local_axes))
    texture = np.tanh(Lattice.random(rng, lo, hi, 4.0).evaluate(local_axes))
    oedema_noise = np.tanh(Lattice.random(rng, lo, hi, max(0.8 * mean_radius, 5.0)).evaluate(local_axes))

    # ellipsoidal radius in the lesion's own rotated frame
    rel = [along(local_axes[a] - lesion.centre[a], a) for a in range(3)]
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


def snap_to_voxel(lesion: Lesion, axes: tuple[np.ndarray, ...]) -> Lesion:
    centre = np.array([axes[a][np.argmin(np.abs(axes[a] - lesion.centre[a]))] for a in range(3)])
    return dataclasses.replace(lesion, centre=centre)
