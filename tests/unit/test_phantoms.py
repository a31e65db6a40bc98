"""Synthetic BraTS-like phantoms: geometry, labels, contrasts, determinism and dataset writing.

Small grids (48³, 64³) keep each test around a second; the first test in a process also
pays the one-off template load (~3 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from distill.data.nifti import read_nifti, voxel_spacing
from distill.data.phantoms import (
    KINDS,
    MODALITIES,
    PhantomConfig,
    case_files,
    case_id,
    case_seed,
    make_phantom,
    write_phantoms,
)
from distill.errors import DistillError

SMALL = PhantomConfig(shape=(48, 48, 48))
CI = PhantomConfig(shape=(64, 64, 64))


def only(kind: str, base: PhantomConfig = CI) -> PhantomConfig:
    """``base`` with every phantom of one tumour kind."""
    return PhantomConfig(shape=base.shape, spacing_mm=base.spacing_mm, kind_weights={kind: 1.0})


@pytest.fixture(scope="module")
def glioblastomas():
    return [make_phantom(seed, only("glioblastoma")) for seed in range(3)]


# --------------------------------------------------------------------------- grid and affine


def test_default_grid_is_2mm_brats_field_of_view():
    config = PhantomConfig()
    assert config.grid_shape == (120, 120, 78)
    assert voxel_spacing(config.affine) == pytest.approx((2.0, 2.0, 2.0))
    assert not np.allclose(config.affine, np.eye(4))
    # LPS voxel order like BraTS files: x and y flipped, z not
    assert np.sign(np.diag(config.affine)[:3]).tolist() == [-1.0, -1.0, 1.0]


def test_1mm_grid_matches_real_brats_geometry():
    config = PhantomConfig(spacing_mm=1.0)
    assert config.grid_shape == (240, 240, 155)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0])
    expected[:3, 3] = [0.0, 239.0, 0.0]
    np.testing.assert_allclose(config.affine, expected)


def test_shape_override_keeps_the_field_of_view():
    config = PhantomConfig(shape=(64, 64, 64))
    assert config.grid_shape == (64, 64, 64)
    assert voxel_spacing(config.affine) == pytest.approx((240 / 64, 240 / 64, 155 / 64))


def test_2mm_phantom_arrays_have_the_grid_shape_and_types():
    phantom = make_phantom(0, PhantomConfig())
    assert phantom.labels.shape == (120, 120, 78) and phantom.labels.dtype == np.uint8
    assert set(phantom.images) == set(MODALITIES)
    for image in phantom.images.values():
        assert image.shape == (120, 120, 78) and image.dtype == np.int16
    np.testing.assert_allclose(phantom.affine, PhantomConfig().affine)
    assert phantom.kind in KINDS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spacing_mm": 0.0},
        {"shape": (64, 64)},
        {"shape": (8, 64, 64)},
        {"kind_weights": {"meningioma": 1.0}},
        {"kind_weights": {"low-grade": 0.0}},
        {"noise_fraction": -0.1},
    ],
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(DistillError):
        PhantomConfig(**kwargs)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_phantoms():
    a, b = make_phantom(7, SMALL), make_phantom(7, SMALL)
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.labels, b.labels)
    for m in MODALITIES:
        np.testing.assert_array_equal(a.images[m], b.images[m])


def test_different_seeds_give_different_phantoms():
    a, b = make_phantom(7, SMALL), make_phantom(8, SMALL)
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images["t1"], b.images["t1"])


@pytest.mark.parametrize("seed", [2, 3])  # a multifocal and a glioblastoma case
def test_one_seed_gives_the_same_tumour_at_any_resolution(seed):
    """Geometry is drawn in mm: the tumour sits at the same world position on both grids."""
    coarse, fine = make_phantom(seed, SMALL), make_phantom(seed, CI)
    assert coarse.kind == fine.kind

    def tumour_centroid_mm(p):
        ijk = np.argwhere(p.labels > 0).mean(axis=0)
        return p.affine[:3, :3] @ ijk + p.affine[:3, 3]

    assert np.linalg.norm(tumour_centroid_mm(coarse) - tumour_centroid_mm(fine)) < 6.0


def test_case_seed_depends_on_seed_and_index_only():
    seeds = {case_seed(0, 0), case_seed(0, 1), case_seed(1, 0), case_seed(1, 1)}
    assert len(seeds) == 4
    assert case_seed(5, 3) == case_seed(5, 3)


# --------------------------------------------------------------------------- labels and anatomy


@pytest.mark.parametrize("seed", range(4))
def test_labels_follow_brats2017_and_stay_in_the_brain(seed):
    phantom = make_phantom(seed, CI)
    assert set(np.unique(phantom.labels).tolist()) <= {0, 1, 2, 4}
    assert (phantom.labels > 0).any()
    assert not (phantom.labels[~phantom.brain_mask] > 0).any()
    for m in MODALITIES:
        image = phantom.images[m]
        assert not image[~phantom.brain_mask].any(), f"{m} is not zero outside the brain"
        assert (image[phantom.brain_mask] > 0).all()


def test_brain_covers_a_realistic_volume():
    phantom = make_phantom(0, CI)
    voxel_ml = np.prod(voxel_spacing(phantom.affine)) / 1000.0
    # adult brains in BraTS 2018: ~1.2-1.7 litres after skull stripping
    assert 1000 < phantom.brain_mask.sum() * voxel_ml < 2000
    assert set(np.unique(phantom.tissue[phantom.brain_mask]).tolist()) == {1, 2, 3}


def test_glioblastoma_has_nested_necrosis_rim_and_oedema(glioblastomas):
    for phantom in glioblastomas:
        labels = phantom.labels
        assert (labels == 4).any() and (labels == 2).any()
        # necrosis lies inside the core: every NCR voxel's 1-voxel neighbourhood is tumour
        ncr = labels == 1
        if ncr.any():
            near = ndimage.binary_dilation(ncr)
            assert (labels[near & ~ncr] > 0).mean() > 0.9


def test_low_grade_has_little_or_no_enhancement():
    for seed in range(4):
        labels = make_phantom(seed, only("low-grade")).labels
        assert (labels == 1).sum() > 0
        assert (labels == 4).sum() <= 0.05 * (labels > 0).sum()


def test_multifocal_has_separate_lesions():
    for seed in range(3):
        labels = make_phantom(seed, only("multifocal")).labels
        _, n_components = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        assert n_components >= 2


def test_small_enhancing_tumour_has_a_small_enhancing_core():
    for seed in range(3):
        phantom = make_phantom(seed, only("small-enhancing"))
        voxel_ml = np.prod(voxel_spacing(phantom.affine)) / 1000.0
        core = np.isin(phantom.labels, (1, 4))
        assert (phantom.labels == 4).any()
        assert core.sum() * voxel_ml < 15.0


# --------------------------------------------------------------------------- contrasts


def mean_over(phantoms, modality, select):
    """Voxel-weighted mean of ``modality`` over the voxels ``select(phantom)`` of all phantoms."""
    values = np.concatenate([p.images[modality][select(p)].astype(np.float64) for p in phantoms])
    return values.mean()


def normal(p, tissue):
    return (p.tissue == tissue) & (p.labels == 0)


def test_modality_contrasts_follow_mri_physics(glioblastomas):
    ps = glioblastomas
    assert mean_over(ps, "t1ce", lambda p: p.labels == 4) > mean_over(ps, "t1ce", lambda p: p.labels == 1)
    assert mean_over(ps, "t1ce", lambda p: p.labels == 4) > mean_over(ps, "t1ce", lambda p: normal(p, 3))
    assert mean_over(ps, "flair", lambda p: p.labels == 2) > mean_over(ps, "flair", lambda p: normal(p, 3))
    assert mean_over(ps, "t2", lambda p: p.labels == 2) > mean_over(ps, "t2", lambda p: normal(p, 3))
    # normal tissue: T2 CSF > GM > WM; T1 WM > GM > CSF
    t2 = [mean_over(ps, "t2", lambda p, t=t: normal(p, t)) for t in (1, 2, 3)]
    t1 = [mean_over(ps, "t1", lambda p, t=t: normal(p, t)) for t in (1, 2, 3)]
    assert t2[0] > t2[1] > t2[2]
    assert t1[2] > t1[1] > t1[0]


def best_threshold_dice(image: np.ndarray, target: np.ndarray, brain: np.ndarray) -> float:
    """Highest Dice of ``image > q`` against ``target`` over thresholds ``q`` inside ``brain``."""
    values, truth = image[brain].astype(np.float64), target[brain]
    best = 0.0
    for q in np.percentile(values, np.linspace(50, 99.9, 100)):
        predicted = values > q
        best = max(best, 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))
    return best


def test_one_threshold_on_flair_does_not_segment_the_whole_tumour(glioblastomas):
    for phantom in glioblastomas:
        assert best_threshold_dice(phantom.images["flair"], phantom.labels > 0, phantom.brain_mask) < 0.92


# --------------------------------------------------------------------------- writing datasets


def test_brats2021_layout_round_trips(tmp_path: Path):
    result = write_phantoms(tmp_path, 2, seed=11, config=SMALL, layout="brats2021", progress=False)
    assert result.case_ids == ("Phantom_00000", "Phantom_00001")
    assert result.written == result.case_ids and result.skipped == ()
    assert result.seconds_per_case is not None and result.seconds_per_case > 0
    for index, cid in enumerate(result.case_ids):
        expected = make_phantom(case_seed(11, index), SMALL)
        for name in (*MODALITIES, "seg"):
            path = tmp_path / cid / f"{cid}_{name}.nii.gz"
            volume = read_nifti(path)
            np.testing.assert_allclose(volume.affine, SMALL.affine)
            truth = expected.labels if name == "seg" else expected.images[name]
            np.testing.assert_array_equal(volume.data, truth)


def test_nnunet_layout_has_nnunet_labels_and_dataset_json(tmp_path: Path):
    result = write_phantoms(tmp_path, 2, seed=11, config=SMALL, layout="nnunet", progress=False)
    for index, cid in enumerate(result.case_ids):
        expected = make_phantom(case_seed(11, index), SMALL)
        for channel, modality in enumerate(MODALITIES):
            image = read_nifti(tmp_path / "imagesTr" / f"{cid}_{channel:04d}.nii.gz").data
            np.testing.assert_array_equal(image, expected.images[modality])
        labels = read_nifti(tmp_path / "labelsTr" / f"{cid}.nii.gz").data
        # nnU-Net's BraTS numbering: 1 oedema, 2 NCR, 3 ET (from 2, 1, 4)
        for brats, nnunet in ((0, 0), (2, 1), (1, 2), (4, 3)):
            assert (labels[expected.labels == brats] == nnunet).all()
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    regions = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert dataset["labels"] == regions
    assert dataset["regions_class_order"] == [1, 2, 3]
    assert dataset["numTraining"] == 2
    assert dataset["file_ending"] == ".nii.gz"


def test_resumed_run_skips_finished_cases_without_rewriting(tmp_path: Path):
    write_phantoms(tmp_path, 2, seed=3, config=SMALL, progress=False)
    files = [p for cid in (case_id(0), case_id(1)) for p in case_files(tmp_path, cid, "brats2021").values()]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = write_phantoms(tmp_path, 2, seed=3, config=SMALL, progress=False)
    assert again.written == () and again.skipped == (case_id(0), case_id(1))
    assert again.seconds_per_case is None
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # a case with a missing file is made again, the other left alone
    case_files(tmp_path, case_id(1), "brats2021")["flair"].unlink()
    third = write_phantoms(tmp_path, 2, seed=3, config=SMALL, progress=False)
    assert third.written == (case_id(1),)


def test_case_k_is_the_same_whatever_the_number_of_cases(tmp_path: Path):
    write_phantoms(tmp_path / "one", 1, seed=5, config=SMALL, progress=False)
    write_phantoms(tmp_path / "two", 2, seed=5, config=SMALL, progress=False)
    for name, path in case_files(tmp_path / "one", case_id(0), "brats2021").items():
        other = case_files(tmp_path / "two", case_id(0), "brats2021")[name]
        assert path.read_bytes() == other.read_bytes()


def test_nnunet_folder_with_other_cases_is_refused(tmp_path: Path):
    write_phantoms(tmp_path, 2, seed=1, config=SMALL, layout="nnunet", progress=False)
    with pytest.raises(DistillError, match="labelsTr"):
        write_phantoms(tmp_path, 1, seed=1, config=SMALL, layout="nnunet", progress=False)


def test_unknown_layout_is_refused(tmp_path: Path):
    with pytest.raises(DistillError, match="layout"):
        write_phantoms(tmp_path, 1, seed=0, config=SMALL, layout="medical-decathlon", progress=False)
    assert not any(tmp_path.iterdir())
