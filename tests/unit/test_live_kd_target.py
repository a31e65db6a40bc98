"""Where a link's KD target comes from: the cache, or a live teacher on the very patch (kd_source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.train.config import TrainConfig
from distill.train.link import LiveTeacher, _teacher_inputs
from distill.train.sampler import Batch


class FixedLogits(torch.nn.Module):
    """Logits 0 everywhere except +2 in channel 0 where the first input channel is positive."""

    def forward(self, images, return_features=False):
        logits = torch.zeros(images.shape[0], 3, *images.shape[2:])
        logits[:, 0] = 2.0 * (images[:, 0] > 0)
        return (logits, {"enc0": images}) if return_features else logits


def _batch() -> Batch:
    images = torch.zeros(1, 4, 2, 2, 2)
    images[0, 0, 0] = 1.0  # the first X slab positive
    cached = torch.full((1, 3, 2, 2, 2), 0.25)
    return Batch(images=images, teacher_probs=cached, teacher_uncertainty=torch.zeros_like(cached), regions=None)


def _targets(distils_outputs: bool):
    config = TrainConfig(cache=Path("c"), out=Path("o"), params=6000)
    teacher = LiveTeacher(name="nnunet_fold_0", model=FixedLogits(), distils_outputs=distils_outputs)
    teachers, uncertainties, _ = _teacher_inputs(_batch(), [teacher], config, np.random.default_rng(0),
                                                 need_features=False, output_kind="sigmoid")  # fmt: skip
    return teachers, uncertainties


def test_a_feature_only_teacher_leaves_the_cached_maps_as_the_target():
    teachers, uncertainties = _targets(distils_outputs=False)
    assert len(teachers) == 1 and torch.equal(teachers[0], torch.full((1, 3, 2, 2, 2), 0.25))
    assert uncertainties[0] is not None  # the cache's spread comes with its maps


def test_a_live_kd_teacher_replaces_the_cache_with_its_sigmoid_on_the_patch():
    teachers, uncertainties = _targets(distils_outputs=True)
    (target,) = teachers
    # sigmoid(2) = 0.8808 on the positive slab of channel 0, sigmoid(0) = 0.5 elsewhere
    np.testing.assert_allclose(target[0, 0, 0].numpy(), 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(target[0, 0, 1].numpy(), 0.5)
    np.testing.assert_allclose(target[0, 1:].numpy(), 0.5)
    assert uncertainties == [None]  # no ensemble spread for a single live network
