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


BRATS2017_SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")
BRATS2023_SUFFIXES = ("t1n", "t1c", "t2w", "t2f", "seg")


@pytest.fixture
def write_brats_dataset(oblique_affine):
    """Factory: write ``n`` tiny cases in BraTS 2017 (``_t1``) or 2023 (``-t1n``) naming; returns the root."""
    from distill.data.conventions import get_convention
    from distill.data.nifti import write_nifti

    def write(root: Path, n: int = 2, naming: str = "brats2017", ext: str = ".nii.gz", shape=(20, 18, 14)) -> Path:
        sep, suffixes = ("_", BRATS2017_SUFFIXES) if naming == "brats2017" else ("-", BRATS2023_SUFFIXES)
        for i in range(n):
            case_id = f"Case{sep}{i:03d}" if naming == "brats2017" else f"BraTS-GLI-{i:05d}-000"
            images, labels = synthetic_case(i, shape)
            if naming != "brats2017":
                labels = get_convention("brats2017").convert_to(labels, get_convention("brats2023"))
            folder = root / case_id
            for channel, suffix in enumerate(suffixes[:4]):
                write_nifti(folder / f"{case_id}{sep}{suffix}{ext}", images[channel].astype(np.int16), oblique_affine)
            write_nifti(folder / f"{case_id}{sep}seg{ext}", labels, oblique_affine)
        return root

    return write


@pytest.fixture(scope="session")
def nnunet_teacher(tmp_path_factory):
    """A real, compact nnU-Net v2 model folder (5 folds) built on 6 phantoms by nnU-Net's own
    planner, preprocessor and trainer (2 training iterations per fold); built once per session.
    """
    pytest.importorskip("nnunetv2")
    from distill.teacher.nnunet_build import CompactTeacherConfig, build_compact_nnunet

    work = tmp_path_factory.mktemp("nnunet_teacher")
    return build_compact_nnunet(CompactTeacherConfig(work_dir=work, iterations=2), log_path=work / "build.log")


@pytest.fixture(scope="session")
def phantom_cache(nnunet_teacher, tmp_path_factory):
    """A complete teacher cache of the compact nnU-Net's 6 phantom cases (fold 0, no TTA: fast)."""
    from distill.teacher.run import TeacherCacheConfig, run_teacher_cache

    out = tmp_path_factory.mktemp("phantom_cache") / "cache"
    result = run_teacher_cache(TeacherCacheConfig(model_dir=nnunet_teacher.model_dir, images=nnunet_teacher.raw_dataset_dir,
                                                  out=out, folds=("0",), tta="none", progress=False))  # fmt: skip
    assert result.complete
    return out
