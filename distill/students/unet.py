"""Tiny 3D U-Nets: the student family.

A student is an encoder-decoder with skips, small enough (~1k-100k parameters) to segment a
whole BraTS volume (4 x 240 x 240 x 155) in about a second on two CPU threads.

Why the default first stage is strided: parameters are a poor proxy for speed, and the
convolutions that run at full resolution decide the cost. A U-Net whose first stage works at
full resolution spends most of its time there (two full-resolution conv layers made a 32k
U-Net ~8x slower than one with a strided first stage, at the same parameter count). With
``stem_stride=2`` the first conv already downsamples, every stage works at 1/2 resolution or
coarser, and only the output head touches full resolution (27 * w0 * K / 8 MACs per voxel).

Layout, for ``widths = (w0, ..., wD)`` and stem stride ``s`` (1 or 2)::

    input (B, C_in, *S), zero-padded so every size is a multiple of ``divisor = s * 2**D``
    enc0        stride s          w0 channels   first conv has stride s
    enc1        stride 2s         w1            first conv has stride 2
    ...
    enc{D-1}    stride s*2**(D-1)
    bottleneck  stride s*2**D     wD
    dec{D-1}    stride s*2**(D-1) w{D-1}        upsample, concatenate enc{D-1}, convs
    ...
    dec0        stride s          w0
    head        stride 1          K             upsample by s (if s = 2) and project to K logits
    logits cropped back to (B, K, *S)

Optional distilled-uncertainty head (``uncertainty_head=True``): a 3x3x3 conv from ``dec0`` to K
channels at ``dec0``'s resolution, upsampled trilinearly by ``s``; its output, through
:func:`uncertainty_map`, predicts the teacher ensemble's per-voxel standard deviation of each
region's probability (the spread the teacher cache stores, in [0, 0.5]). It costs
``27 * w0 * K + K`` parameters (327 for ``w0 = 4``, K = 3). Off by default, and then nothing of the
network changes: the head is built after every other layer is initialised, so a student
with the head has the same initial segmentation weights as one without, for the same seed.

Feature names (``return_features=True``), in the order they are computed:
``enc0 .. enc{D-1}, bottleneck, dec{D-1} .. dec0``. ``enc{i}`` and ``dec{i}`` share stride
and channel count, so a shallow/deep pair for graph-flow distillation can be named directly,
e.g. ``("enc0", "bottleneck")``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.outputs import OUTPUT_KINDS, SIGMOID, SOFTMAX  # a student's output kind is its teacher's
from distill.errors import DistillError

CONV_TYPES = ("plain", "separable")
NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("leakyrelu", "relu", "gelu")
UPSAMPLES = ("transpose", "trilinear")
STEM_STRIDES = (1, 2)
LEAKY_SLOPE = 0.01  # nnU-Net's slope: the teachers were trained with it
#: The largest standard deviation a quantity in [0, 1] can have (a Bernoulli at p = 1/2): the
#: range of the teacher cache's uncertainty map, and of the distilled head's output.
MAX_UNCERTAINTY = 0.5


class StudentConfigError(DistillError):
    """A student configuration names an unknown option or an impossible shape."""


@dataclass(frozen=True)
class StudentConfig:
    """Everything needed to rebuild a student; stored as JSON in the model card and export package.

    Attributes:
        family: registry name the config came from (informational; the fields define the net).
        in_channels: input modalities (4 for BraTS).
        out_channels: K logits; 3 region channels for sigmoid teachers, label count for softmax.
        output_kind: ``"sigmoid"`` or ``"softmax"``; follows the teacher (the net outputs logits
            either way, :meth:`StudentUNet.probabilities` applies the matching non-linearity).
        widths: channels per stage, shallow to deep; ``len(widths) - 1`` downsamplings after the stem.
        convs_per_stage: conv layers in every encoder and decoder stage (>= 1); in the encoder
            the first of them is the strided one.
        conv: ``"plain"`` 3x3x3 convs, or ``"separable"`` (depthwise 3x3x3 + pointwise 1x1x1)
            everywhere except the stem conv, which stays plain.
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"``.
        activation: ``"leakyrelu"`` (slope 0.01), ``"relu"`` or ``"gelu"``.
        stem_stride: 2 (default) makes the first conv downsample so no stage runs at full
            resolution; 1 gives the classic U-Net whose first stage runs at full resolution.
        upsample: decoder upsampling, ``"transpose"`` (2x2x2 stride-2 transposed conv) or
            ``"trilinear"`` (1x1x1 conv, then trilinear resize; the two commute, and projecting
            first interpolates fewer channels). The full-resolution head is always a transposed conv.
        deep_supervision: must stay ``False``; kept so a stored config states it explicitly.
        uncertainty_head: add the distilled-uncertainty head (module docstring). Written by
            :meth:`to_dict` only when ``True``, so the configs (and cards, manifests) of students
            without it read exactly as before the field existed.
    """

    family: str = "unet"
    in_channels: int = 4
    out_channels: int = 3
    output_kind: str = SIGMOID
    widths: tuple[int, ...] = (4, 8, 16, 32)
    convs_per_stage: int = 1
    conv: str = "plain"
    norm: str = "instance"
    activation: str = "leakyrelu"
    stem_stride: int = 2
    upsample: str = "transpose"
    deep_supervision: bool = False
    uncertainty_head: bool = False

    def __post_init__(self) -> None:
        # Lists arrive from JSON; freeze them so configs hash and compare by value.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        self._validate()

    def _validate(self) -> None:
        choices = {
            "output_kind": OUTPUT_KINDS, "conv": CONV_TYPES, "norm": NORMS,
            "activation": ACTIVATIONS, "upsample": UPSAMPLES, "stem_stride": STEM_STRIDES,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise StudentConfigError(f"student {name}={getattr(self, name)!r} is not one of {allowed}")
        if len(self.widths) < 2:
            raise StudentConfigError(f"student widths {self.widths} need 2 stages or more (encoder, bottleneck)")
        if min(self.widths) < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise StudentConfigError(
                f"student channel counts must be >= 1 "
                f"(widths {self.widths}, in {self.in_channels}, out {self.out_channels})"
            )
        if self.convs_per_stage < 1:
            raise StudentConfigError(f"student convs_per_stage must be >= 1, got {self.convs_per_stage}")
        if self.output_kind == SOFTMAX and self.out_channels < 2:
            raise StudentConfigError("a softmax student needs at least 2 output channels")
        if self.deep_supervision:
            raise StudentConfigError("students have no deep supervision (the distillation losses use the final logits)")

    @property
    def depth(self) -> int:
        """Number of 2x downsamplings after the stem (= len(widths) - 1)."""
        return len(self.widths) - 1

    @property
    def divisor(self) -> int:
        """Every spatial size is padded to a multiple of this (total stride of the bottleneck)."""
        return self.stem_stride * 2**self.depth

    def replace(self, **changes: Any) -> StudentConfig:
        """A copy with some fields changed (validated again)."""
        return StudentConfig(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (widths as a list; ``uncertainty_head`` only when set)."""
        data = {**asdict(self), "widths": list(self.widths)}
        if not self.uncertainty_head:
            del data["uncertainty_head"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StudentConfigError(f"unknown student config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


# ---------------------------------------------------------------------------------------------
# Building blocks


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer over ``channels``; ``"group"`` uses up to 8 groups that divide ``channels``."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def make_activation(kind: str) -> nn.Module:
    if kind == "leakyrelu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)  # in place is safe: it follows a fresh norm/conv output
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.GELU()


def make_conv(kind: str, in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Module:
    """3x3x3 conv, or its depthwise-separable version (depthwise 3x3x3, then pointwise 1x1x1).

    Padding 1 with stride 2 maps size ``n`` to ``ceil(n / 2)``; inputs are padded to the divisor,
    so every size stays even down to the bottleneck and upsampling doubles it back exactly.
    """
    if kind == "plain":
        return nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
    return nn.Sequential(
        nn.Conv3d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False),
        nn.Conv3d(in_ch, out_ch, 1, bias=bias),
    )


class ConvNormAct(nn.Sequential):
    """conv -> norm -> activation: ``(B, in_ch, *S) -> (B, out_ch, *S / stride)``; ``conv`` overrides the config's."""

    def __init__(self, config: StudentConfig, in_ch: int, out_ch: int, stride: int = 1, conv: str | None = None):
        # Every norm subtracts a mean and adds its own shift, so a conv bias before it is wasted.
        super().__init__(
            make_conv(conv or config.conv, in_ch, out_ch, stride, bias=config.norm == "none"),
            make_norm(config.norm, out_ch),
            make_activation(config.activation),
        )


def conv_stage(config: StudentConfig, in_ch: int, out_ch: int, stride: int, first_conv: str | None = None):
    """``convs_per_stage`` ConvNormAct layers; the first changes channels and stride (its conv type may differ)."""
    layers = [ConvNormAct(config, in_ch, out_ch, stride, conv=first_conv)]
    layers += [ConvNormAct(config, out_ch, out_ch) for _ in range(config.convs_per_stage - 1)]
    return nn.Sequential(*layers)


class Upsample2x(nn.Module):
    """``(B, in_ch, *S) -> (B, out_ch, *2S)``: a 2x2x2 stride-2 transposed conv, or 1x1x1 conv + trilinear.

    ``kernel=3`` (used by the output head) makes the transposed conv blend neighbouring coarse
    voxels, so the full-resolution logits are not blocky 2x2x2 copies; there is no conv after
    the head to smooth them, unlike in the decoder.
    """

    def __init__(self, mode: str, in_ch: int, out_ch: int, kernel: int = 2, bias: bool = False) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            # kernel 3, padding 1, output_padding 1 also gives exactly 2x the size.
            pad, out_pad = (0, 0) if kernel == 2 else (1, 1)
            self.proj = nn.ConvTranspose3d(
                in_ch, out_ch, kernel, stride=2, padding=pad, output_padding=out_pad, bias=bias
            )
        else:
            self.proj = nn.Conv3d(in_ch, out_ch, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.mode == "trilinear":
            x = F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)
        return x


class DecoderStage(nn.Module):
    """Upsample the deeper features, concatenate the skip, convs: ``(B, deep, *S/2), (B, ch, *S) -> (B, ch, *S)``."""

    def __init__(self, config: StudentConfig, deep_ch: int, ch: int) -> None:
        super().__init__()
        self.up = Upsample2x(config.upsample, deep_ch, ch)
        self.convs = conv_stage(config, 2 * ch, ch, stride=1)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(deep), skip], dim=1))


