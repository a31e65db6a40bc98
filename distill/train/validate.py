"""Validation during training: whole held-out cases, scored against ground truth and teacher."""

from __future__ import annotations

import numpy as np
import torch

from distill.cache import TeacherCache
from distill.data.conventions import REGIONS
from distill.eval.dice import dice
from distill.eval.hausdorff import hd95
from distill.infer.sliding_window import predict_logits


def validate(model: torch.nn.Module, cache: TeacherCache, case_ids: list[str], device: torch.device,
             tile: tuple[int, int, int] | None = None) -> dict[str, float]:
    """Mean Dice/HD95 per region vs ground truth and Dice vs the teacher's thresholded maps.

    Keys: ``dice_gt/WT``, ``hd95_gt/WT``, ``dice_teacher/WT``, ... (ground-truth keys only when
    the cache has ground truth).
    """
    scores: dict[str, list[float]] = {}
    was_training = model.training
    model.eval()
    for case_id in case_ids:
        case = cache.read_case(case_id)
        predicted = _probabilities(model, case, device, tile) > 0.5
        teacher = case.probabilities > 0.5
        spacing = case.record.spacing
        for index, region in enumerate(REGIONS[: predicted.shape[0]]):
            scores.setdefault(f"dice_teacher/{region}", []).append(dice(predicted[index], teacher[index]))
            if case.regions is not None:
                scores.setdefault(f"dice_gt/{region}", []).append(dice(predicted[index], case.regions[index]))
                scores.setdefault(f"hd95_gt/{region}", []).append(hd95(predicted[index], case.regions[index], spacing))
    if was_training:
        model.train()
    return {key: float(np.mean(values)) for key, values in scores.items()}


def validation_probabilities(model: torch.nn.Module, cache: TeacherCache, case_ids: list[str], device: torch.device,
                             tile: tuple[int, int, int] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The student's region probabilities ``(K, *S)`` and the ground truth per case, predicted as
    :func:`validate` predicts (for threshold calibration, :mod:`distill.train.calibrate`)."""
    probabilities, truths = [], []
    was_training = model.training
    model.eval()
    for case_id in case_ids:
        case = cache.read_case(case_id)
        if case.regions is None:
            raise ValueError(f"validation case {case_id} has no ground truth in the cache")
        probabilities.append(_probabilities(model, case, device, tile))
        truths.append(case.regions)
    if was_training:
        model.train()
    return probabilities, truths


def _probabilities(model: torch.nn.Module, case, device: torch.device, tile) -> np.ndarray:
    """Sigmoid of the sliding-window logits of one cached case, ``(K, *S)`` float32."""
    images = torch.from_numpy(case.images[None]).to(device)
    logits = predict_logits(lambda x: model(x), images, tile)
    return torch.sigmoid(logits[0]).cpu().numpy()
