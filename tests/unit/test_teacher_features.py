"""The live nnU-Net feature network: axes, channels, padding and names, on a tiny PlainConvUNet."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("dynamic_network_architectures")

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from distill.teacher.features import (  # noqa: E402
    NnUNetFeatureNetwork,
    WithContext,
    distill_to_network_axes,
    feature_names,
)
from distill.train.link import LiveTeacher, _teacher_inputs  # noqa: E402

STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]


def tiny_network(seed: int = 0) -> PlainConvUNet:
    torch.manual_seed(seed)
    return PlainConvUNet(input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d,
                         kernel_sizes=3, strides=STRIDES, n_conv_per_stage=1, num_classes=3,
                         n_conv_per_stage_decoder=1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU).eval()  # fmt: skip


def test_axes_follow_the_reader_and_the_plans_transpose():
    # SimpleITK reverses (X, Y, Z); transpose_forward [1, 0, 2] then takes axes 1, 0, 2 of (Z, Y, X)
    assert distill_to_network_axes(True, [1, 0, 2]) == (1, 2, 0)
    assert distill_to_network_axes(True, [0, 1, 2]) == (2, 1, 0)
    assert distill_to_network_axes(False, [0, 1, 2]) == (0, 1, 2)


def test_feature_names_mirror_the_students():
    assert feature_names(3) == ["enc0", "enc1", "bottleneck", "dec1", "dec0"]


def test_logits_equal_the_network_on_permuted_padded_input_cropped_back():
    network = tiny_network()
    wrapped = NnUNetFeatureNetwork(network, STRIDES, channel_order=[1, 0, 2, 3], axes=(1, 2, 0),
                                   output_order=[2, 0, 1])  # fmt: skip
    x = torch.randn(2, 4, 10, 12, 6)  # no axis a multiple of the total stride 4
    logits, features = wrapped(x, return_features=True)
    assert logits.shape == (2, 3, 10, 12, 6)
    # by hand: channels swapped, axes (X, Y, Z) -> (Y, Z, X), padded to multiples of 4
    by_hand = x[:, [1, 0, 2, 3]].permute(0, 1, 3, 4, 2)  # (B, 4, 12, 6, 10)
    by_hand = torch.nn.functional.pad(by_hand, [0, 2, 0, 2, 0, 0])  # (12, 8, 12)
    expected = network(by_hand)[:, :, :12, :6, :10].permute(0, 1, 4, 2, 3)[:, [2, 0, 1]]
    torch.testing.assert_close(logits, expected)
    assert list(features) == ["enc0", "enc1", "bottleneck", "dec1", "dec0"]
    channels, strides = wrapped.feature_channels(), wrapped.feature_strides()
    assert channels == {"enc0": 4, "enc1": 8, "bottleneck": 16, "dec1": 8, "dec0": 4}
    assert strides == {"enc0": 1, "enc1": 2, "bottleneck": 4, "dec1": 2, "dec0": 1}
    for name, tensor in features.items():
        assert tensor.shape == (2, channels[name], *(math.ceil(n / strides[name]) for n in (10, 12, 6))), name


def test_the_wrapper_is_frozen_and_refuses_the_wrong_channel_count():
    wrapped = NnUNetFeatureNetwork(tiny_network(), STRIDES, [0, 1, 2, 3], (0, 1, 2), [0, 1, 2])
    assert not any(p.requires_grad for p in wrapped.parameters()) and not wrapped.network.training
    with pytest.raises(ValueError, match=r"expected input \(B, 4"):
        wrapped(torch.zeros(1, 3, 8, 8, 8))


class _Batch:
    def __init__(self):
        self.images = torch.randn(1, 4, 8, 8, 8)
        self.teacher_probs = torch.full((1, 3, 8, 8, 8), 0.25)
        self.teacher_uncertainty = None


def test_a_features_only_teacher_leaves_kd_to_the_cache():
    import numpy as np

    from distill.train.config import TrainConfig

    wrapped = NnUNetFeatureNetwork(tiny_network(), STRIDES, [0, 1, 2, 3], (0, 1, 2), [0, 1, 2])
    config = TrainConfig(cache="c", out="o", params=10_000)
    batch = _Batch()
    teachers, _, features = _teacher_inputs(batch, [LiveTeacher("nnunet_fold_0", wrapped, distils_outputs=False)],
                                            config, np.random.default_rng(0), True, "sigmoid")  # fmt: skip
    assert len(teachers) == 1 and teachers[0] is batch.teacher_probs  # KD target: the cache's maps
    assert features is not None and set(features) == set(feature_names(3))
    teachers, _, _ = _teacher_inputs(batch, [LiveTeacher("assistant", wrapped)], config, np.random.default_rng(0),
                                     False, "sigmoid")  # fmt: skip
    assert len(teachers) == 1 and teachers[0] is not batch.teacher_probs  # an assistant distils its outputs


def test_with_context_returns_the_networks_view_of_the_centre_on_unequal_strides():
    # strides (network axes) [1,1,1], [1,2,2], [2,2,2]: total (2, 4, 4). Network axes 0, 1, 2 hold
    # Distill's Y, Z, X (axes=(1, 2, 0)), so along X, Y, Z the deepest level strides 4, 2, 4
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    torch.manual_seed(0)
    network = PlainConvUNet(input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv3d,
                            kernel_sizes=3, strides=strides, n_conv_per_stage=1, num_classes=3,
                            n_conv_per_stage_decoder=1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                            norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU).eval()  # fmt: skip
    wrapped = NnUNetFeatureNetwork(network, strides, [0, 1, 2, 3], (1, 2, 0), [0, 1, 2])
    assert wrapped.feature_strides_per_axis()["bottleneck"] == (4, 2, 4)
    assert wrapped.feature_strides_per_axis()["enc1"] == (2, 1, 2)
    box = torch.randn(1, 4, 16, 20, 12)  # the patch is its centre (8, 12, 4) with 4 voxels each side
    logits, features = WithContext(wrapped, 4)(box, return_features=True)
    whole_logits, whole = wrapped(box, return_features=True)
    torch.testing.assert_close(logits, whole_logits[:, :, 4:12, 4:16, 4:8])
    torch.testing.assert_close(features["bottleneck"], whole["bottleneck"][:, :, 1:3, 2:8, 1:2])
    torch.testing.assert_close(features["enc1"], whole["enc1"][:, :, 2:6, 4:16, 2:4])
    torch.testing.assert_close(features["dec0"], whole["dec0"][:, :, 4:12, 4:16, 4:8])
    assert WithContext(wrapped, 4).feature_channels() == wrapped.feature_channels()
    with pytest.raises(ValueError, match="multiple of the network's total stride"):
        WithContext(wrapped, 2)  # 2 is not a multiple of the stride 4 along X and Z
    with pytest.raises(ValueError, match="not larger than its context"):
        WithContext(wrapped, 8)(box)


def test_a_teacher_that_takes_context_refuses_a_batch_without_it():
    wrapped = NnUNetFeatureNetwork(tiny_network(), STRIDES, [0, 1, 2, 3], (0, 1, 2), [0, 1, 2])
    batch = _Batch()
    batch.context_images = None
    with pytest.raises(ValueError, match="takes 4 voxels of context"):
        LiveTeacher("nnunet_fold_0", WithContext(wrapped, 4), distils_outputs=False, context=4).run(batch)
    batch.context_images = torch.randn(1, 4, 16, 16, 16)
    logits = LiveTeacher("nnunet_fold_0", WithContext(wrapped, 4), distils_outputs=False, context=4).run(batch)
    assert logits.shape == (1, 3, 8, 8, 8)
