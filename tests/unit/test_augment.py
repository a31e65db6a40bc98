"""Strong intensity augmentation (distill.train.augment) on tiny hand-checkable arrays."""

from __future__ import annotations

import numpy as np
import pytest

from distill.train import augment


class Scripted:
    """A stand-in generator whose draws are given: ``random()`` and ``uniform()`` pop their lists."""

    def __init__(self, randoms=(), uniforms=()):
        self.randoms, self.uniforms = list(randoms), list(uniforms)

    def random(self):
        return self.randoms.pop(0)

    def uniform(self, low, high, size=None):
        value = self.uniforms.pop(0)
        assert low <= value <= high, (low, value, high)
        return value


def test_two_sided_draws_below_and_above_one_equally_often():
    rng = np.random.default_rng(0)
    draws = np.array([augment.two_sided(rng, 0.75, 1.25) for _ in range(4000)])
    assert draws.min() >= 0.75 and draws.max() <= 1.25
    assert abs((draws < 1).mean() - 0.5) < 0.03  # binomial sd at n = 4000 is 0.008
    # an asymmetric range still shrinks half of the time
    draws = np.array([augment.two_sided(rng, 0.7, 1.5) for _ in range(4000)])
    assert abs((draws < 1).mean() - 0.5) < 0.03


def test_contrast_by_hand():
    images = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32).reshape(1, 4, 1, 1)
    # below-one branch refused by the draw 0.9 >= 0.5, then factor 1.25: (x - 1.5) * 1.25 + 1.5, clipped to [0, 3]
    out = augment.contrast(images, Scripted(randoms=[0.9], uniforms=[1.25]))
    np.testing.assert_allclose(out.ravel(), [0.0, 0.875, 2.125, 3.0])


def test_brightness_multiplies_each_channel_by_its_own_factor():
    images = np.ones((2, 2, 2, 2), dtype=np.float32)
    out = augment.brightness(images, Scripted(randoms=[0.1, 0.9], uniforms=[0.8, 1.2]))
    np.testing.assert_allclose(out[0], 0.8)
    np.testing.assert_allclose(out[1], 1.2)


def test_gamma_by_hand_keeps_mean_and_std():
    x = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    images = x.reshape(1, 3, 1, 1)
    out = augment.gamma(images, Scripted(randoms=[0.9], uniforms=[1.5])).ravel()
    # rescaled to [0, 0.5, 1], ^1.5 -> [0, 0.3536, 1], back to [0, 0.7071, 2], then mean 1 and std kept
    changed = np.array([0.0, 0.5**1.5 * 2, 2.0])
    expected = (changed - changed.mean()) / changed.std() * x.std() + x.mean()
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert out.mean() == pytest.approx(1.0) and out.std() == pytest.approx(x.std())
    assert np.all(np.diff(out) > 0)  # order kept


def test_inverted_gamma_bends_the_other_way():
    images = np.array([0.0, 1.0, 2.0], dtype=np.float32).reshape(1, 3, 1, 1)
    plain = augment.gamma(images, Scripted(randoms=[0.9], uniforms=[1.5])).ravel()
    inverted = augment.gamma(images, Scripted(randoms=[0.9], uniforms=[1.5]), invert=True).ravel()
    # γ > 1 pulls the middle value down; on the negated channel it pulls it up
    assert plain[1] < 1.0 < inverted[1]
    assert inverted.mean() == pytest.approx(1.0) and np.all(np.diff(inverted) > 0)


def test_gamma_leaves_a_constant_channel_alone():
    images = np.full((1, 2, 2, 2), 3.0, dtype=np.float32)
    np.testing.assert_array_equal(augment.gamma(images, np.random.default_rng(0)), images)


def test_low_resolution_keeps_the_shape_and_a_constant_channel():
    rng = np.random.default_rng(1)
    images = np.stack([np.full((10, 8, 6), 2.0, np.float32), rng.normal(size=(10, 8, 6)).astype(np.float32)])
    out = augment.low_resolution(images, Scripted(randoms=[0.0, 0.0], uniforms=[0.5, 0.5]))
    assert out.shape == images.shape
    np.testing.assert_allclose(out[0], 2.0)
    assert not np.allclose(out[1], images[1])  # the noise channel lost detail
    assert out[1].std() < images[1].std()
    untouched = augment.low_resolution(images, Scripted(randoms=[0.9, 0.9]))
    np.testing.assert_array_equal(untouched, images)


def test_blur_spreads_an_impulse_and_spares_channels_not_drawn():
    images = np.zeros((2, 9, 9, 9), dtype=np.float32)
    images[:, 4, 4, 4] = 1.0
    out = augment.gaussian_blur(images, Scripted(randoms=[0.1, 0.9], uniforms=[1.0, 1.0, 1.0]))
    assert out[0, 4, 4, 4] < 0.1 and out[0, 3, 4, 4] > 0 and out[0].sum() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(out[1], images[1])


def test_noise_sd_is_drawn_from_zero_to_a_tenth_as_nnunet_draws_it():
    images = np.zeros((2, 20, 20, 20), dtype=np.float32)
    noises = [augment.gaussian_noise(images, np.random.default_rng(s)) for s in range(30)]
    stds = [n.std() for n in noises]
    # σ ~ U[0, 0.1] (16,000 voxels: each estimate is within ~1 %); one σ for every channel
    assert max(stds) <= 0.1 * 1.03 and min(stds) < 0.05
    assert all(abs(n[0].std() - n[1].std()) <= 0.03 * n.std() + 1e-6 for n in noises)


def test_blur_draws_a_sigma_per_axis():
    images = np.zeros((1, 15, 15, 15), dtype=np.float32)
    images[0, 7, 7, 7] = 1.0
    out = augment.gaussian_blur(images, Scripted(randoms=[0.0], uniforms=[0.5, 1.0, 0.75]))[0]
    # a narrower kernel along X keeps more of the impulse on the X axis's neighbours' far side
    along = [out[8, 7, 7], out[7, 8, 7], out[7, 7, 8]]
    assert along[0] < along[2] < along[1]


def test_voxels_outside_the_brain_keep_their_values():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(4, 8, 8, 8)).astype(np.float32)
    images[:, :2] = 0.05  # outside the brain after the light shift
    outside = np.zeros((8, 8, 8), dtype=bool)
    outside[:2] = True
    changed = 0
    for seed in range(12):
        out = augment.strong_intensity(images, np.random.default_rng(seed), outside=outside)
        np.testing.assert_array_equal(out[:, :2], images[:, :2])
        changed += not np.array_equal(out[:, 2:], images[:, 2:])
    assert changed >= 5


def test_strong_pipeline_is_seeded_and_changes_intensities_only():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(4, 12, 12, 12)).astype(np.float32)
    a = [augment.strong_intensity(images, np.random.default_rng(s)) for s in range(20)]
    b = [augment.strong_intensity(images, np.random.default_rng(s)) for s in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == images.shape and x.dtype == np.float32 for x in a)
    changed = sum(not np.array_equal(x, images) for x in a)
    # no transform fires with probability 0.9·0.8·0.85·0.85·0.75·0.9·0.7 ≈ 0.21 per patch
    assert 10 <= changed < 20, changed