# ---------------------------------------------------------------------------------------------
# Padding: the one place that makes any input size work


def run_padded(body: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]],
               x: torch.Tensor, divisor: int, feature_strides: Mapping[str, int] | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Zero-pad ``x`` at the far end of each spatial axis to a multiple of ``divisor``, run ``body``, crop back.

    The first axis is padded to at least ``2 * divisor``, so the bottleneck never has a single voxel.

    Args:
        body: maps the padded ``(B, C, *P)`` to ``(logits (B, K, *P), features name -> (B, c, *P / stride))``.
        x: ``(B, C, D, H, W)``, any spatial size.
        divisor: every padded size is a multiple of it.
        feature_strides: stride of each named feature; given, features are cropped to
            ``ceil(S / stride)``, the positions that see real input; ``None`` drops them (the
            logits-only path stays a plain graph for export).

    Returns:
        ``(logits (B, K, D, H, W), features)``; ``features`` is empty without ``feature_strides``.

    Export notes (each keeps the spatial axes dynamic): sizes are read from ``x.shape`` at run
    time and combined with ``+ - * //`` only, which both ONNX exporters record as graph ops;
    the padded size is written ``ceil(S / divisor) * divisor`` so torch.export can prove every
    stride-2 level even (skips line up); and cropping is a negative pad, because slicing makes
    torch.export specialise on whether the input was already a multiple of the divisor. With
    torch.export, declare the axes ``Dim.DYNAMIC`` and export an example that is not a multiple
    of the divisor; inputs no larger than the divisor on some axis also need
    ``torch.fx.experimental._config.patch(backed_size_oblivious=True)`` around the export (else
    torch.export assumes no bottleneck axis is 1). The TorchScript exporter needs neither.
    """
    sizes = x.shape[2:]
    blocks = [(size + divisor - 1) // divisor for size in sizes]  # bottleneck voxels per axis
    # Norm layers refuse a single voxel (even at inference), so an input no larger than the
    # divisor on every axis gets a second block on the first axis: k + 1 // k == max(k, 2) for
    # k >= 1, written without max() so that it traces.
    blocks[0] = blocks[0] + 1 // blocks[0]
    padded_sizes = [block * divisor for block in blocks]
    logits, features = body(_pad_far_end(x, [p - s for p, s in zip(padded_sizes, sizes)]))
    logits = _pad_far_end(logits, [s - p for p, s in zip(padded_sizes, sizes)])
    cropped: dict[str, torch.Tensor] = OrderedDict()
    for name, feature in features.items() if feature_strides is not None else ():
        stride = feature_strides[name]
        # The feature grid covers P / stride voxels; keep the ceil(S / stride) that see real input.
        trims = [(s + stride - 1) // stride - p // stride for p, s in zip(padded_sizes, sizes)]
        cropped[name] = _pad_far_end(feature, trims)
    return logits, cropped


def _pad_far_end(t: torch.Tensor, amounts: list) -> torch.Tensor:
    """Zero-pad (amount > 0) or crop (amount < 0) the far end of the 3 spatial axes of ``(B, C, D, H, W)``."""
    # F.pad lists pads from the last axis backwards: (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi).
    return F.pad(t, (0, amounts[2], 0, amounts[1], 0, amounts[0]))


# ---------------------------------------------------------------------------------------------
# The network


class StudentUNet(nn.Module):
    """A tiny 3D U-Net built from a :class:`StudentConfig` (see the module docstring for the layout).

    ``forward(x)`` returns logits ``(B, K, *S)`` for any spatial size ``S``;
    ``forward(x, return_features=True)`` returns ``(logits, features)``, ``features`` an ordered
    dict ``name -> (B, c, *ceil(S / stride))`` (names and order in :meth:`feature_channels`);
    with ``return_uncertainty=True`` (a student with ``uncertainty_head`` only) the head's
    logits ``(B, K, *S)`` come last: ``(logits, uncertainty_logits)`` or
    ``(logits, features, uncertainty_logits)``; :func:`uncertainty_map` turns them into standard
    deviations.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        # The stem conv is always plain: a depthwise conv over 4 modalities mixes nothing, and on
        # CPU the separable stem took ~3x longer than a plain one on a whole volume (it runs on
        # the most voxels of any layer); MobileNets keep a dense first conv for the same reason.
        stem = conv_stage(config, config.in_channels, w[0], config.stem_stride, first_conv="plain")
        deeper = [conv_stage(config, w[i - 1], w[i], stride=2) for i in range(1, config.depth)]
        self.encoders = nn.ModuleList([stem, *deeper])
        self.bottleneck = conv_stage(config, w[-2], w[-1], stride=2)
        # decoders[i] produces dec{i}; they run from the deepest (i = D-1) to dec0.
        self.decoders = nn.ModuleList(DecoderStage(config, w[i + 1], w[i]) for i in range(config.depth))
        self.head = self._make_head()
        self.apply(init_weights)
        # Built (and initialised) after everything else, so the RNG draws of the layers above are
        # the same with and without it; None adds nothing to the state dict.
        self.uncertainty_head = self._make_uncertainty_head() if config.uncertainty_head else None
        if self.uncertainty_head is not None:
            self.uncertainty_head.apply(init_weights)

    def _make_head(self) -> nn.Module:
        """dec0 features -> K logits at full resolution: a 1x1x1 conv, or a 2x upsample if the stem strided.

        The upsampling head is always a 3x3x3 transposed conv (whatever ``upsample`` says): it
        writes the only full-resolution tensor besides the input, and on CPU it was faster than a
        1x1x1 conv + trilinear resize there, with smoother logits than a 2x2x2 kernel.
        """
        c = self.config
        if c.stem_stride == 1:
            return nn.Conv3d(c.widths[0], c.out_channels, 1)
        return Upsample2x("transpose", c.widths[0], c.out_channels, kernel=3, bias=True)

    def _make_uncertainty_head(self) -> nn.Module:
        """dec0 features -> K uncertainty logits: a 3x3x3 conv at dec0's resolution, then a trilinear 2x
        upsample if the stem strided (the teacher's spread varies smoothly, so the cheap resize
        loses little, and the full-resolution grid gets no second conv)."""
        c = self.config
        conv = nn.Conv3d(c.widths[0], c.out_channels, 3, padding=1)
        if c.stem_stride == 1:
            return conv
        return nn.Sequential(conv, nn.Upsample(scale_factor=2.0, mode="trilinear", align_corners=False))

    @property
    def divisor(self) -> int:
        return self.config.divisor

    def feature_channels(self) -> dict[str, int]:
        """Channels of every named feature, in forward order: enc0.., bottleneck, dec{D-1}..dec0."""
        depth = self.config.depth
        return {name: self.config.widths[feature_level(name, depth)] for name in feature_names(depth)}

    def feature_strides(self) -> dict[str, int]:
        """Stride (input voxels per feature voxel, per axis) of every named feature, same order."""
        depth = self.config.depth
        return {name: self.config.stem_stride * 2 ** feature_level(name, depth) for name in feature_names(depth)}

    def _body(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Padded ``(B, C, *P)`` -> ``(logits (B, K, *P), features)``; every P a multiple of the divisor."""
        features: dict[str, torch.Tensor] = OrderedDict()
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            features[f"enc{i}"] = x
            skips.append(x)
        x = self.bottleneck(x)
        features["bottleneck"] = x
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](x, skips[i])
            features[f"dec{i}"] = x
        if self.uncertainty_head is None:
            return self.head(x), features
        # one tensor of 2K channels, so run_padded crops both outputs together
        return torch.cat([self.head(x), self.uncertainty_head(x)], dim=1), features

    def forward(self, x: torch.Tensor, return_features: bool = False, return_uncertainty: bool = False) -> Any:
        """``(B, C_in, *S)`` -> logits ``(B, K, *S)``; ``features`` and the uncertainty logits follow
        when asked for (class docstring)."""
        # Skipped while tracing: the tracer would bake the comparison into the graph as a constant.
        if not torch.jit.is_tracing() and (x.dim() != 5 or x.shape[1] != self.config.in_channels):
            raise ValueError(f"expected input (B, {self.config.in_channels}, D, H, W), got {tuple(x.shape)}")
        if return_uncertainty and self.uncertainty_head is None:
            raise ValueError("this student has no uncertainty head (StudentConfig.uncertainty_head is False)")
        strides = self.feature_strides() if return_features else None
        logits, features = run_padded(self._body, x, self.divisor, strides)
        uncertainty = None
        if self.uncertainty_head is not None:
            k = self.config.out_channels
            logits, uncertainty = logits[:, :k], logits[:, k:]
        outputs = (logits, *((features,) if return_features else ()), *((uncertainty,) if return_uncertainty else ()))
        return outputs if len(outputs) > 1 else logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per channel for region students, softmax over channels otherwise."""
        return torch.sigmoid(logits) if self.config.output_kind == SIGMOID else torch.softmax(logits, dim=1)


def uncertainty_map(uncertainty_logits: torch.Tensor) -> torch.Tensor:
    """The head's logits -> the predicted standard deviation ``MAX_UNCERTAINTY * sigmoid(z)``, in [0, 0.5].

    The same units as the teacher cache's uncertainty (a standard deviation of probabilities);
    :func:`distill.losses.uncertainty_regression` trains ``z`` against it.
    """
    return MAX_UNCERTAINTY * torch.sigmoid(uncertainty_logits)


def feature_names(depth: int) -> list[str]:
    """Stage names in forward order: ``enc0 .. enc{depth-1}, bottleneck, dec{depth-1} .. dec0``."""
    return [f"enc{i}" for i in range(depth)] + ["bottleneck"] + [f"dec{i}" for i in reversed(range(depth))]


def feature_level(name: str, depth: int) -> int:
    """Resolution level of a stage: ``i`` for ``enc{i}``/``dec{i}``, ``depth`` for the bottleneck."""
    return depth if name == "bottleneck" else int(name[3:])


def init_weights(module: nn.Module) -> None:
    """He-normal conv weights for leaky-ReLU nets (as nnU-Net does), zero biases."""
    # Meta-device copies (parameter and MAC counting) have no values to initialise.
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and not module.weight.is_meta:
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
