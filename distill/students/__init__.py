"""Student networks: tiny 3D U-Nets, their registry and their sizing.

    config = config_for_params("unet", 30_000)            # or config_for_ratio("unet", 0.002, teacher_params)
    model = build_student(config)
    logits = model(x)                                      # (B, K, *S), any S
    logits, features = model(x, return_features=True)      # features: "enc0".., "bottleneck", "dec{D-1}".."dec0"
    logits, u = model(x, return_uncertainty=True)          # StudentConfig(uncertainty_head=True) only
    print(describe_student(model, teacher_params))
"""

from distill.students.registry import available_students, build_student, register, scaled_widths, student_config
from distill.students.sizing import (
    MIN_STUDENT_PARAMS,
    StudentSizingError,
    StudentSummary,
    assistant_sizes,
    auto_assistants,
    config_for_params,
    config_for_ratio,
    config_parameters,
    count_macs,
    count_parameters,
    describe_student,
    uncertainty_head_cost,
)
from distill.students.unet import (
    MAX_UNCERTAINTY,
    StudentConfig,
    StudentConfigError,
    StudentUNet,
    run_padded,
    uncertainty_map,
)

__all__ = [
    "MAX_UNCERTAINTY", "MIN_STUDENT_PARAMS",
    "StudentConfig", "StudentConfigError", "StudentSizingError", "StudentSummary", "StudentUNet",
    "assistant_sizes", "auto_assistants", "available_students", "build_student", "config_for_params",
    "config_for_ratio", "config_parameters", "count_macs", "count_parameters", "describe_student",
    "register", "run_padded", "scaled_widths", "student_config", "uncertainty_head_cost", "uncertainty_map",
]  # fmt: skip
