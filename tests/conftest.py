"""Shared fixtures: real-data location, synthetic volumes with non-identity affines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS18_DIR = REPO_ROOT.parent / "shared" / "data" / "brats18"


@pytest.fixture(scope="session")
def brats18_dir() -> Path:
    """Folder of the 14 real BraTS 2018 cases; skips the test where it is absent."""
    if not BRATS18_DIR.is_dir() or not any(BRATS18_DIR.iterdir()):
        pytest.skip(f"real BraTS 2018 cases not found at {BRATS18_DIR} (they sit beside the repository, in ../shared)")
    return BRATS18_DIR


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A non-identity affine: anisotropic spacing, axis flips, a small rotation and an offset."""
    theta = np.deg2rad(7.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.2, -0.9, 2.5])
    affine[:3, 3] = [101.5, -17.25, 33.0]
    return affine
