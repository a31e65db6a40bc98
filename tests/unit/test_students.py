"""Student family: shapes on odd sizes, named features, output kinds, sizing, serialisation, export.

Every family in the registry runs through the parametrised tests; the ``-tiny`` twins keep the
slower checks (export) cheap. Expected values are computed by hand from the layer sizes.
"""

from __future__ import annotations

import json
import re
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import DistillError
from distill.students import (
    MIN_STUDENT_PARAMS,
    StudentConfig,
    StudentConfigError,
    StudentSizingError,
    StudentUNet,
    assistant_sizes,
    auto_assistants,
    available_students,
    build_student,
    config_for_params,
    config_for_ratio,
    config_parameters,
    count_macs,
    count_parameters,
    describe_student,
    student_config,
)

FAMILIES = available_students()
MAIN_FAMILIES = ["unet", "unet-separable"]
TINY_FAMILIES = [f"{name}-tiny" for name in MAIN_FAMILIES]
ODD_SHAPES = [(1, 4, 37, 29, 23), (2, 4, 50, 45, 35)]  # 100x90x70-like, halved: none divides by 8 or 16
FULL_SIZE_TEACHER = 31_200_000  # default BraTS nnU-Net 3d_fullres, one member
COMPACT_TEACHER = 1_250_000


def seeded_student(family: str, seed: int = 0, **overrides) -> StudentUNet:
    torch.manual_seed(seed)
    return build_student(student_config(family, **overrides)).eval()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_both_main_families_and_a_tiny_twin_of_each():
    assert set(MAIN_FAMILIES + TINY_FAMILIES) <= set(FAMILIES)
    assert FAMILIES == sorted(FAMILIES)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_variants_have_a_few_thousand_parameters(family):
    assert 1_000 <= count_parameters(build_student(family)) <= 5_000


def test_unknown_family_names_the_available_ones():
    with pytest.raises(StudentConfigError, match="unet-separable"):
        student_config("resnet")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"norm": "layer"}, "norm"),
        ({"activation": "swish"}, "activation"),
        ({"conv": "dilated"}, "conv"),
        ({"widths": (8,)}, "2 stages or more"),
        ({"output_kind": "softmax", "out_channels": 1}, "softmax"),
        ({"deep_supervision": True}, "deep supervision"),
        ({"stem_stride": 4}, "stem_stride"),
    ],
)
def test_invalid_configs_are_rejected_with_the_field_named(changes, message):
    with pytest.raises(StudentConfigError, match=message):
        StudentConfig(**changes)


def test_config_errors_are_distill_errors_for_the_cli():
    assert issubclass(StudentConfigError, DistillError) and issubclass(StudentSizingError, DistillError)


# ---------------------------------------------------------------------------------------------
# Shapes, padding, features


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_logits_have_the_input_size_for_sizes_not_divisible_by_the_divisor(family, shape):
    model = seeded_student(family)
    assert any(n % model.divisor for n in shape[2:])
    with torch.no_grad():
        logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], 3, *shape[2:])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_odd_input_gives_the_logits_of_its_zero_padded_copy_cropped(family):
    model = seeded_student(family)
    x = torch.randn(1, 4, 37, 20, 19)
    d = model.divisor
    padded = F.pad(x, (0, ceil_div(19, d) * d - 19, 0, ceil_div(20, d) * d - 20, 0, ceil_div(37, d) * d - 37))
    with torch.no_grad():
        direct = model(x)
        via_padded = model(padded)[:, :, :37, :20, :19]
    torch.testing.assert_close(direct, via_padded, rtol=0, atol=1e-6)


def expected_feature_names(depth: int) -> list[str]:
    return [f"enc{i}" for i in range(depth)] + ["bottleneck"] + [f"dec{i}" for i in reversed(range(depth))]


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_named_in_forward_order_with_declared_channels_and_strides(family):
    model = seeded_student(family)
    shape = (2, 4, 50, 45, 35)
    with torch.no_grad():
        logits, features = model(torch.randn(shape), return_features=True)
    names = expected_feature_names(model.config.depth)
    assert list(features) == names == list(model.feature_channels()) == list(model.feature_strides())
    for name, feature in features.items():
        stride = model.feature_strides()[name]
        expected = (2, model.feature_channels()[name], *(ceil_div(n, stride) for n in shape[2:]))
        assert tuple(feature.shape) == expected, name
    assert logits.shape == (2, 3, 50, 45, 35)


