"""Seeded synthetic volumes shared by tests (a plain module: two ``conftest.py`` files exist, so
tests import helpers from here rather than from ``conftest``)."""

from __future__ import annotations

import numpy as np


def synthetic_case(seed: int, shape=(20, 18, 14)) -> tuple[np.ndarray, np.ndarray]:
    """A tiny seeded case: 4 modalities ``(4, *shape)`` with a zero border, and BraTS 2017 labels.

    The "brain" is an inner box with random intensities; the tumour is a box of oedema
    around a smaller core whose centre is enhancing, so every region is non-empty.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((4, *shape), dtype=np.float32)
    inner = tuple(slice(2, n - 2) for n in shape)
    images[(slice(None), *inner)] = rng.normal(100.0, 15.0, size=(4, *[n - 4 for n in shape])).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    cx, cy, cz = (n // 2 for n in shape)
    labels[cx - 4 : cx + 4, cy - 4 : cy + 4, cz - 3 : cz + 3] = 2
    labels[cx - 2 : cx + 2, cy - 2 : cy + 2, cz - 2 : cz + 2] = 1
    labels[cx - 1 : cx + 1, cy - 1 : cy + 1, cz - 1 : cz + 1] = 4
    return images, labels
