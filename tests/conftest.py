"""Shared fixtures: real-data location, synthetic volumes with non-identity affines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from synthetic_data import synthetic_case

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS18_DIR = REPO_ROOT.parent / "shared" / "data" / "brats18"


# hypothesis: a plain run stays short and repeatable; `--hypothesis-profile=thorough` searches long.
# Tests that state max_examples themselves keep it.
settings.register_profile("distill", max_examples=25)
settings.register_profile("thorough", max_examples=500)
settings.load_profile("distill")


@pytest.fixture(scope="session")
def brats18_dir() -> Path:
    """Folder of the 14 real BraTS 2018 cases; skips the test where it is absent."""
    if not BRATS18_DIR.is_dir() or not any(BRATS18_DIR.iterdir()):
        pytest.skip(f"real BraTS 2018 cases not found at {BRATS18_DIR} (they sit beside the repository, in ../shared)")
    return BRATS18_DIR


def make_oblique_affine(degrees: float = 7.0, spacing=(-1.2, -0.9, 2.5), offset=(101.5, -17.25, 33.0)) -> np.ndarray:
    """A non-identity affine: anisotropic spacing, axis flips, a rotation about z and an offset."""
    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = offset
    return affine


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A non-identity affine: anisotropic spacing, axis flips, a small rotation and an offset."""
    return make_oblique_affine()


BRATS2017_SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")
BRATS2023_SUFFIXES = ("t1n", "t1c", "t2w", "t2f", "seg")


@pytest.fixture
def write_brats_dataset(oblique_affine):
    """Factory: write ``n`` tiny cases in BraTS 2017 (``_t1``) or 2023 (``-t1n``) naming; returns the root."""
    from distill.data.conventions import get_convention

    def write(root: Path, n: int = 2, naming: str = "brats2017", ext: str = ".nii.gz", shape=(20, 18, 14)) -> Path:
        for i in range(n):
            case_id = f"Case_{i:03d}" if naming == "brats2017" else f"BraTS-GLI-{i:05d}-000"
            images, labels = synthetic_case(i, shape)
            if naming != "brats2017":
                labels = get_convention("brats2017").convert_to(labels, get_convention("brats2023"))
            write_brats_case(root, case_id, images, labels, oblique_affine, naming, ext)
        return root

    return write


def write_brats_case(root: Path, case_id: str, images: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                     naming: str = "brats2017", ext: str = ".nii.gz") -> Path:  # fmt: skip
    """One case folder in BraTS 2017 (``<id>_t1``) or 2023 (``<id>-t1n``) naming: int16 images and the label map."""
    from distill.data.nifti import write_nifti

    sep, suffixes = ("_", BRATS2017_SUFFIXES) if naming == "brats2017" else ("-", BRATS2023_SUFFIXES)
    folder = root / case_id
    for channel, suffix in enumerate(suffixes[:4]):
        write_nifti(folder / f"{case_id}{sep}{suffix}{ext}", images[channel].astype(np.int16), affine)
    write_nifti(folder / f"{case_id}{sep}seg{ext}", labels, affine)
    return folder


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
    result = run_teacher_cache(TeacherCacheConfig(model_dir=nnunet_teacher.model_dir,
                                                  images=nnunet_teacher.raw_dataset_dir,
                                                  out=out, folds=("0",), tta="none", progress=False))  # fmt: skip
    assert result.complete
    return out


# ----------------------------------------------------------------------------- stub-teacher cache

STUB_SHAPE = (32, 32, 24)
STUB_CASES = 5
STUB_TEACHER_PARAMETERS = 100_000
# Per modality (t1, t1ce, t2, flair): mean of brain, oedema, necrosis, enhancing tumour.
STUB_CONTRAST = np.array(
    [[100, 85, 60, 95], [100, 90, 60, 170], [100, 160, 180, 130], [100, 170, 120, 140]], np.float32
)


