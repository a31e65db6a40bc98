"""The student card: one typed owner of ``student.json`` and the run folder."""

import json

import pytest
import torch

from distill.students import build_student, config_for_params
from distill.students.card import (
    STUDENT_CARD,
    LinkRecord,
    StudentCard,
    StudentCardError,
    TrainingData,
    read_card,
    read_student_run,
    write_student_run,
)


def small_card(model) -> StudentCard:
    config = config_for_params("unet", 30_000)
    return StudentCard(
        student=config, parameters=sum(p.numel() for p in model.parameters()), macs_128=123,
        channels=("WT", "TC", "ET"), ratio_to_teacher=0.03,
        chain=(LinkRecord("link0_student_29179", 29_179, 10, 1.5, 6.67, 80.0, {"dice_mean": 0.4}),),
        data=TrainingData(teacher="t", teacher_identity_hash="a" * 64,
                          preprocessing={"divisor": 1, "target_spacing": None},
                          cache="cache/", cache_spec_hash="b" * 64, mode="oof",
                          train_cases=("A", "B"), val_cases=("C",)),
    )  # fmt: skip


@pytest.fixture
def run_folder(tmp_path):
    torch.manual_seed(0)
    model = build_student(config_for_params("unet", 30_000))
    write_student_run(tmp_path, model.state_dict(), small_card(model))
    return tmp_path, model


def test_a_written_run_reads_back_with_the_same_card_and_weights(run_folder):
    folder, model = run_folder
    run = read_student_run(folder)
    assert run.card == small_card(model)
    loaded = run.load_model()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_the_json_form_keeps_its_documented_keys(run_folder):
    folder, _ = run_folder
    document = json.loads((folder / STUDENT_CARD).read_text())
    assert document["format"] == "distill-student-card" and document["version"] == 1
    assert document["output_kind"] == "sigmoid" and document["channels"] == ["WT", "TC", "ET"]
    assert document["data"]["train_cases"] == ["A", "B"] and document["chain"][0]["steps"] == 10
    assert set(StudentCard.from_dict(document).summary()) >= {"format", "parameters", "macs_128", "channels"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(format="other"), "not a Distill student card"),
        (lambda c: c.update(version=99), "card version 99"),
        (lambda c: c.pop("student"), "lacks \\['student'\\]"),
        (lambda c: c["student"].update(norm="weird"), "invalid student config"),
        (lambda c: c["data"].pop("teacher_identity_hash"), "data section lacks"),
        (lambda c: c.update(output_kind="softmax"), "contradicts the student config"),
    ],
)
def test_a_bad_card_is_refused_naming_the_file(run_folder, edit, message):
    folder, _ = run_folder
    document = json.loads((folder / STUDENT_CARD).read_text())
    edit(document)
    (folder / STUDENT_CARD).write_text(json.dumps(document))
    with pytest.raises(StudentCardError, match=message) as caught:
        read_card(folder / STUDENT_CARD)
    assert str(folder / STUDENT_CARD) in str(caught.value)


def test_unreadable_or_missing_files_are_named(run_folder, tmp_path):
    folder, _ = run_folder
    (folder / STUDENT_CARD).write_text("{not json")
    with pytest.raises(StudentCardError, match="unreadable student card"):
        read_card(folder / STUDENT_CARD)
    with pytest.raises(StudentCardError, match="student.pt: missing"):
        read_student_run(tmp_path / "empty")


def test_weights_of_another_student_are_refused(run_folder):
    folder, _ = run_folder
    other = build_student(config_for_params("unet", 100_000))
    torch.save(other.state_dict(), folder / "student.pt")
    with pytest.raises(StudentCardError, match="does not load into the student the card describes"):
        read_student_run(folder).load_model()
