"""3D graph-flow distillation, after Zou et al., "Graph Flow: Cross-layer Graph Flow
Distillation for Dual Efficient Medical Image Segmentation", IEEE TMI 2022
(arXiv:2203.08667).

The paper transfers a cross-layer "variation graph" built on a shallow and a deep feature
stage from teacher to student, with a vertex and an edge loss term, after purifying the
teacher features with a pre-trained autoencoder (the paraphraser of Factor Transfer; see
:mod:`distill.losses.paraphraser`). The authors' public code is 2D and the file with the
graph criterion is missing from it, so the exact formulas below are Distill's, written
from the paper's description. This module implements only the graph term; the paper's
adversarial discriminator and logit KD are separate (logit KD: :mod:`kd_sigmoid`).

Definitions implemented (one network, one sample; ``s`` shallow, ``d`` deep stage):

1. Projection to a common width ``E`` (``embed_channels``).
   Student: per stage a learnable 1x1x1 convolution without bias (the "translator"),
   owned by this module and trained with the student; or the identity
   (``translate_student=False``, widths must already be ``E``).
   Teacher: per stage the encoder of a frozen, pre-trained :class:`Paraphraser` whose
   factor width is ``E``; or the identity where the stage is already ``E`` wide.
2. Nodes. Each projected stage is average-pooled (``adaptive_avg_pool3d``) to the same
   grid of ``n1 x n2 x n3 = N`` cells (``nodes_per_axis``, default 4³ = 64). Cell ``i``
   of the shallow and of the deep stage cover the same part of the patch, so node ``i``
   has a shallow embedding ``a_i`` and a deep embedding ``b_i`` in R^E. Student and teacher
   stages may have different resolutions: pooling to one grid aligns them. The student
   translator is applied after pooling (it is linear, so this equals pooling after it, at a
   fraction of the cost); the teacher encoder runs at full resolution, then is pooled.
3. Normalisation. ``â_i = a_i / ||a_i||``, ``b̂_i = b_i / ||b_i||`` (L2 over channels; a zero
   vector stays zero).
4. Vertices: the per-node flow ``f_i = b̂_i - â_i``, how the representation of a location
   changes from the shallow to the deep stage.
5. Edges: the cross-layer affinity ``A_ij = <â_i, b̂_j>``, an ``N x N`` matrix of cosine
   similarities between every shallow node and every deep node.
6. Loss terms, averaged over the batch::

       vertex = mean_i ||f_i^S - f_i^T||²          (sum over the E channels), in [0, 16]
       edge   = mean_ij (A_ij^S - A_ij^T)²                                   in [0, 4]
       total  = vertex_weight * vertex + edge_weight * edge

Why these choices: the paper describes the variation graph as capturing the flow of
salience features between layers, as vertices and edges; the paper's figures and text do
not fix the node set, the distance or the normalisation. Spatial cells as nodes keep
the correspondence between student and teacher nodes free (the same location), and a
fixed node count makes the cost independent of the patch size. Cosine normalisation makes
the terms bounded and independent of feature scale, which differs by orders of magnitude
between a 30 M-parameter teacher and a 50 k-parameter student. The edge term compares
only angles inside each network, so it needs no channel correspondence at all; the
vertex term compares flow vectors channel by channel, which the translator (and the
paraphraser's factor space) is there to align.

Properties (tested in ``tests/unit/test_graph_flow.py``):

* Both terms are 0 when the projected student features equal the projected teacher
  features, and positive when the normalised node embeddings differ.
* Invariant to multiplying any of the four projected feature maps by a positive number
  (indeed by any positive number per node), because every embedding is L2-normalised.
  With the bias-free translator this also holds for the raw student features.
* Invariant to one permutation of the nodes applied to all four node sets (e.g. the same
  flip of every feature map along an axis of the node grid); permuting the student's nodes
  alone changes the loss.
* The edge term is invariant to an orthogonal change of basis ``Q`` of the student's
  embedding space applied to both of its stages; the vertex term is not.

Trainable parameters: the student translators. The caller must give
``[p for p in loss.parameters() if p.requires_grad]`` to the optimiser and save the
module's state with the student's. Teacher tensors never receive gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses._tensors import compute_dtype
from distill.losses.paraphraser import Paraphraser

DEFAULT_NODES_PER_AXIS = 4


class VariationGraph(NamedTuple):
    """One network's variation graph: per-node flows and the cross-layer affinity."""

    flow: torch.Tensor  # (B, N, E): b̂_i - â_i
    affinity: torch.Tensor  # (B, N, N): <â_i, b̂_j>


