"""Loss functions for training students: one method per module, each citing its paper.

* :mod:`~distill.losses.dice_bce`: supervised soft Dice + BCE (regions) / Dice + CE (labels).
* :mod:`~distill.losses.kd_sigmoid`: KD for sigmoid regions from cached teacher probabilities.
* :mod:`~distill.losses.kd_softmax`: KD for softmax labels.
* :mod:`~distill.losses.kd_correction`: the teacher corrected where it contradicts the labels
  (knowledge adjustment, Wen et al., Neurocomputing 2021) or masked there.
* :mod:`~distill.losses.kd_balanced` and :mod:`~distill.losses.kd_dice`: region-balanced KD
  (extent-normalised KL; soft Dice between student and teacher maps).
* :mod:`~distill.losses.kd_teachers`: the mean KD over several teachers (TAKD, Mirzadeh et al.,
  AAAI 2020; DGKD, Son et al., ICCV 2021).
* :mod:`~distill.losses.graph_flow`: 3D graph-flow distillation (Zou et al., IEEE TMI 2022),
  with the :mod:`~distill.losses.paraphraser` autoencoder (Kim et al., NeurIPS 2018).
* :mod:`~distill.losses.region_affinity`: region affinity and importance maps (Qin et al.,
  IEEE TMI 2021).
* :mod:`~distill.losses.boundary`: boundary loss (Kervadec et al., Med Image Anal 2021).
* :mod:`~distill.losses.uncertainty_regression`: the distilled-uncertainty head's regression of
  the teacher ensemble's spread (after DUDES, Landgraf et al., PFG 2024).
* :mod:`~distill.losses.composite`: weighted, scheduled sum of terms with per-term logs.
* :mod:`~distill.losses.registry`: every loss by name (:data:`LOSSES`, :func:`build_loss`).

Losses are functions or small modules over tensors; none knows how a model is wired.
"""

from distill.losses.boundary import (
    boundary_loss,
    boundary_loss_from_regions,
    signed_distance_map,
    signed_distance_maps,
)
from distill.losses.composite import (
    CompositeLoss,
    LossTerm,
    MissingLossInputError,
    constant,
    ramp_in,
    step_on,
)
from distill.losses.dice_bce import (
    label_dice_ce_loss,
    region_bce_loss,
    region_dice_bce_loss,
    region_dice_loss,
    soft_dice_loss,
)
from distill.losses.graph_flow import (
    GraphFlowLoss,
    VariationGraph,
    edge_loss,
    pool_to_nodes,
    variation_graph,
    vertex_loss,
)
from distill.losses.kd_balanced import kd_sigmoid_region_balanced, region_extent
from distill.losses.kd_correction import CORRECTIONS, correct_teacher, kd_sigmoid_corrected, label_contradictions
from distill.losses.kd_dice import kd_soft_dice
from distill.losses.kd_sigmoid import kd_sigmoid, tempered_teacher_logits, uncertainty_weight
from distill.losses.kd_softmax import kd_softmax
from distill.losses.kd_teachers import BALANCES, kd_sigmoid_teachers, kd_softmax_teachers
from distill.losses.paraphraser import (
    Paraphraser,
    mean_reconstruction_loss,
    pretrain_paraphraser,
    reconstruction_loss,
)
from distill.losses.region_affinity import (
    importance_map,
    importance_map_loss,
    region_affinity,
    region_affinity_loss,
    region_prototypes,
)
from distill.losses.registry import LOSSES, UnknownLossError, build_loss
from distill.losses.uncertainty_regression import uncertainty_regression

__all__ = [
    "BALANCES",
    "CORRECTIONS",
    "LOSSES",
    "CompositeLoss",
    "GraphFlowLoss",
    "LossTerm",
    "MissingLossInputError",
    "Paraphraser",
    "UnknownLossError",
    "VariationGraph",
    "boundary_loss",
    "boundary_loss_from_regions",
    "build_loss",
    "constant",
    "correct_teacher",
    "edge_loss",
    "importance_map",
    "importance_map_loss",
    "kd_sigmoid",
    "kd_sigmoid_corrected",
    "kd_sigmoid_region_balanced",
    "kd_sigmoid_teachers",
    "kd_softmax",
    "kd_softmax_teachers",
    "kd_soft_dice",
    "label_contradictions",
    "label_dice_ce_loss",
    "mean_reconstruction_loss",
    "pool_to_nodes",
    "pretrain_paraphraser",
    "ramp_in",
    "reconstruction_loss",
    "region_affinity",
    "region_affinity_loss",
    "region_bce_loss",
    "region_dice_bce_loss",
    "region_dice_loss",
    "region_extent",
    "region_prototypes",
    "signed_distance_map",
    "signed_distance_maps",
    "soft_dice_loss",
    "step_on",
    "tempered_teacher_logits",
    "uncertainty_regression",
    "uncertainty_weight",
    "variation_graph",
    "vertex_loss",
]
