"""Strong intensity augmentation of training patches: nnU-Net v2's default intensity transforms.

The sampler's light augmentation (flips, a per-channel scale in [0.9, 1.1] and shift in
[-0.1, 0.1]) leaves a student close to the cases it was given. ``augment="strong"`` adds,
after it, the intensity part of nnU-Net v2's default training pipeline
(``nnUNetTrainer.get_training_transforms``), with its probabilities and ranges:

====================  ===========  ==============================================================
transform             probability  what it does (per channel unless said)
====================  ===========  ==============================================================
Gaussian noise        0.1          add N(0, σ²), one σ in [0, 0.1] for all channels (nnU-Net
                                   calls the range ``noise_variance`` but draws the sd from it)
Gaussian blur         0.2          each channel with p 0.5: σ in [0.5, 1] voxels, drawn per axis
brightness            0.15         multiply by m in [0.75, 1.25]
contrast              0.15         scale around the mean by c in [0.75, 1.25], clipped to the
                                   channel's former range
low resolution        0.25         each channel with p 0.5: down to a zoom in [0.5, 1]
                                   (nearest), back up (linear)
gamma, inverted       0.1          γ in [0.7, 1.5] on the negated channel, mean and std kept
gamma                 0.3          γ in [0.7, 1.5], mean and std kept
====================  ===========  ==============================================================

Multipliers, contrast factors and γ are drawn as nnU-Net's ``BGContrast`` draws them: half
of the time below 1, half above, so shrinking and stretching are equally frequent whatever
the range's asymmetry. As nnU-Net does for datasets normalised inside the brain mask
(``use_mask_for_norm``, its ``MaskImageTransform``), voxels outside the brain are given back
their values from before these transforms, so neither network sees noisy or re-contrasted
background. Two differences remain: contrast and gamma take their statistics from the patch
(48³, or the live teacher's box with its context) rather than nnU-Net's larger training patch,
and the spatial part of nnU-Net's pipeline (rotations, scaling, elastic deformation) is left
out: each would have to resample the teacher maps and labels too.

Why it matters for distillation: with a teacher run live on the same augmented patch, the
student is taught the teacher's answer to inputs neither was trained on ("consistent
teaching", Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
CVPR 2022), which a cache of maps of the unaugmented volumes cannot give. Intensity changes
leave geometry alone, so the labels stay exact.

All functions take and return ``(C, X, Y, Z)`` float32 arrays and draw from the generator they
are given, so a seeded sampler stays reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AUGMENTATIONS = ("light", "strong")


def two_sided(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor in ``[low, high]``: uniform in ``[low, 1)`` or ``[1, high]`` with probability 1/2 each."""
    return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, max_sigma: float = 0.1) -> np.ndarray:
    """``images + N(0, σ²)`` with one ``σ ~ U[0, max_sigma]`` for the whole patch (every channel)."""
    sigma = rng.uniform(0.0, max_sigma)
    return (images + rng.normal(0.0, sigma, size=images.shape)).astype(np.float32)


def gaussian_blur(images: np.ndarray, rng: np.random.Generator, sigma=(0.5, 1.0),
                  p_per_channel: float = 0.5) -> np.ndarray:  # fmt: skip
    """Each channel, with probability ``p_per_channel``, smoothed with a σ (voxels) in ``sigma``
    drawn for each axis."""
    out = images.copy()
    for c in range(images.shape[0]):
        if rng.random() < p_per_channel:
            sigmas = [rng.uniform(*sigma) for _ in range(images.ndim - 1)]
            out[c] = ndimage.gaussian_filter(images[c], sigma=sigmas, mode="nearest")
    return out


def brightness(images: np.ndarray, rng: np.random.Generator, multiplier=(0.75, 1.25)) -> np.ndarray:
    """Each channel multiplied by its own two-sided factor in ``multiplier``."""
    factors = np.array([two_sided(rng, *multiplier) for _ in range(images.shape[0])], dtype=np.float32)
    return images * factors[:, None, None, None]


def contrast(images: np.ndarray, rng: np.random.Generator, factor=(0.75, 1.25)) -> np.ndarray:
    """Each channel's deviation from its mean scaled by a two-sided factor, clipped to its former range."""
    out = np.empty_like(images)
    for c in range(images.shape[0]):
        channel = images[c]
        mean, low, high = channel.mean(), channel.min(), channel.max()
        out[c] = np.clip((channel - mean) * two_sided(rng, *factor) + mean, low, high)
    return out


def low_resolution(images: np.ndarray, rng: np.random.Generator, zoom=(0.5, 1.0),
                   p_per_channel: float = 0.5) -> np.ndarray:  # fmt: skip
    """Each channel, with probability ``p_per_channel``: nearest-neighbour down to ``zoom`` of its
    size, then linear back up, as a scan acquired at a coarser resolution."""
    out = images.copy()
    shape = np.array(images.shape[1:])
    for c in range(images.shape[0]):
        if rng.random() >= p_per_channel:
            continue
        small = np.maximum(np.round(shape * rng.uniform(*zoom)).astype(int), 1)
        coarse = ndimage.zoom(images[c], small / shape, order=0, mode="nearest", grid_mode=True)
        out[c] = ndimage.zoom(coarse, shape / np.array(coarse.shape), order=1, mode="nearest", grid_mode=True)
    return out


def gamma(images: np.ndarray, rng: np.random.Generator, gamma_range=(0.7, 1.5), invert: bool = False) -> np.ndarray:
    """Each channel rescaled to [0, 1], raised to a two-sided γ, rescaled back, with its mean and
    standard deviation restored; ``invert`` applies it to the negated channel (and negates back)."""
    sign = -1.0 if invert else 1.0
    out = np.empty_like(images)
    for c in range(images.shape[0]):
        channel = sign * images[c]
        mean, std, low, high = channel.mean(), channel.std(), channel.min(), channel.max()
        span = high - low
        if span <= 0:  # a constant channel has no contrast to change
            out[c] = images[c]
            continue
        changed = ((channel - low) / span) ** two_sided(rng, *gamma_range) * span + low
        new_std = changed.std()
        if new_std > 0:
            changed = (changed - changed.mean()) / new_std * std + mean
        out[c] = sign * changed
    return out


#: (probability, transform) in nnU-Net's order; each transform is applied to the whole patch.
STRONG_PIPELINE = (
    (0.1, gaussian_noise),
    (0.2, gaussian_blur),
    (0.15, brightness),
    (0.15, contrast),
    (0.25, low_resolution),
    (0.1, lambda images, rng: gamma(images, rng, invert=True)),
    (0.3, gamma),
)


def strong_intensity(images: np.ndarray, rng: np.random.Generator, outside: np.ndarray | None = None) -> np.ndarray:
    """``images`` through :data:`STRONG_PIPELINE`: each transform applied with its probability.

    ``outside``: boolean ``(X, Y, Z)``, the voxels outside the brain; they keep their input
    values (nnU-Net's masking), so the transforms change the brain only.
    """
    original = np.asarray(images, dtype=np.float32)
    out = original
    for probability, transform in STRONG_PIPELINE:
        if rng.random() < probability:
            out = transform(out, rng).astype(np.float32, copy=False)
    if outside is not None and out is not original:
        out = np.where(outside[None], original, out)
    return out