def pool_to_nodes(features: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool ``(B, C, D, H, W)`` features to ``grid`` cells; return node embeddings ``(B, N, C)``.

    Raises:
        ValueError: not 5D, or a feature axis shorter than the grid along it (pooling
        would have to repeat voxels).
    """
    if features.dim() != 5:
        raise ValueError(f"features must be (B, C, D, H, W), got shape {tuple(features.shape)}")
    if any(size < cells for size, cells in zip(features.shape[2:], grid)):
        raise ValueError(
            f"feature grid {tuple(features.shape[2:])} is coarser than the node grid {grid}; "
            "lower nodes_per_axis or use a finer stage"
        )
    pooled = F.adaptive_avg_pool3d(features, grid)
    return pooled.flatten(2).transpose(1, 2)


def variation_graph(shallow_nodes: torch.Tensor, deep_nodes: torch.Tensor) -> VariationGraph:
    """Flows ``b̂ - â`` and cross-layer affinity ``â b̂ᵀ`` of node embeddings ``(B, N, E)`` each."""
    if shallow_nodes.shape != deep_nodes.shape:
        raise ValueError(
            f"shallow nodes {tuple(shallow_nodes.shape)} and deep nodes {tuple(deep_nodes.shape)} must match "
            "(same node grid and embedding width)"
        )
    dtype = compute_dtype(shallow_nodes, deep_nodes)
    shallow_unit = F.normalize(shallow_nodes.to(dtype), dim=-1)
    deep_unit = F.normalize(deep_nodes.to(dtype), dim=-1)
    return VariationGraph(flow=deep_unit - shallow_unit, affinity=shallow_unit @ deep_unit.transpose(1, 2))


def vertex_loss(student: VariationGraph, teacher: VariationGraph) -> torch.Tensor:
    """``mean over batch and nodes of ||f^S - f^T||²`` (a scalar in [0, 16])."""
    _check_graphs_match(student, teacher)
    return (student.flow - teacher.flow).pow(2).sum(-1).mean()


def edge_loss(student: VariationGraph, teacher: VariationGraph) -> torch.Tensor:
    """``mean over batch and node pairs of (A^S - A^T)²`` (a scalar in [0, 4])."""
    _check_graphs_match(student, teacher)
    return (student.affinity - teacher.affinity).pow(2).mean()


class GraphFlowLoss(nn.Module):
    """Vertex and edge terms of the 3D variation graph (see the module docstring).

    Args:
        student_channels: ``(shallow, deep)`` channel counts of the student stages.
        teacher_channels: ``(shallow, deep)`` channel counts of the teacher stages.
        embed_channels: the common width ``E`` in which graphs are compared.
        nodes_per_axis: node grid, an int ``n`` (``n³`` nodes) or three ints.
        teacher_paraphrasers: ``(shallow, deep)``, each a pre-trained
            :class:`Paraphraser` (its encoder projects the teacher stage to ``E``) or
            ``None`` for the identity. They are frozen here.
        translate_student: learn a 1x1x1 bias-free projection per student stage; if
            ``False`` the student stages must already be ``E`` wide.
        vertex_weight, edge_weight: non-negative weights of the two terms.

    ``forward(student_shallow, student_deep, teacher_shallow, teacher_deep)`` takes
    ``(B, C, D, H, W)`` feature maps (the four may have different channel counts and grids,
    the batch size must agree) and returns ``{"vertex": vertex_weight * vertex,
    "edge": edge_weight * edge}``, two scalars whose sum is the loss.

    Raises (at construction):
        ValueError: a paraphraser whose input or factor width does not fit, a teacher
        stage without paraphraser whose width is not ``E``, ``translate_student=False``
        with a student stage not ``E`` wide, non-positive sizes, negative weights.
    """

    def __init__(
        self,
        *,
        student_channels: tuple[int, int],
        teacher_channels: tuple[int, int],
        embed_channels: int,
        nodes_per_axis: int | tuple[int, int, int] = DEFAULT_NODES_PER_AXIS,
        teacher_paraphrasers: tuple[Paraphraser | None, Paraphraser | None] = (None, None),
        translate_student: bool = True,
        vertex_weight: float = 1.0,
        edge_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_channels < 1:
            raise ValueError(f"embed_channels must be >= 1, got {embed_channels}")
        if vertex_weight < 0 or edge_weight < 0:
            raise ValueError(f"term weights must be >= 0, got vertex={vertex_weight}, edge={edge_weight}")
        if len(teacher_paraphrasers) != 2:
            raise ValueError("teacher_paraphrasers must be a pair (shallow, deep); use None for an identity stage")
        self.grid = _node_grid(nodes_per_axis)
        self.student_channels = _pair("student_channels", student_channels)
        self.teacher_channels = _pair("teacher_channels", teacher_channels)
        self.embed_channels = embed_channels
        self.vertex_weight = vertex_weight
        self.edge_weight = edge_weight
        self.student_projections = nn.ModuleList(
            _student_projection(stage, channels, embed_channels, translate_student)
            for stage, channels in zip(("shallow", "deep"), self.student_channels)
        )
        self.teacher_projections = nn.ModuleList(
            _teacher_projection(stage, channels, embed_channels, paraphraser)
            for stage, channels, paraphraser in zip(("shallow", "deep"), self.teacher_channels, teacher_paraphrasers)
        )

    def student_graph(self, shallow: torch.Tensor, deep: torch.Tensor) -> VariationGraph:
        """Pool, then translate, the student stages; returns their variation graph."""
        nodes = []
        _check_stage_widths("student", (shallow, deep), self.student_channels)
        for features, projection in zip((shallow, deep), self.student_projections):
            pooled = pool_to_nodes(features.to(compute_dtype(features)), self.grid)  # (B, N, C)
            nodes.append(_apply_pointwise(projection, pooled))
        return variation_graph(*nodes)

    @torch.no_grad()
    def teacher_graph(self, shallow: torch.Tensor, deep: torch.Tensor) -> VariationGraph:
        """Paraphrase (frozen encoder), then pool, the teacher stages; no gradients."""
        nodes = []
        _check_stage_widths("teacher", (shallow, deep), self.teacher_channels)
        for features, projection in zip((shallow, deep), self.teacher_projections):
            dtype = _parameter_dtype(projection, default=compute_dtype(features))
            nodes.append(pool_to_nodes(projection(features.detach().to(dtype)), self.grid))
        return variation_graph(*nodes)

    def forward(
        self,
        student_shallow: torch.Tensor,
        student_deep: torch.Tensor,
        teacher_shallow: torch.Tensor,
        teacher_deep: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        student = self.student_graph(student_shallow, student_deep)
        teacher = self.teacher_graph(teacher_shallow, teacher_deep)
        return {
            "vertex": self.vertex_weight * vertex_loss(student, teacher),
            "edge": self.edge_weight * edge_loss(student, teacher),
        }


def _check_stage_widths(network: str, stages: tuple[torch.Tensor, torch.Tensor], channels: tuple[int, int]) -> None:
    for stage, features, expected in zip(("shallow", "deep"), stages, channels):
        if features.dim() != 5 or features.shape[1] != expected:
            raise ValueError(
                f"{network} {stage} features must be (B, {expected}, D, H, W) as configured, "
                f"got {tuple(features.shape)}"
            )


def _check_graphs_match(student: VariationGraph, teacher: VariationGraph) -> None:
    if student.flow.shape != teacher.flow.shape:
        raise ValueError(
            f"student graph (batch, nodes, width) {tuple(student.flow.shape)} differs from the teacher's "
            f"{tuple(teacher.flow.shape)}"
        )


def _apply_pointwise(projection: nn.Module, nodes: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1x1 conv (or identity) to node embeddings ``(B, N, C)`` -> ``(B, N, E)``."""
    if isinstance(projection, nn.Conv3d):
        return nodes @ projection.weight.flatten(1).t().to(nodes.dtype)
    return projection(nodes)


def _parameter_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    parameter = next(module.parameters(), None)
    return default if parameter is None else parameter.dtype


def _student_projection(stage: str, channels: int, embed: int, translate: bool) -> nn.Module:
    if translate:
        return nn.Conv3d(channels, embed, kernel_size=1, bias=False)
    if channels != embed:
        raise ValueError(
            f"student {stage} stage has {channels} channels but embed_channels is {embed}; "
            "use translate_student=True to project it"
        )
    return nn.Identity()


def _teacher_projection(stage: str, channels: int, embed: int, paraphraser: Paraphraser | None) -> nn.Module:
    if paraphraser is None:
        if channels != embed:
            raise ValueError(
                f"teacher {stage} stage has {channels} channels but embed_channels is {embed}; "
                "pass a pre-trained paraphraser for it (see pretrain_paraphraser)"
            )
        return nn.Identity()
    if paraphraser.in_channels != channels or paraphraser.factor_channels != embed:
        raise ValueError(
            f"teacher {stage} paraphraser maps {paraphraser.in_channels} -> {paraphraser.factor_channels} "
            f"channels, but the stage has {channels} and embed_channels is {embed}"
        )
    return _FrozenEncoder(paraphraser.frozen())


class _FrozenEncoder(nn.Module):
    """The encoder half of a frozen paraphraser (stays in eval mode, never trains)."""

    def __init__(self, paraphraser: Paraphraser) -> None:
        super().__init__()
        self.paraphraser = paraphraser

    def train(self, mode: bool = True) -> _FrozenEncoder:
        super().train(False)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.paraphraser.encode(features)


def _node_grid(nodes_per_axis: int | tuple[int, int, int]) -> tuple[int, int, int]:
    grid = (nodes_per_axis,) * 3 if isinstance(nodes_per_axis, int) else tuple(nodes_per_axis)
    if len(grid) != 3 or any(int(n) < 1 for n in grid):
        raise ValueError(f"nodes_per_axis must be a positive int or three positive ints, got {nodes_per_axis}")
    return tuple(int(n) for n in grid)


def _pair(name: str, values: tuple[int, int]) -> tuple[int, int]:
    values = tuple(values)
    if len(values) != 2 or any(v < 1 for v in values):
        raise ValueError(f"{name} must be two positive channel counts (shallow, deep), got {values}")
    return values
