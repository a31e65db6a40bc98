"""Training patches drawn from the chunked teacher cache, with tumour oversampling and augmentation.

Each patch is read with :meth:`TeacherCache.read_patch`, which decodes only the chunks the
box touches. A fraction of patches is centred on a random tumour voxel (nnU-Net oversamples
foreground a third of the time), the rest anywhere in the brain crop. With ``et_fraction``
a further share is centred on a random enhancing-tumour voxel (ground-truth ET, else the
teacher's ET > 0.5) when the case has one, and on a tumour voxel when it has none: ET is
0.2-5 % of a tumour-centred patch and absent from many, so a small student sees it rarely.
One uniform draw ``u`` per patch decides: ``u < et_fraction`` ET, then
``u < et_fraction + foreground_fraction`` tumour, else anywhere (with ``et_fraction = 0``
the draws are exactly those of the sampler without the option). Augmentation: random
flips on each axis (applied to inputs, teacher maps and ground truth alike) and a per-channel
intensity scale and shift on the inputs only; ``augment="strong"`` adds nnU-Net's intensity
transforms after them (:mod:`distill.train.augment`), drawn from the same generator (with
the default ``"light"`` the draws are exactly those of the sampler before the option existed).

With ``context = c`` each patch's box is read with ``c`` more voxels on every side for a live
teacher (``Batch.context_images``); the student's arrays are its centre. Flips and the
intensity change act on the whole box, so the centre is exactly the patch drawn without
context (same draws, same values): a teacher given context and a student given the patch
see the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.cache import TeacherCache
from distill.train.augment import AUGMENTATIONS, strong_intensity

# Tumour voxels remembered per case for oversampling; a random subset is plenty.
MAX_FOREGROUND_POINTS = 20000
WT_CHANNEL, ET_CHANNEL = 0, 2  # region channels WT, TC, ET


@dataclass
class Batch:
    """Tensors ``(B, C, *patch)``: images, teacher probabilities and uncertainty, regions (or None)."""

    images: torch.Tensor
    teacher_probs: torch.Tensor
    teacher_uncertainty: torch.Tensor
    regions: torch.Tensor | None
    #: ``(B, C, *(patch + 2 c))``: the images with ``c`` voxels of context each side (``context`` > 0)
    context_images: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None for t in
                       (self.images, self.teacher_probs, self.teacher_uncertainty, self.regions,
                        self.context_images)))  # fmt: skip


class PatchSampler:
    """Draws augmented patches from the cache cases ``case_ids`` with its own seeded generator."""

    def __init__(self, cache: TeacherCache, case_ids: list[str], patch_size, foreground_fraction: float, seed: int,
                 et_fraction: float = 0.0, context: int = 0, augment: str = "light"):
        if not case_ids:
            raise ValueError("no training cases to sample from")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}")
        self.augment = augment
        if context < 0:
            raise ValueError(f"context must be >= 0 voxels, got {context}")
        self.context = int(context)
        self.cache = cache
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_fraction = foreground_fraction
        self.et_fraction = et_fraction
        self.rng = np.random.default_rng(seed)
        self._points: dict[tuple[str, int], np.ndarray] = {}

    def _region_points(self, case_id: str, channel: int) -> np.ndarray:
        """Coordinates of the voxels of region ``channel`` (ground truth, else teacher > 0.5), subsampled."""
        if (case_id, channel) not in self._points:
            case = self.cache.read_case(case_id)
            mask = case.regions[channel] if case.regions is not None else case.probabilities[channel] > 0.5
            points = np.argwhere(mask)
            if len(points) > MAX_FOREGROUND_POINTS:
                points = points[
                    np.random.default_rng(len(points)).choice(len(points), MAX_FOREGROUND_POINTS, replace=False)
                ]
            self._points[case_id, channel] = points
        return self._points[case_id, channel]

    def _foreground_points(self, case_id: str) -> np.ndarray:
        """Coordinates of tumour voxels (ground truth WT, else teacher WT > 0.5), subsampled."""
        return self._region_points(case_id, WT_CHANNEL)

    def _centre_points(self, case_id: str) -> np.ndarray:
        """The voxels this patch is centred on (one draw): ET, tumour, or none (anywhere)."""
        draw = self.rng.random()
        if draw < self.et_fraction:
            points = self._region_points(case_id, ET_CHANNEL)
            return points if len(points) else self._foreground_points(case_id)
        if draw < self.et_fraction + self.foreground_fraction:
            return self._foreground_points(case_id)
        return np.empty((0, 3))

    def _start(self, case_id: str) -> tuple[int, int, int]:
        shape = np.array(self.cache.shape(case_id))
        size = np.array(self.patch_size)
        points = self._centre_points(case_id)
        if len(points):
            centre = points[self.rng.integers(len(points))]
            start = centre - size // 2
        else:
            start = np.array([self.rng.integers(0, max(1, n - s + 1)) for n, s in zip(shape, size)])
        # Keep the box on the volume where it fits; a volume smaller than the patch is zero-padded.
        upper = np.maximum(shape - size, 0)
        return tuple(int(v) for v in np.clip(start, np.minimum(0, shape - size), upper))

    def _augment(self, arrays: list[np.ndarray | None], images: np.ndarray) -> tuple[np.ndarray, list]:
        # outside the brain every modality is 0 after z-scoring inside it (distill.data.preprocess)
        outside = ~(images != 0).any(axis=0) if self.augment == "strong" else None
        for axis in range(3):
            if self.rng.random() < 0.5:
                images = np.flip(images, axis=axis + 1)
                outside = np.flip(outside, axis=axis) if outside is not None else None
                arrays = [np.flip(a, axis=axis + 1) if a is not None else None for a in arrays]
        scale = self.rng.uniform(0.9, 1.1, size=(images.shape[0], 1, 1, 1)).astype(np.float32)
        shift = self.rng.uniform(-0.1, 0.1, size=(images.shape[0], 1, 1, 1)).astype(np.float32)
        images = images * scale + shift
        if self.augment == "strong":
            images = strong_intensity(images, self.rng, outside=outside)
        return images, arrays

    def sample(self, batch_size: int) -> Batch:
        images, probs, uncertainty, regions, contexts = [], [], [], [], []
        c = self.context
        centre = (slice(None), *(slice(c, c + n) for n in self.patch_size))
        for _ in range(batch_size):
            case_id = self.case_ids[self.rng.integers(len(self.case_ids))]
            start = np.asarray(self._start(case_id)) - c
            patch = self.cache.read_patch(case_id, start, tuple(n + 2 * c for n in self.patch_size))
            image, (p, u, r) = self._augment([patch.probabilities, patch.uncertainty, patch.regions], patch.images)
            if c:
                contexts.append(np.ascontiguousarray(image))
                image, p, u = image[centre], p[centre], u[centre]
                r = r[centre] if r is not None else None
            images.append(np.ascontiguousarray(image))
            probs.append(np.ascontiguousarray(p))
            uncertainty.append(np.ascontiguousarray(u))
            regions.append(np.ascontiguousarray(r) if r is not None else None)
        stacked_regions = (None if any(r is None for r in regions)
                           else torch.from_numpy(np.stack(regions).astype(np.float32)))
        return Batch(
            images=torch.from_numpy(np.stack(images)),
            teacher_probs=torch.from_numpy(np.stack(probs)),
            teacher_uncertainty=torch.from_numpy(np.stack(uncertainty)),
            regions=stacked_regions,
            context_images=torch.from_numpy(np.stack(contexts)) if c else None,
        )

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
