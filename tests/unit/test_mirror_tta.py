"""Mirror test-time augmentation (distill.infer.sliding_window.mirrored_logits), by hand."""

import pytest
import torch

from distill.errors import DistillError
from distill.infer.sliding_window import TTA_MIRRORS, mirrored_logits, predict_logits


def test_mirror8_is_every_subset_of_the_three_axes_once():
    assert len(TTA_MIRRORS["mirror8"]) == 8 and len(set(TTA_MIRRORS["mirror8"])) == 8
    assert TTA_MIRRORS["mirror8"][0] == () and (0, 1, 2) in TTA_MIRRORS["mirror8"]
    assert TTA_MIRRORS["none"] == ((),)


def test_a_position_dependent_output_averages_to_the_middle_of_the_axis():
    # the "network" adds its X index 0..4 to the input: flipped along X it adds 4 - i instead, and
    # X is flipped in 4 of the 8 mirrorings, so the average adds (i + 4 - i) / 2 = 2 everywhere
    ramp = torch.arange(5.0).reshape(1, 1, 5, 1, 1)
    images = torch.randn(1, 1, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    averaged = mirrored_logits(lambda x: x + ramp, images, tta="mirror8")
    torch.testing.assert_close(averaged, images + 2.0)
    torch.testing.assert_close(mirrored_logits(lambda x: x + ramp, images, tta="none"), images + ramp)


def test_none_is_the_single_pass_and_tiles_are_mirrored_too():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    images = torch.randn(1, 2, 12, 10, 8)
    torch.testing.assert_close(mirrored_logits(net, images, tta="none"), predict_logits(net, images))
    tiled = mirrored_logits(net, images, tile=(8, 8, 8), overlap=0.5, tta="mirror8")
    assert tiled.shape == (1, 3, 12, 10, 8)


def test_a_mirror_symmetric_input_gets_a_mirror_symmetric_output_only_with_tta():
    # averaging over the group of mirrorings makes any network equivariant to it: an input equal
    # to its own mirror images gives an output equal to its own, which one pass does not
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 3, 3, padding=1)).eval()  # fmt: skip
    half = torch.randn(1, 1, 4, 4, 4)
    images = torch.cat([half, half.flip(2)], 2)
    images = torch.cat([images, images.flip(3)], 3)
    images = torch.cat([images, images.flip(4)], 4)  # (1, 1, 8, 8, 8), symmetric along X, Y and Z
    for dims in ([2], [3], [4]):
        assert torch.equal(images, images.flip(dims))
    single = mirrored_logits(net, images, tta="none")
    averaged = mirrored_logits(net, images, tta="mirror8")
    for dims in ([2], [3], [4]):
        assert not torch.allclose(single, single.flip(dims), atol=1e-4)
        torch.testing.assert_close(averaged, averaged.flip(dims), atol=1e-5, rtol=1e-5)


def test_an_unknown_name_is_refused_in_one_line():
    with pytest.raises(DistillError, match=r"unknown test-time augmentation 'mirror4'; choose one of none, mirror8"):
        mirrored_logits(lambda x: x, torch.zeros(1, 1, 2, 2, 2), tta="mirror4")
