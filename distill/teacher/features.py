"""One nnU-Net fold network run live on Distill's training patches, with its features named.

Feature distillation (graph flow, region affinity) needs the teacher's intermediate maps, which
a cache of soft maps cannot hold. :class:`NnUNetFeatureNetwork` wraps a trained fold of an
nnU-Net v2 ``PlainConvUNet``-style network so that it can stand where a student stands in the
training loop: ``forward(x, return_features=True)`` on a Distill patch ``(B, 4, X, Y, Z)``
returns ``(logits (B, K, X, Y, Z), features)`` with the students' feature names:
``enc0 .. enc{S-2}`` (encoder stages), ``bottleneck`` (the last encoder stage) and
``dec{S-2} .. dec0`` (decoder stages; ``dec{i}`` shares the grid of ``enc{i}``).

What it takes care of, so that the network sees what it was trained on:

* channels in the dataset.json's order (Distill's are T1, T1ce, T2, FLAIR);
* axes: Distill's arrays are NIfTI voxel order (X, Y, Z); nnU-Net's SimpleITK reader reverses
  them and the plans may transpose them again (``transpose_forward``); features and logits are
  turned back to Distill's axes;
* padding to a multiple of the network's total stride (features cropped back to
  ``ceil(P / stride)``, logits to ``P``);
* logits in the order of the cache's channels (WT, TC, ET for region models).

Intensities are not renormalised: Distill's patches are z-scored per modality inside the brain
(nonzero) mask on the students' grid, and nnU-Net's ``ZScoreNormalization`` with
``use_mask_for_norm`` does the same on the same 2 mm grid when the cache used the nnU-Net raw
dataset's spacing; ``agreement_with_cache`` in the benchmarks measures how closely the live
logits match the cached soft maps.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distill.teacher.nnunet import _TRANSPOSED_READERS, NnUNetTeacher, NnUNetTeacherConfig, TeacherError


def feature_names(n_stages: int) -> list[str]:
    """Names in forward order for a network with ``n_stages`` encoder stages."""
    levels = n_stages - 1
    return [*(f"enc{i}" for i in range(levels)), "bottleneck", *(f"dec{i}" for i in reversed(range(levels)))]


def distill_to_network_axes(transposed_reader: bool, transpose_forward: Sequence[int]) -> tuple[int, int, int]:
    """For each spatial axis of the network's input, the Distill axis (0 = X) it holds."""
    reader = (2, 1, 0) if transposed_reader else (0, 1, 2)  # SimpleITK hands nnU-Net (Z, Y, X)
    return tuple(reader[axis] for axis in transpose_forward)  # type: ignore[return-value]


