"""The distilled-uncertainty head on tiny hand-checkable tensors: its loss, its cost, the default left alone.

Expected values are derived by hand in the comments (never recorded from the code). ``u`` is
the cache's spread divided by its maximum 0.5, the head's prediction ``sigmoid(z)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.export.onnx_export import CaseParity, ParityReport, ParityThresholds
from distill.losses import uncertainty_regression
from distill.package import ModelPackage, TensorSpec, UncertaintySection
from distill.package.manifest import _check_uncertainty, _Checker
from distill.students import (
    MAX_UNCERTAINTY,
    StudentConfig,
    build_student,
    count_parameters,
    uncertainty_head_cost,
    uncertainty_map,
)
from distill.students.card import StudentCardError, read_student_run, teacher_passes
from distill.train.chain import save_untrained_student
from distill.train.config import TrainConfig
from distill.train.link import build_link_loss

REPO = Path(__file__).resolve().parents[2]
COMMITTED_PACKAGES = REPO / "benchmarks" / "realdata" / "packages"


# --------------------------------------------------------------------------- the loss


def test_loss_by_hand_on_two_voxels_and_its_gradient():
    # voxel 1: z = 0 -> 0.5, spread 0 -> u = 0: -ln(0.5) = ln 2
    # voxel 2: z = ln 3 -> 0.75, spread 0.25 -> u = 0.5: -(0.5 ln 0.75 + 0.5 ln 0.25) = 0.5 ln(16/3)
    z = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 2).requires_grad_(True)
    spread = torch.tensor([0.0, 0.25]).reshape(1, 1, 2)
    loss = uncertainty_regression(z, spread)
    assert loss.item() == pytest.approx((math.log(2.0) + 0.5 * math.log(16.0 / 3.0)) / 2, rel=1e-6)
    loss.backward()
    # d/dz of the mean: (sigmoid(z) - u) / 2 -> (0.5 - 0) / 2, (0.75 - 0.5) / 2
    assert z.grad.flatten().tolist() == pytest.approx([0.25, 0.125], rel=1e-6)


def test_loss_is_smallest_where_the_head_predicts_the_target():
    spread = torch.full((1, 3, 2, 2, 2), 0.1)  # u = 0.2
    at = [uncertainty_regression(torch.full_like(spread, math.log(p / (1 - p))), spread).item()
          for p in (0.1, 0.2, 0.3)]  # fmt: skip
    assert at[1] < at[0] and at[1] < at[2]
    # at u_hat = u the value is the entropy of u: -(0.2 ln 0.2 + 0.8 ln 0.8)
    assert at[1] == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), rel=1e-5)


def test_loss_refuses_targets_outside_the_cache_range_and_mismatched_shapes():
    with pytest.raises(ValueError, match=r"teacher_uncertainty must lie in \[0, 0.5\]"):
        uncertainty_regression(torch.zeros(1, 1, 2), torch.tensor([[[0.0, 0.6]]]))
    with pytest.raises(ValueError, match="must match"):
        uncertainty_regression(torch.zeros(1, 3, 2), torch.zeros(1, 1, 2))


def test_the_head_output_is_half_a_sigmoid():
    z = torch.tensor([-100.0, 0.0, 100.0])
    assert uncertainty_map(z).tolist() == pytest.approx([0.0, 0.25, 0.5])
    assert MAX_UNCERTAINTY == 0.5


# --------------------------------------------------------------------------- the student


def test_head_off_is_the_student_as_before():
    config = StudentConfig(widths=(4, 8, 16))
    assert "uncertainty_head" not in config.to_dict()  # cards and manifests read as before
    assert StudentConfig.from_dict(config.to_dict()) == config
    model = build_student(config)
    assert model.uncertainty_head is None
    assert not any("uncertainty" in name for name in model.state_dict())
    assert isinstance(model(torch.zeros(1, 4, 8, 8, 8)), torch.Tensor)
    with pytest.raises(ValueError, match="no uncertainty head"):
        model(torch.zeros(1, 4, 8, 8, 8), return_uncertainty=True)


def test_head_on_adds_only_the_head_and_leaves_segmentation_untouched():
    config = StudentConfig(widths=(4, 8, 16))
    torch.manual_seed(3)
    plain = build_student(config)
    torch.manual_seed(3)
    headed = build_student(config.replace(uncertainty_head=True))
    plain_state, headed_state = plain.state_dict(), headed.state_dict()
    assert set(headed_state) - set(plain_state) == {"uncertainty_head.0.weight", "uncertainty_head.0.bias"}
    assert all(torch.equal(plain_state[k], headed_state[k]) for k in plain_state)
    # a 3x3x3 conv from w0 = 4 channels to K = 3: 27 * 4 * 3 weights + 3 biases
    assert count_parameters(headed) - count_parameters(plain) == 27 * 4 * 3 + 3 == 327
    assert uncertainty_head_cost(config)[0] == 327
    # MACs: 27 * 4 * 3 per voxel of dec0, which is 64^3 voxels on a 128^3 tile (stem stride 2)
    assert uncertainty_head_cost(config)[1] == 27 * 4 * 3 * 64**3
    x = torch.randn(1, 4, 19, 10, 13)
    logits, features, uncertainty_logits = headed(x, return_features=True, return_uncertainty=True)
    assert torch.equal(logits, plain(x)) and uncertainty_logits.shape == logits.shape == (1, 3, 19, 10, 13)
    assert set(features) == set(plain(x, return_features=True)[1])


# --------------------------------------------------------------------------- the card


def test_the_card_reports_the_heads_parameter_cost(tmp_path):
    run = read_student_run(save_untrained_student(tmp_path / "run", 6000, uncertainty_head=True))
    record, config = run.card.uncertainty_head, run.card.student
    w0 = config.widths[0]
    assert config.uncertainty_head and record.parameters == 27 * w0 * 3 + 3
    model = run.load_model()  # the card's parameters include the head's
    assert run.card.parameters == count_parameters(model)
    assert record.share_of_parameters == pytest.approx(record.parameters / run.card.parameters, abs=1e-6)  # rounded
    assert run.card.to_dict()["uncertainty_head"]["parameters"] == record.parameters
    assert "uncertainty_head" in run.card.summary()  # repeated in packages
    assert read_student_run(save_untrained_student(tmp_path / "plain", 6000)).card.uncertainty_head is None


def test_a_card_whose_head_record_contradicts_its_config_is_refused(tmp_path):
    import json

    folder = save_untrained_student(tmp_path / "run", 6000, uncertainty_head=True)
    card = json.loads((folder / "student.json").read_text())
    del card["uncertainty_head"]
    (folder / "student.json").write_text(json.dumps(card))
    with pytest.raises(StudentCardError, match="uncertainty_head section and the student config disagree"):
        read_student_run(folder)


def test_teacher_passes_is_members_times_flips():
    assert teacher_passes({"members": ["fold_0", "fold_1", "fold_2", "fold_3", "fold_4"], "tta": "mirror8"}) == 40
    assert teacher_passes({"members": ["a", "b"], "tta": "none"}) == 2
    assert teacher_passes({"members": ["a"], "tta": "rot90"}) is None


# --------------------------------------------------------------------------- training loss wiring


def test_the_link_loss_gets_the_head_term_only_for_a_student_with_the_head():
    config = TrainConfig(cache=Path("c"), out=Path("o"), params=6000, uncertainty_head=True,
                         uncertainty_head_weight=0.3)  # fmt: skip
    plain = build_link_loss(config, "sigmoid", has_ground_truth=True)
    headed = build_link_loss(config, "sigmoid", has_ground_truth=True, uncertainty_head=True)
    assert [t.name for t in headed.terms] == [*(t.name for t in plain.terms), "uncertainty_head"]
    term = headed.terms[-1]
    assert term.weight == 0.3
    assert dict(term.inputs) == {"uncertainty_logits": "student_uncertainty_logits",
                                 "teacher_uncertainty": "teacher_uncertainty"}  # fmt: skip


# --------------------------------------------------------------------------- package and parity


def section(**changes) -> UncertaintySection:
    values = dict(output=TensorSpec("uncertainty", "B,K,X,Y,Z", "float32"), regions=("WT", "TC", "ET"),
                  source="teacher cache", parameters=327, passes=40)  # fmt: skip
    return UncertaintySection(**{**values, **changes})


def test_the_manifest_section_round_trips_and_bad_values_are_named():
    assert UncertaintySection.from_dict(section().to_dict()) == section()
    assert section().to_dict()["range"] == [0.0, 0.5] and "not a calibrated" in section().meaning
    check = _Checker("model.json")
    _check_uncertainty(check, section(), ("WT", "TC", "ET"))
    with pytest.raises(Exception, match=r"uncertainty.range"):
        _check_uncertainty(check, section(range=(0.0, 1.0)), ("WT", "TC", "ET"))
    with pytest.raises(Exception, match=r"uncertainty.regions"):
        _check_uncertainty(check, section(regions=("WT",)), ("WT", "TC", "ET"))


@pytest.mark.skipif(not COMMITTED_PACKAGES.is_dir(), reason="the committed real-data packages are absent")
def test_committed_packages_without_the_output_still_open():
    packages = sorted(p for p in COMMITTED_PACKAGES.iterdir() if (p / "model.json").is_file())
    assert packages
    for path in packages:
        package = ModelPackage.open(path, verify=False)  # hash of model.json still checked
        assert not package.has_uncertainty and "uncertainty" not in package.manifest.to_dict()


def test_the_parity_gate_holds_the_uncertainty_output_to_the_probability_mark():
    marks = ParityThresholds(max_abs_probability=5e-4, min_label_agreement=0.9999)
    good = ParityReport("onnxruntime", marks, [CaseParity("a", 1e-5, 1.0, 8, max_abs_uncertainty=4e-4)])
    bad = ParityReport("onnxruntime", marks, [CaseParity("a", 1e-5, 1.0, 8, max_abs_uncertainty=6e-4)])
    plain = ParityReport("onnxruntime", marks, [CaseParity("a", 1e-5, 1.0, 8)])
    assert good.passed and not bad.passed and plain.passed
    assert good.to_dict()["max_abs_uncertainty"] == 4e-4 and good.to_dict()["cases"][0]["max_abs_uncertainty"] == 4e-4
    assert "max_abs_uncertainty" not in plain.to_dict() and "max_abs_uncertainty" not in plain.to_dict()["cases"][0]
    with pytest.raises(Exception, match=r"max \|uncertainty difference\| 0.0006"):
        bad.raise_if_failed()
