"""Intensity model: per-case tissue contrast, tumour appearance, bias field, blur and Rician noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from distill.data.phantoms.config import ED, ET, MODALITIES, NCR, PhantomConfig
from distill.data.phantoms.fields import Lattice, fov_box_mm
from distill.data.phantoms.tumour import TumourMaps

# Mean intensity of each tissue class relative to normal white matter, per modality
# (t1, t1ce, t2, flair). Ratios follow typical 1.5/3 T glioma MRI and the label-wise
# medians of BraTS 2018 cases: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR suppresses CSF
# and shows oedema bright; necrosis is fluid-like (dark T1/T1ce, bright T2); the
# non-enhancing solid tumour of low-grade lesions is T2/FLAIR bright without enhancement.
# The enhancing tumour's T1ce value is drawn per case (see draw_contrast).
TISSUE_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "csf": (0.33, 0.36, 2.60, 0.30),
    "gm": (0.74, 0.76, 1.35, 1.18),
    "wm": (1.00, 1.00, 1.00, 1.00),
    "oedema": (0.80, 0.82, 1.90, 1.75),
    "necrosis": (0.45, 0.42, 2.30, 1.15),
    "solid": (0.70, 0.72, 1.75, 1.55),
    "enhancing": (0.80, 1.55, 1.60, 1.45),
}


@dataclass(frozen=True)
class Contrast:
    """Per-case tissue means (relative to white matter) and scanner settings for one modality."""

    means: dict[str, float]
    gain: float
    noise_sigma: float
    bias: Lattice
    bias_strength: float
    texture: Lattice
    hyperintensity: float
    hyperintensity_field: Lattice


def draw_contrast(rng: np.random.Generator, config: PhantomConfig) -> dict[str, Contrast]:
    """Per-case, per-modality contrast: jittered tissue means, gain, noise, bias and texture fields."""
    lo, hi = fov_box_mm()
    # white-matter hyperintensities sit at the same places on T2 and FLAIR
    hyperintensity_field = Lattice.random(rng, lo, hi, 7.0)
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
        contrasts[modality] = Contrast(
            means=means,
            gain=gain,
            noise_sigma=config.noise_fraction * float(rng.uniform(0.7, 1.3)) / math.sqrt(math.prod(config.voxel_size)),
            bias=Lattice.random(rng, lo, hi, 90.0),
            bias_strength=config.bias_strength * float(rng.uniform(0.5, 1.0)),
            texture=Lattice.random(rng, lo, hi, 6.0),
            hyperintensity=hyperintensity * (0.6 if modality == "t2" else 1.0),
            hyperintensity_field=hyperintensity_field,
        )
    return contrasts


def synthesise(
    contrast: Contrast,
    modality: str,
    fractions: dict[str, np.ndarray],
    tumour: TumourMaps,
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