class NnUNetFeatureNetwork(nn.Module):
    """A frozen nnU-Net fold network with Distill's input/output conventions (module docstring).

    Args:
        network: the nnU-Net network (``encoder.stages`` and ``decoder.stages`` as in
            dynamic_network_architectures' ``PlainConvUNet``); deep supervision is switched off.
        strides: per encoder stage, its stride per network axis (the plans' ``strides``).
        channel_order: for each network input channel, the index of the Distill channel it takes.
        axes: :func:`distill_to_network_axes`.
        output_order: for each cache channel, the index of the network output channel it is.
    """

    def __init__(self, network: nn.Module, strides: Sequence[Sequence[int]], channel_order: Sequence[int],
                 axes: Sequence[int], output_order: Sequence[int]) -> None:  # fmt: skip
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        if hasattr(self.network, "decoder") and hasattr(self.network.decoder, "deep_supervision"):
            self.network.decoder.deep_supervision = False
        self.n_stages = len(strides)
        per_axis = [[int(s) for s in (stride if isinstance(stride, (list, tuple)) else [stride] * 3)]
                    for stride in strides]  # fmt: skip
        cumulative, running = [], [1, 1, 1]
        for stride in per_axis:
            running = [r * s for r, s in zip(running, stride)]
            cumulative.append(tuple(running))
        self._level_strides = cumulative  # network axes, per level
        self.channel_order = list(channel_order)
        self.axes = tuple(axes)
        self.inverse_axes = tuple(self.axes.index(i) for i in range(3))
        self.output_order = list(output_order)
        self._channels = self._probe_channels()

    # -- description, in the students' terms

    def _probe_channels(self) -> dict[str, int]:
        encoder = [int(stage_output_channels(stage)) for stage in self.network.encoder.stages]
        names = feature_names(self.n_stages)
        levels = self.n_stages - 1
        channels = {f"enc{i}": encoder[i] for i in range(levels)}
        channels["bottleneck"] = encoder[-1]
        for i in range(levels):
            channels[f"dec{i}"] = encoder[i]  # nnU-Net's decoder stage at level i has that level's width
        return {name: channels[name] for name in names}

    def feature_channels(self) -> dict[str, int]:
        return dict(self._channels)

    def feature_strides(self) -> dict[str, int]:
        """Stride per feature (the largest over axes: graph flow pools every map to a common node grid)."""
        levels = self.n_stages - 1
        by_level = [max(s) for s in self._level_strides]
        strides = {f"enc{i}": by_level[i] for i in range(levels)}
        strides["bottleneck"] = by_level[-1]
        strides.update({f"dec{i}": by_level[i] for i in range(levels)})
        return {name: strides[name] for name in feature_names(self.n_stages)}

    def feature_strides_per_axis(self) -> dict[str, tuple[int, int, int]]:
        """Stride per feature along each Distill axis (X, Y, Z): a plan may stride axes unequally."""
        return {name: tuple(self._level_strides[self._level_of(name)][self.axes.index(i)] for i in range(3))
                for name in feature_names(self.n_stages)}  # fmt: skip

    # -- running

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dim() != 5 or x.shape[1] != len(self.channel_order):
            raise ValueError(f"expected input (B, {len(self.channel_order)}, X, Y, Z), got {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        inputs = x[:, self.channel_order].permute(0, 1, *(2 + a for a in self.axes))
        total = self._level_strides[-1]
        pad = [(-n) % t for n, t in zip(inputs.shape[2:], total)]
        if any(pad):
            # F.pad lists the last axis first
            inputs = F.pad(inputs, [p for amount in reversed(pad) for p in (0, amount)])
        captured: dict[str, torch.Tensor] = {}
        hooks = self._hooks(captured) if return_features else []
        try:
            logits = self.network(inputs)
        finally:
            for hook in hooks:
                hook.remove()
        logits = self._to_distill(logits, size, stride=(1, 1, 1))[:, self.output_order]
        if not return_features:
            return logits
        features = OrderedDict()
        for name in feature_names(self.n_stages):
            level = self._level_of(name)
            features[name] = self._to_distill(captured[name], size, self._level_strides[level])
        return logits, features

    def _level_of(self, name: str) -> int:
        return self.n_stages - 1 if name == "bottleneck" else int(name[3:])

    def _hooks(self, captured: dict[str, torch.Tensor]) -> list:
        levels = self.n_stages - 1
        hooks = []
        for index, stage in enumerate(self.network.encoder.stages):
            name = "bottleneck" if index == levels else f"enc{index}"
            hooks.append(stage.register_forward_hook(_store(captured, name)))
        for index, stage in enumerate(self.network.decoder.stages):
            hooks.append(stage.register_forward_hook(_store(captured, f"dec{levels - 1 - index}")))
        return hooks

    def _to_distill(self, tensor: torch.Tensor, size: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
        """Network axes -> Distill axes, cropped to ``ceil(size / stride)`` per axis."""
        distill = tensor.permute(0, 1, *(2 + a for a in self.inverse_axes))
        distill_stride = [stride[self.axes.index(i)] for i in range(3)]
        crop = [math.ceil(n / s) for n, s in zip(size, distill_stride)]
        return distill[:, :, : crop[0], : crop[1], : crop[2]].contiguous()


def _store(captured: dict[str, torch.Tensor], name: str):
    def hook(module, inputs, output):
        captured[name] = output

    return hook


def stage_output_channels(stage: nn.Module) -> int:
    """Output channels of an encoder stage: those of its last convolution."""
    convs = [m for m in stage.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise TeacherError(f"cannot tell the width of nnU-Net stage {type(stage).__name__}: no convolution in it")
    return convs[-1].out_channels


def nnunet_feature_network(model_dir: Path, fold: str, channels: Sequence[str], modalities: Sequence[str],
                           checkpoint: str = "checkpoint_final.pth", device: str = "cpu") -> NnUNetFeatureNetwork:
    """Fold ``fold`` of the nnU-Net model in ``model_dir`` as a :class:`NnUNetFeatureNetwork`.

    ``channels`` are the cache's output channels (e.g. WT, TC, ET) and ``modalities`` Distill's
    input channel names, both in the order the students use.

    Raises:
        TeacherError: the folder, fold or checkpoint is unusable, or the network has no
            ``encoder.stages`` / ``decoder.stages`` (only U-Net-style architectures expose features here).
    """
    teacher = NnUNetTeacher(NnUNetTeacherConfig(model_dir=model_dir, folds=(fold,), checkpoint=checkpoint,
                                                tta="none", device=device))  # fmt: skip
    network = copy.deepcopy(teacher.predictor.network)
    network.load_state_dict(teacher._fold_weights[teacher.folds[0]])
    if not (hasattr(network, "encoder") and hasattr(network.encoder, "stages") and hasattr(network, "decoder")):
        raise TeacherError(f"{model_dir}: {type(network).__name__} exposes no encoder/decoder stages to distil from")
    missing = [c for c in channels if c not in teacher.channels]
    if missing:
        raise TeacherError(f"{model_dir}: the network has no output channel {missing} (it has {teacher.channels})")
    strides = teacher.configuration_manager.network_arch_init_kwargs["strides"]
    reader = teacher.plans_manager.image_reader_writer_class.__name__
    return NnUNetFeatureNetwork(
        network.to(device), strides,
        channel_order=[list(modalities).index(m) for m in teacher.channel_order],
        axes=distill_to_network_axes(reader in _TRANSPOSED_READERS, teacher.plans_manager.transpose_forward),
        output_order=[teacher.channels.index(c) for c in channels],
    )  # fmt: skip


class WithContext(nn.Module):
    """A feature network run on a patch with ``context`` extra voxels on every side, its logits
    and features cropped back to the patch.

    A fold network given a bare 48³ patch sees far less than the 96x80x80 windows it was trained
    on, and its maps disagree with its own whole-volume prediction (Dice ~0.72 on the real-data
    protocol's fold 1, against ~0.97 with 16 voxels of context: ``benchmarks/realdata/LIVE_TEACHER.md``).
    ``forward(x)`` takes the box ``(B, C, *(P + 2·context))`` and returns what the network
    computes for its centre ``P``: logits ``(B, K, *P)`` and each feature at stride ``s`` cropped
    by ``context / s`` voxels, so ``context`` must be a multiple of every level's stride (the
    network's total stride) for the crop to fall on whole feature voxels.

    Raises:
        ValueError: ``context`` is negative or not a multiple of the total stride (at construction),
            or an input is not larger than ``2·context`` (at call).
    """

    def __init__(self, network: NnUNetFeatureNetwork, context: int) -> None:
        super().__init__()
        total = max(max(level) for level in network._level_strides)
        if context < 0 or any(context % s for s in network._level_strides[-1]):
            raise ValueError(f"teacher context must be a non-negative multiple of the network's total stride "
                             f"{total}; got {context}")  # fmt: skip
        self.network, self.context = network, int(context)

    def feature_channels(self) -> dict[str, int]:
        return self.network.feature_channels()

    def feature_strides(self) -> dict[str, int]:
        return self.network.feature_strides()

    def forward(self, x: torch.Tensor, return_features: bool = False):
        c = self.context
        if any(n <= 2 * c for n in x.shape[2:]):
            raise ValueError(f"input {tuple(x.shape)} is not larger than its context of {c} voxels each side")
        patch = [n - 2 * c for n in x.shape[2:]]
        outputs = self.network(x, return_features=return_features)
        logits, features = outputs if return_features else (outputs, None)
        logits = logits[(slice(None), slice(None), *(slice(c, c + n) for n in patch))]
        if not return_features:
            return logits
        strides = self.network.feature_strides_per_axis()
        cropped = OrderedDict()
        for name, feature in features.items():
            box = (slice(c // s, c // s + math.ceil(n / s)) for n, s in zip(patch, strides[name]))
            cropped[name] = feature[(slice(None), slice(None), *box)]
        return logits, cropped


__all__ = ["NnUNetFeatureNetwork", "WithContext", "distill_to_network_axes", "feature_names", "nnunet_feature_network",
           "stage_output_channels"]