def stub_case(seed: int, shape=STUB_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic case: an ellipsoidal "brain" with a tumour the images show.

    The tumour is an ellipsoid of oedema (label 2) around an enhancing shell (4) around necrosis
    (1), BraTS 2017 labels, at a seeded place and size; each modality has its own contrast per
    tissue plus Gaussian noise, zero outside the brain. Every region is non-empty.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    size = np.array(shape, dtype=np.float32)

    def ellipsoid(centre, radii):
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))

    centre = size / 2 + rng.uniform(-1.5, 1.5, 3)
    brain_radii = size * rng.uniform(0.38, 0.45, 3)
    brain = ellipsoid(centre, brain_radii) <= 1
    tumour = ellipsoid(centre + rng.uniform(-0.3, 0.3, 3) * brain_radii, rng.uniform(4.5, 7.0, 3))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(tumour <= 1) & brain] = 2
    labels[tumour <= 0.5] = 4
    labels[tumour <= 0.12] = 1
    tissue = np.array([0, 2, 1, 0, 3])[labels]  # label -> column of STUB_CONTRAST
    images = STUB_CONTRAST[:, tissue] + rng.normal(0.0, 8.0, size=(4, *shape)).astype(np.float32)
    images[:, ~brain] = 0.0
    return images, labels


class StubTeacher:
    """A teacher (the :class:`distill.teacher.base.Teacher` interface) whose soft maps come from the labels.

    Probabilities: each region mask (WT, TC, ET) smoothed by a Gaussian plus noise seeded by the
    case id; uncertainty: the spread a Bernoulli of that probability would have, plus noise. No
    network: a case takes milliseconds, so a cache of it builds in about a second.
    """

    def __init__(self, members=("stub_0", "stub_1")) -> None:
        from distill.teacher.base import TeacherInfo

        self._info = TeacherInfo(name="stub:smoothed-labels", output_kind="sigmoid", channels=("WT", "TC", "ET"),
                                 parameters_per_member=STUB_TEACHER_PARAMETERS, members=tuple(members), tta="none",
                                 identity={"stub": "smoothed labels + seeded noise", "sigma": 0.7,
                                           "noise": 0.05})  # fmt: skip

    @property
    def info(self):
        return self._info

    def predict(self, case, members=None):
        import zlib

        from scipy.ndimage import gaussian_filter

        from distill.data.conventions import get_convention
        from distill.teacher.base import SoftPrediction

        rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
        regions = get_convention("brats2017").to_regions(case.labels).astype(np.float32)
        smooth = gaussian_filter(regions, sigma=(0, 0.7, 0.7, 0.7))
        probabilities = np.clip(0.02 + 0.96 * smooth + rng.normal(0.0, 0.05, smooth.shape), 0.0, 1.0).astype(np.float32)
        spread = np.sqrt(probabilities * (1.0 - probabilities)) + np.abs(rng.normal(0.0, 0.02, smooth.shape))
        used = tuple(members) if members is not None else self._info.members
        return SoftPrediction(probabilities, np.clip(spread, 0.0, 0.5).astype(np.float32), n_passes=len(used))


@pytest.fixture(scope="session")
def stub_cache(tmp_path_factory) -> Path:
    """A complete teacher cache of 5 seeded synthetic cases (32x32x24, oblique affines) without nnU-Net.

    Written by the real ``teacher-cache`` runner (:func:`distill.teacher.run.run_teacher_cache`:
    case discovery, preprocessing, keys, :class:`~distill.cache.CacheWriter` entries and the
    manifest), with :class:`StubTeacher` put in place of the nnU-Net ensemble; about a second.
    """
    from distill.teacher import run

    root = tmp_path_factory.mktemp("stub_cache")
    for seed in range(STUB_CASES):
        images, labels = stub_case(seed)
        affine = make_oblique_affine(
            degrees=4.0 + 3.0 * seed, spacing=(-1.0, -1.1, 1.5), offset=(90.0 - seed, -20.0, 10.0 + seed)
        )
        write_brats_case(root / "images", f"Stub_{seed:03d}", images, labels, affine)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "build_teacher", lambda config: StubTeacher())
        result = run.run_teacher_cache(run.TeacherCacheConfig(model_dir=root / "no-model", images=root / "images",
                                                              out=root / "cache", progress=False))  # fmt: skip
    assert result.complete and not result.failed, result.failed
    return root / "cache"