def test_feature_strides_and_channels_by_hand_for_the_default_unet():
    model = build_student("unet")  # widths (4, 8, 16, 32), strided stem
    assert model.feature_channels() == {
        "enc0": 4, "enc1": 8, "enc2": 16, "bottleneck": 32, "dec2": 16, "dec1": 8, "dec0": 4,
    }  # fmt: skip
    assert model.feature_strides() == {
        "enc0": 2, "enc1": 4, "enc2": 8, "bottleneck": 16, "dec2": 8, "dec1": 4, "dec0": 2,
    }  # fmt: skip
    assert model.divisor == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_smaller_than_the_divisor_on_every_axis_still_work(family):
    """Norm layers reject a one-voxel bottleneck; the padding gives the first axis a second block."""
    model = seeded_student(family)
    x = torch.randn(1, 4, 5, 3, 2)
    with torch.no_grad():
        logits, features = model(x, return_features=True)
    assert logits.shape == (1, 3, 5, 3, 2)
    assert tuple(features["bottleneck"].shape[2:]) == (1, 1, 1)  # cropped back to the voxel that sees input
    model.train()(torch.randn(2, 4, 5, 3, 2)).mean().backward()


def test_full_resolution_stem_variant_also_takes_odd_sizes():
    model = seeded_student("unet-tiny", stem_stride=1)
    assert model.feature_strides()["enc0"] == 1 and model.divisor == 4
    with torch.no_grad():
        assert model(torch.randn(1, 4, 13, 10, 7)).shape == (1, 3, 13, 10, 7)


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("activation", ["leakyrelu", "relu", "gelu"])
@pytest.mark.parametrize("upsample", ["transpose", "trilinear"])
def test_every_norm_activation_and_upsampling_builds_and_runs(norm, activation, upsample):
    model = seeded_student("unet-tiny", norm=norm, activation=activation, upsample=upsample).train()
    assert model(torch.randn(2, 4, 11, 9, 10)).shape == (2, 3, 11, 9, 10)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_logits_loss_reaches_every_parameter_so_ddp_needs_no_unused_parameter_search(family):
    model = seeded_student(family).train()
    model(torch.randn(2, 4, 17, 16, 15)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_ddp_wraps_a_student_returning_logits_and_named_features(tmp_path):
    """One gloo process is enough to catch outputs DDP cannot walk and parameters it waits for."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(seeded_student("unet-tiny").train())
        for _ in range(2):  # the second step is where unused parameters would raise
            logits, features = model(torch.randn(2, 4, 17, 16, 15), return_features=True)
            (logits.mean() + features["bottleneck"].mean()).backward()
    finally:
        dist.destroy_process_group()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Output kinds


@pytest.mark.parametrize("family", FAMILIES)
def test_sigmoid_students_give_independent_region_probabilities(family):
    model = seeded_student(family, output_kind="sigmoid", out_channels=3)
    with torch.no_grad():
        probs = model.probabilities(model(torch.randn(1, 4, 17, 16, 15)))
    assert probs.shape[1] == 3 and probs.min() >= 0 and probs.max() <= 1
    assert not torch.allclose(probs.sum(1), torch.ones(1))  # overlapping regions need not sum to 1


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_students_give_class_probabilities_summing_to_one(family):
    model = seeded_student(family, output_kind="softmax", out_channels=4)
    with torch.no_grad():
        probs = model.probabilities(model(torch.randn(1, 4, 17, 16, 15)))
    assert probs.shape[1] == 4
    torch.testing.assert_close(probs.sum(1), torch.ones_like(probs[:, 0]))


# ---------------------------------------------------------------------------------------------
# Serialisation and determinism


@pytest.mark.parametrize("family", FAMILIES)
def test_json_round_trip_rebuilds_an_identical_model(family):
    config = student_config(family, output_kind="softmax", out_channels=4, norm="group")
    restored = StudentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    original, rebuilt = build_student(config), build_student(restored)
    shapes = [{k: v.shape for k, v in model.state_dict().items()} for model in (original, rebuilt)]
    assert shapes[0] == shapes[1]
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(1, 4, 19, 17, 13)
    with torch.no_grad():
        torch.testing.assert_close(original.eval()(x), rebuilt.eval()(x), rtol=0, atol=0)


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(StudentConfigError, match="kernel_size"):
        StudentConfig.from_dict({**StudentConfig().to_dict(), "kernel_size": 5})


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_only_checkpoint_round_trip(family, tmp_path):
    model = seeded_student(family, norm="batch")  # batch norm adds buffers (running stats, counter)
    path = tmp_path / "student.pt"
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    restored = build_student(checkpoint["config"])
    restored.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(1, 4, 19, 17, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x), restored.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_and_outputs(family):
    a, b = seeded_student(family, seed=7), seeded_student(family, seed=7)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    x = torch.randn(1, 4, 19, 17, 13)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert not torch.equal(next(seeded_student(family, seed=8).parameters()), next(a.parameters()))


# ---------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_keeps_dynamic_batch_and_spatial_axes(family, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = seeded_student(family)
    path = tmp_path / "student.onnx"
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (torch.randn(1, 4, 32, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 4, 37, 29, 23), (2, 4, 20, 17, 9), (1, 4, 5, 3, 2)]:
        x = torch.randn(shape)
        (onnx_logits,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert onnx_logits.shape == expected.shape
        np.testing.assert_allclose(onnx_logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_torch_export_keeps_spatial_axes_dynamic_across_divisible_and_odd_sizes(family):
    """torch.export is the front end of the default (dynamo) ONNX exporter, opset 18.

    ``backed_size_oblivious`` stops torch.export from assuming no axis of the bottleneck is 1
    (its 0/1 specialisation), which would reject inputs no larger than the divisor.
    """
    from torch.fx.experimental import _config as fx_config

    model = seeded_student(family)
    dynamic = torch.export.Dim.DYNAMIC
    with fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (torch.randn(2, 4, 33, 35, 37),),
                                      dynamic_shapes={"x": {0: dynamic, 2: dynamic, 3: dynamic, 4: dynamic}})
    for shape in [(1, 4, 32, 32, 32), (3, 4, 37, 29, 23), (1, 4, 17, 16, 9), (1, 4, 5, 3, 2)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Counting


def test_count_macs_of_one_conv_by_hand():
    conv = nn.Conv3d(4, 2, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 4, 8, 8, 8)) == 8**3 * 4 * 2 * 27


def test_count_macs_on_the_meta_device_matches_a_real_forward():
    from torch.utils.flop_counter import FlopCounterMode

    model = seeded_student("unet-tiny")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 4, 16, 16, 16))
    assert count_macs(model, (1, 4, 16, 16, 16)) == counter.get_total_flops() // 2
    assert count_macs(model) == count_macs(model, (1, 4, 128, 128, 128))


@pytest.mark.parametrize("family", FAMILIES)
def test_config_parameters_counts_without_building_real_weights(family):
    config = student_config(family)
    assert config_parameters(config) == count_parameters(build_student(config))


# ---------------------------------------------------------------------------------------------
# Sizing


@pytest.mark.parametrize("family", MAIN_FAMILIES)
@pytest.mark.parametrize("target", [30_000, 60_000, 100_000])
def test_params_budget_is_hit_within_five_percent(family, target):
    config = config_for_params(family, target)
    achieved = count_parameters(build_student(config))
    assert abs(achieved - target) <= 0.05 * target, (config.widths, achieved)
    assert config.family == family


def test_params_budget_with_a_pinned_depth_keeps_that_depth():
    config = config_for_params("unet", 60_000, depth=4)
    assert config.depth == 4 and abs(config_parameters(config) - 60_000) <= 3_000


def test_params_budget_keeps_output_kind_and_channels():
    config = config_for_params("unet", 40_000, out_channels=4, output_kind="softmax")
    assert (config.out_channels, config.output_kind) == (4, "softmax")


@pytest.mark.parametrize(
    "ratio, teacher, target",
    [(0.08, COMPACT_TEACHER, 100_000), (0.001, FULL_SIZE_TEACHER, 31_200), (0.003, FULL_SIZE_TEACHER, 93_600)],
)
def test_ratio_sizes_from_one_teacher_member(ratio, teacher, target):
    model = build_student(config_for_ratio("unet", ratio, teacher))
    summary = describe_student(model, teacher)
    assert abs(summary.parameters - target) <= 0.05 * target
    assert summary.ratio_to_teacher == pytest.approx(ratio, rel=0.05)


def test_a_budget_under_a_thousand_parameters_is_refused():
    with pytest.raises(StudentSizingError, match="500"):
        config_for_params("unet", 500)
    assert MIN_STUDENT_PARAMS == 1_000


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_a_ratio_not_below_the_teacher_is_refused_with_the_numbers(ratio):
    with pytest.raises(StudentSizingError, match="1,250,000"):
        config_for_ratio("unet", ratio, COMPACT_TEACHER)


def test_a_ratio_giving_too_few_parameters_is_refused_with_the_minimum_ratio():
    with pytest.raises(StudentSizingError, match=r"312 parameters.*at least 3\.2e-05"):
        config_for_ratio("unet", 0.00001, FULL_SIZE_TEACHER)


def test_a_budget_above_the_teacher_is_refused():
    with pytest.raises(StudentSizingError, match="not smaller"):
        config_for_params("unet", 60_000, teacher_params=50_000)


@pytest.mark.parametrize("ratio, teacher", [(0.0, COMPACT_TEACHER), (-0.1, COMPACT_TEACHER), (0.1, 0)])
def test_nonsense_ratio_inputs_are_refused(ratio, teacher):
    with pytest.raises(StudentSizingError):
        config_for_ratio("unet", ratio, teacher)


def test_an_unreachable_tolerance_names_the_closest_counts():
    with pytest.raises(StudentSizingError, match="closest achievable") as error:
        config_for_params("unet", 30_001, tolerance=1e-9)
    counts = [int(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*) \(depth", str(error.value))]
    assert len(counts) == 2 and all(0 < abs(n - 30_001) < 1_000 for n in counts)


# The default unet, widths (4, 8, 16, 32), one plain 3x3x3 conv per stage, instance norm with
# affine (2 per channel), no conv bias before a norm; decoder: 2x2x2 transposed conv, concat,
# conv; head: 3x3x3 transposed conv 4 -> 3 with bias. Per layer: (parameters, voxels it runs
# on at 128^3: output voxels for convs, input voxels for transposed convs).
DEFAULT_UNET_LAYERS = [
    (4 * 4 * 27, 64**3), (2 * 4, 0),  # enc0: strided stem conv, norm
    (4 * 8 * 27, 32**3), (2 * 8, 0),  # enc1
    (8 * 16 * 27, 16**3), (2 * 16, 0),  # enc2
    (16 * 32 * 27, 8**3), (2 * 32, 0),  # bottleneck
    (32 * 16 * 8, 8**3), (32 * 16 * 27, 16**3), (2 * 16, 0),  # dec2: up, conv, norm
    (16 * 8 * 8, 16**3), (16 * 8 * 27, 32**3), (2 * 8, 0),  # dec1
    (8 * 4 * 8, 32**3), (8 * 4 * 27, 64**3), (2 * 4, 0),  # dec0
    (4 * 3 * 27, 64**3), (3, 0),  # head weight, bias
]  # fmt: skip


def test_default_unet_parameters_and_macs_by_hand():
    model = build_student("unet")
    assert count_parameters(model) == sum(p for p, _ in DEFAULT_UNET_LAYERS) == 42_599
    # Norm layers and biases are not counted as MACs; a conv's weight count times its voxels is.
    assert count_macs(model) == sum(p * v for p, v in DEFAULT_UNET_LAYERS) == 658_767_872


def test_describe_student_prints_parameters_ratio_and_macs():
    model = build_student("unet")
    summary = describe_student(model, teacher_params=426_000)
    assert summary.parameters == 42_599 and summary.divisor == 16 and summary.widths == (4, 8, 16, 32)
    assert summary.macs_128 == 658_767_872
    assert summary.ratio_to_teacher == pytest.approx(0.1, rel=1e-3)
    text = str(summary)
    assert "42,599 parameters" in text and "GMACs per 128^3" in text and "ratio 0.1" in text
    assert "\n" not in text
    assert describe_student(model).ratio_to_teacher is None


# ---------------------------------------------------------------------------------------------
# Teacher assistants


def test_assistant_sizes_are_geometric_between_teacher_and_student():
    assert assistant_sizes(1_000_000, 10_000, 1) == [100_000]
    assert assistant_sizes(1_000_000, 1_000, 2) == [100_000, 10_000]
    assert assistant_sizes(1_000_000, 10_000, 3) == [round(10**5.5), 100_000, round(10**4.5)]
    assert assistant_sizes(1_000_000, 10_000, 0) == []


@pytest.mark.parametrize(
    "teacher, student, expected",
    [(1_250_000, 100_000, 1), (31_200_000, 31_200, 2), (100_000, 20_000, 0), (1_000_000, 10_000, 1), (10**9, 1_000, 3)],
)
def test_auto_assistants_one_per_decade_of_gap_capped_at_three(teacher, student, expected):
    assert auto_assistants(teacher, student) == expected


def test_assistants_need_a_smaller_student():
    with pytest.raises(StudentSizingError):
        assistant_sizes(10_000, 20_000, 1)
    with pytest.raises(StudentSizingError):
        auto_assistants(10_000, 10_000)


# ---------------------------------------------------------------------------------------------
# Timing (printed for information, never asserted: shared CPUs make timings noisy)


def test_30k_and_100k_students_run_a_whole_128_tile(capsys):
    """Each main family at both budgets runs a 1x4x128^3 tile to finite 3-channel logits; the
    time is printed for information only (shared CPUs make it noisy; benchmarks/latency has the
    measured figures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    lines = []
    try:
        for family in MAIN_FAMILIES:
            for target in (30_000, 100_000):
                model = build_student(config_for_params(family, target)).eval()
                x = torch.randn(1, 4, 128, 128, 128)
                with torch.inference_mode():
                    model(x)  # warm-up: oneDNN picks its kernels on the first call
                    start = time.perf_counter()
                    logits = model(x)
                    seconds = time.perf_counter() - start
                assert logits.shape == (1, 3, 128, 128, 128) and torch.isfinite(logits).all()
                assert 0.8 * target <= count_parameters(model) <= 1.2 * target
                lines.append(f"{family:15s} {count_parameters(model):7,d} params  {count_macs(model) / 1e9:.2f} GMACs  "
                             f"{seconds:.2f} s per 1x4x128^3 (2 threads)")
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
