"""A MONAI network as a teacher member: tiny networks with random weights on tiny oblique cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from synthetic_data import synthetic_case  # noqa: E402

from distill.data.case import Case  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.teacher.base import file_sha256  # noqa: E402
from distill.teacher.torch_member import TorchMemberTeacher, build_network, network_input, save_member  # noqa: E402

SHAPE = (21, 19, 15)  # brain crop 17 x 15 x 11: padded to 24 x 16 x 16 for a divisor of 8
SEGRESNET = {
    "spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 4,
    "norm": ["GROUP", {"num_groups": 2}], "blocks_down": [1, 1, 1, 1],
}  # fmt: skip
UNET = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "channels": [4, 8], "strides": [2]}
MONAI_BRATS_CHANNELS = ["TC", "WT", "ET"]


@pytest.fixture
def case(oblique_affine) -> Case:
    images, labels = synthetic_case(3, SHAPE)
    return Case(case_id="Case_003", images=images, affine=oblique_affine, labels=labels)


def random_segresnet():
    torch.manual_seed(0)
    return build_network("SegResNet", SEGRESNET)


def make_member(directory, state=None, kwargs=SEGRESNET, **options):
    options.setdefault("channels", MONAI_BRATS_CHANNELS)
    options.setdefault("preprocessing", {"normalisation": "zscore_nonzero", "target_spacing": None, "divisor": 8})
    state = random_segresnet().state_dict() if state is None else state
    return save_member(directory, "SegResNet", kwargs, state, **options)


def outside_crop(shape=SHAPE):
    """synthetic_case puts the brain in [2, n-2) on every axis."""
    outside = np.ones(shape, dtype=bool)
    outside[tuple(slice(2, n - 2) for n in shape)] = False
    return outside


def test_mirror8_sliding_window_prediction_on_oblique_case(tmp_path, case):
    teacher = TorchMemberTeacher(make_member(tmp_path, tta="mirror8", roi_size=[16, 16, 16]))
    prediction = teacher.predict(case)
    assert prediction.probabilities.shape == (3, *SHAPE)
    assert prediction.probabilities.dtype == np.float32
    assert prediction.n_passes == 8
    assert np.all((prediction.probabilities >= 0) & (prediction.probabilities <= 1))
    assert np.all(prediction.probabilities[:, outside_crop()] == 0)
    assert np.all(prediction.uncertainty >= 0) and prediction.uncertainty.max() > 0
    assert np.all(prediction.uncertainty[:, outside_crop()] == 0)


def test_no_tta_whole_volume_has_zero_uncertainty(tmp_path, case):
    teacher = TorchMemberTeacher(make_member(tmp_path, tta="none"))
    prediction = teacher.predict(case)
    assert prediction.n_passes == 1
    assert prediction.probabilities.shape == (3, *SHAPE)
    np.testing.assert_array_equal(prediction.uncertainty, 0.0)


def test_channels_tc_wt_et_reordered_to_wt_tc_et(tmp_path, case):
    state = random_segresnet().state_dict()
    # Final 1x1x1 conv outputs only its bias: TC = +6, WT = 0, ET = -6 everywhere.
    state["conv_final.2.conv.weight"].zero_()
    state["conv_final.2.conv.bias"].copy_(torch.tensor([6.0, 0.0, -6.0]))
    teacher = TorchMemberTeacher(make_member(tmp_path, state=state, tta="mirror8", roi_size=[16, 16, 16]))
    assert teacher.info.channels == ("WT", "TC", "ET")
    prediction = teacher.predict(case)
    inside = ~outside_crop()
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    for channel, logit in enumerate([0.0, 6.0, -6.0]):  # WT, TC, ET
        np.testing.assert_allclose(prediction.probabilities[channel][inside], sigmoid(logit), atol=1e-5)
    np.testing.assert_allclose(prediction.uncertainty, 0.0, atol=1e-5)  # a constant map is flip-invariant


def test_softmax_member_sums_to_one_with_background_outside(tmp_path, case):
    torch.manual_seed(1)
    state = build_network("UNet", UNET).state_dict()
    path = save_member(
        tmp_path, "UNet", UNET, state, channels=["background", "NCR", "ED", "ET"], output_kind="softmax",
        preprocessing={"divisor": 2}, tta="none",
    )  # fmt: skip
    prediction = TorchMemberTeacher(path).predict(case)
    assert prediction.probabilities.shape == (4, *SHAPE)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.all(prediction.probabilities[0][outside_crop()] == 1.0)


def test_info_describes_the_member(tmp_path):
    network = random_segresnet()
    path = make_member(tmp_path, state=network.state_dict(), tta="none")
    info = TorchMemberTeacher(path).info
    assert info.name == "monai:SegResNet"
    assert info.output_kind == "sigmoid"
    assert info.parameters_per_member == sum(p.numel() for p in network.parameters())
    assert info.members == ("member",)
    assert info.preprocessing["divisor"] == 8
    assert info.identity["weights_sha256"] == file_sha256(tmp_path / "member.pt")
    other = TorchMemberTeacher(make_member(tmp_path / "b", state=network.state_dict(), tta="mirror8")).info
    assert other.identity["config_sha256"] != info.identity["config_sha256"]
    assert other.identity["weights_sha256"] == info.identity["weights_sha256"]


def test_input_order_maps_distill_modalities():
    images = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)  # t1, t1ce, t2, flair = 0, 1, 2, 3
    np.testing.assert_array_equal(network_input(images, ("flair", "t1", "t1ce", "t2")).ravel(), [3, 0, 1, 2])


def test_input_order_aliases_are_accepted(tmp_path, case):
    teacher = TorchMemberTeacher(make_member(tmp_path, tta="none", input_order=["t2f", "t1n", "t1c", "t2w"]))
    assert teacher.config.input_order == ("flair", "t1", "t1ce", "t2")


def test_state_dict_key_wrapper_accepted(tmp_path):
    path = make_member(tmp_path, tta="none")
    state = torch.load(tmp_path / "member.pt", weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "member.pt")
    assert TorchMemberTeacher(path).info.name == "monai:SegResNet"


# --------------------------------------------------------------------------- bad input


def test_missing_weights_named(tmp_path):
    path = make_member(tmp_path)
    (tmp_path / "member.pt").unlink()
    with pytest.raises(DistillError, match=r"member\.pt: weights file not found"):
        TorchMemberTeacher(path)


def test_corrupt_weights_named(tmp_path):
    path = make_member(tmp_path)
    (tmp_path / "member.pt").write_bytes(b"not a torch file" * 10)
    with pytest.raises(DistillError, match=r"member\.pt: cannot read weights"):
        TorchMemberTeacher(path)


def test_weights_that_do_not_fit_list_keys_and_shapes(tmp_path):
    path = make_member(tmp_path)
    config = json.loads(path.read_text())
    config["kwargs"]["init_filters"] = 6  # the saved weights were made with 4 filters
    config["kwargs"]["norm"] = ["GROUP", {"num_groups": 3}]
    path.write_text(json.dumps(config))
    expected = r"member\.pt: weights do not fit the SegResNet described by .*member\.json.*shape mismatches: convInit"
    with pytest.raises(DistillError, match=expected):
        TorchMemberTeacher(path)


def test_extra_and_missing_keys_listed(tmp_path):
    path = make_member(tmp_path)
    state = torch.load(tmp_path / "member.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["conv_final.2.conv.bias"]
    torch.save(state, tmp_path / "member.pt")
    with pytest.raises(DistillError, match=r"missing keys: conv_final\.2\.conv\.bias; unexpected keys: extra\.weight"):
        TorchMemberTeacher(path)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"architecture": "os.system"}, "not allowed"),
        ({"channels": ["WT", "TC"]}, "out_channels=3 but 2 channels"),
        ({"tta": "rotate"}, "tta"),
        ({"input_order": ["t1", "t1", "t2", "flair"]}, "exactly once"),
        ({"roi_size": [12, 16, 16]}, "multiple of the divisor"),
        ({"typo": 1}, "unknown keys"),
        ({"kwargs": {**SEGRESNET, "no_such_argument": 1}}, "cannot build SegResNet"),
    ],
)
def test_bad_config_named(tmp_path, change, problem):
    path = make_member(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DistillError, match=problem) as caught:
        TorchMemberTeacher(path)
    assert "member.json" in str(caught.value)


def test_unreadable_config_named(tmp_path):
    (tmp_path / "member.json").write_text("{")
    with pytest.raises(DistillError, match=r"member\.json: unreadable member config"):
        TorchMemberTeacher(tmp_path / "member.json")


def test_wrong_number_of_case_channels_named(tmp_path, case):
    teacher = TorchMemberTeacher(make_member(tmp_path, tta="none"))
    three = Case(case_id="Case_003", images=case.images[:3], affine=case.affine, labels=None)
    with pytest.raises(DistillError, match=r"Case_003.*\(4, X, Y, Z\)"):
        teacher.predict(three)
