"""The paraphraser: a small 3D convolutional autoencoder over teacher feature maps.

Kim et al., "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018: an autoencoder trained, without labels, to reconstruct a teacher's feature
map; its encoder output (the "teacher factor") is what the student is asked to match.
Zou et al., "Graph Flow", IEEE TMI 2022 (arXiv:2203.08667) use the same module to purify
teacher features before graph-flow distillation (:mod:`distill.losses.graph_flow`), where
the encoder also maps the teacher's channel width to the width the loss compares.

Architecture (Factor Transfer's layout, in 3D, stride 1 so the grid is kept)::

    encoder: conv(C -> H) LReLU  conv(H -> F) LReLU  conv(F -> F) LReLU     factor (B, F, *S)
    decoder: conv(F -> F) LReLU  conv(F -> H) LReLU  conv(H -> C)           reconstruction (B, C, *S)

``C`` = teacher channels, ``F`` = factor channels, ``H`` = hidden channels (default ``C``),
LReLU slope 0.1, kernel ``k`` (default 3, padding ``k // 2``). Factor Transfer's decoder
ends with an activation too; here the last layer is linear so that features of either
sign (nnU-Net stages end in LeakyReLU after instance norm) can be reconstructed.
No normalisation layers, so train and eval modes compute the same function.

Pre-training (:func:`pretrain_paraphraser`): mean squared reconstruction error, Adam, on
teacher features the caller extracts (detached). Factor Transfer trains with an L2
reconstruction loss as well; the optimiser here is Distill's choice.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.1


class Paraphraser(nn.Module):
    """3D conv autoencoder ``(B, C, *S) -> (B, C, *S)`` whose encoder gives ``(B, F, *S)`` factors."""

    def __init__(
        self, in_channels: int, factor_channels: int, hidden_channels: int | None = None, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if min(in_channels, factor_channels) < 1:
            raise ValueError(f"channel counts must be >= 1, got in={in_channels}, factor={factor_channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        hidden = in_channels if hidden_channels is None else hidden_channels
        self.in_channels = in_channels
        self.factor_channels = factor_channels
        self.encoder = nn.Sequential(
            *_conv_act(in_channels, hidden, kernel_size),
            *_conv_act(hidden, factor_channels, kernel_size),
            *_conv_act(factor_channels, factor_channels, kernel_size),
        )
        self.decoder = nn.Sequential(
            *_conv_act(factor_channels, factor_channels, kernel_size),
            *_conv_act(factor_channels, hidden, kernel_size),
            _conv(hidden, in_channels, kernel_size),
        )

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher features ``(B, C, *S)`` -> factors ``(B, F, *S)``."""
        return self.encoder(features)

    def decode(self, factors: torch.Tensor) -> torch.Tensor:
        """Factors ``(B, F, *S)`` -> reconstructed features ``(B, C, *S)``."""
        return self.decoder(factors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``, same shape as ``features``."""
        return self.decode(self.encode(features))

    def frozen(self) -> Paraphraser:
        """Put the module in eval mode with every parameter's ``requires_grad`` off; returns it."""
        self.eval()
        self.requires_grad_(False)
        return self


def reconstruction_loss(paraphraser: Paraphraser, features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``features (B, C, *S)`` and their reconstruction (a scalar)."""
    return F.mse_loss(paraphraser(features), features)


@torch.no_grad()
def mean_reconstruction_loss(paraphraser: Paraphraser, batches: Iterable[torch.Tensor]) -> float:
    """Reconstruction MSE averaged over ``batches`` (each batch weighted equally), without gradients."""
    values = [reconstruction_loss(paraphraser, batch.detach()).item() for batch in batches]
    if not values:
        raise ValueError("no feature batches given")
    return sum(values) / len(values)


def pretrain_paraphraser(
    features_iterable: Iterable[torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    *,
    factor_channels: int | None = None,
    hidden_channels: int | None = None,
    kernel_size: int = 3,
    paraphraser: Paraphraser | None = None,
) -> Paraphraser:
    """Train a paraphraser to reconstruct teacher features; return it frozen (eval, no grads).

    Args:
        features_iterable: batches of teacher features ``(B, C, *S)`` (detached here). A
            re-iterable (e.g. a list) is cycled until ``steps`` updates are done; a one-shot
            iterator stops training early when it runs out.
        steps: number of optimiser updates, >= 0; 0 returns the initialised paraphraser
            frozen as it is (the "no pre-training" ablation, and timing runs).
        lr: Adam learning rate.
        factor_channels: width ``F`` of the factor space (required unless ``paraphraser``
            is given); set it to the width the graph-flow loss compares.
        hidden_channels, kernel_size: as in :class:`Paraphraser`.
        paraphraser: an existing module to continue training (its channel counts win;
            passing ``factor_channels`` as well is rejected).

    Raises:
        ValueError: ``steps < 0``, no feature batch at all, a batch whose channel count
            differs from the module's, or conflicting ``paraphraser``/``factor_channels``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if (paraphraser is None) == (factor_channels is None):
        raise ValueError("give exactly one of factor_channels (new paraphraser) or paraphraser (continue training)")
    batches = _cycled(features_iterable)
    first = next(batches, None)
    if first is None:
        raise ValueError("features_iterable yielded no feature batch")
    if paraphraser is None:
        paraphraser = Paraphraser(first.shape[1], factor_channels, hidden_channels, kernel_size).to(first.device)
    _check_feature_batch(first, paraphraser.in_channels)  # checked even when no step runs
    paraphraser.train()
    paraphraser.requires_grad_(True)
    optimiser = torch.optim.Adam(paraphraser.parameters(), lr=lr)
    for batch in itertools.islice(itertools.chain([first], batches), steps):
        _check_feature_batch(batch, paraphraser.in_channels)
        optimiser.zero_grad(set_to_none=True)
        reconstruction_loss(paraphraser, batch.detach()).backward()
        optimiser.step()
    return paraphraser.frozen()


def _cycled(features_iterable: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield from the iterable again and again while each pass yields something."""
    if iter(features_iterable) is features_iterable:  # a one-shot iterator: one pass only
        yield from features_iterable
        return
    while True:
        produced = False
        for batch in features_iterable:
            produced = True
            yield batch
        if not produced:
            return


def _check_feature_batch(batch: torch.Tensor, channels: int) -> None:
    if batch.dim() != 5 or batch.shape[1] != channels:
        raise ValueError(f"feature batches must be (B, {channels}, D, H, W), got {tuple(batch.shape)}")


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)


def _conv_act(in_channels: int, out_channels: int, kernel_size: int) -> tuple[nn.Module, nn.Module]:
    return _conv(in_channels, out_channels, kernel_size), nn.LeakyReLU(NEGATIVE_SLOPE)
