"""The demo's report on hand-made records: tables, figures, HTML and Markdown, no model run."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from distill.data.nifti import write_nifti
from distill.demo import held_out_split
from distill.report import ReportError, build_report, collect
from distill.report.figures import centre_of_mass, regions_rgba, view_slice
from distill.report.tables import accuracy_table, chain_rows, fmt_count, latency_table, size_table

SHAPE = (20, 18, 12)


def _summary(dice: float, hd95: float) -> dict:
    return {"n_cases": 1, "regions": ["WT", "TC", "ET"],
            "per_region": {r: {"dice": {"mean": dice - 0.1 * i}, "hd95": {"mean": hd95 + i}}
                           for i, r in enumerate(("WT", "TC", "ET"))}}  # fmt: skip


def _labels(shift: int = 0) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[6 + shift:14 + shift, 5:13, 3:9] = 2  # oedema
    labels[8 + shift:12 + shift, 7:11, 4:8] = 1  # core
    labels[9 + shift:11 + shift, 8:10, 5:7] = 4  # enhancing
    return labels


def write_fake_demo(out, with_uncertainty: bool = True):
    """A demo folder as the stages leave it, with tiny hand-made files."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(0)
    write_nifti(out / "case" / "flair.nii.gz", rng.normal(100, 10, SHAPE).astype(np.float32) + 50 * (_labels() > 0),
                affine)  # fmt: skip
    write_nifti(out / "case" / "seg.nii.gz", _labels(), affine)
    write_nifti(out / "pred" / "teacher.nii.gz", _labels(1), affine)
    write_nifti(out / "pred" / "student.nii.gz", _labels(-1), affine)
    if with_uncertainty:
        spread = np.zeros((3, *SHAPE), np.float16)
        spread[:, 5:15, 4:14, 2:10] = 0.2
        np.savez_compressed(out / "pred" / "spread.npz", uncertainty=spread)
    for model, dice in (("teacher", 0.8), ("student", 0.7), ("threshold", 0.5)):
        (out / "evaluation" / model).mkdir(parents=True)
        (out / "evaluation" / model / "summary.json").write_text(json.dumps(_summary(dice, 4.0)))
    (out / "student").mkdir()
    card = {"parameters": 30_000, "macs_128": 400_000_000,
            "chain": [{"name": "link0_assistant", "parameters": 250_000, "steps": 4,
                       "validation": {"dice_gt/WT": 0.6, "dice_gt/TC": 0.5, "dice_gt/ET": 0.4}},
                      {"name": "link1_student", "parameters": 30_000, "steps": 4, "validation": {}}]}  # fmt: skip
    (out / "student" / "student.json").write_text(json.dumps(card))
    (out / "package").mkdir()
    (out / "package" / "model.json").write_text(json.dumps({"model": {"parameters": 30_000, "macs_128": 400_000_000}}))
    records = {
        "data": {"index": 1, "label": "1. data: phantoms"},
        "teacher": {"index": 2, "label": "2. teacher", "parameters_per_member": 1_000_000, "folds": [0, 1, 2, 3, 4],
                    "checkpoint_bytes": 20_000_000, "macs_128_per_pass": 9_000_000_000, "tta_passes": 8},
        "student": {"index": 3, "label": "3. train-student", "card": "student/student.json"},
        "export": {"index": 4, "label": "4. export", "package": "package", "package_bytes": 150_000},
        "serve": {"index": 5, "label": "5. serve", "round_trip_s": 0.4, "status": 200, "port": 45678,
                  "shape": list(SHAPE), "clean_shutdown": True},
        "predict": {"index": 6, "label": "6. predict",
                    "latency": {"teacher_tta_s": 4.0, "teacher_no_tta_s": 0.6, "student_s": 0.05, "threshold_s": 0.1,
                                "case": "Case_1", "threads": 2, "student_repeats": 3},
                    "report_case": {"id": "Case_1", "flair": "case/flair.nii.gz", "label": "case/seg.nii.gz",
                                    "label_convention": "brats2017", "teacher": "pred/teacher.nii.gz",
                                    "student": "pred/student.nii.gz",
                                    "uncertainty": "pred/spread.npz" if with_uncertainty else None,
                                    "uncertainty_source": "Uncertainty: hand-made."}},
        "evaluate": {"index": 7, "label": "7. evaluate",
                     "summaries": {m: f"evaluation/{m}/summary.json" for m in ("teacher", "student", "threshold")}},
    }  # fmt: skip
    (out / "stages").mkdir()
    for stage, record in records.items():
        (out / "stages" / f"{stage}.json").write_text(json.dumps({"stage": stage, "seconds": 1.5, **record}))
    (out / "demo.json").write_text(json.dumps({"machine": {"cpu": "Test CPU", "cores usable": 2}, "reused": ["data"],
                                               "budget": "--quick", "data": "phantoms"}))  # fmt: skip
    return out


def test_tables_read_the_records_and_summaries(tmp_path):
    inputs = collect(write_fake_demo(tmp_path))
    accuracy = accuracy_table(inputs)
    assert [row[:2] for row in accuracy.rows][0][1] == "0.800" and len(accuracy.rows) == 3
    assert accuracy.rows[2][4] == "4.0"  # threshold HD95 WT
    size = size_table(inputs)
    assert size.rows[0][1] == "1.00M x 5" and size.rows[0][2] == "9.00G x 40" and size.rows[1][1] == "30.0k"
    assert any("167x fewer parameters" in note for note in size.notes)
    latency = latency_table(inputs)
    assert [r[2] for r in latency.rows[:2]] == ["80x", "12x"]
    assert latency.rows[-1][0].startswith("student over HTTP") and latency.rows[-1][1] == "400 ms"
    chain = chain_rows(inputs)
    assert [c["name"] for c in chain] == ["teacher (5 folds)", "assistant 1", "student"]
    assert [c["parameters"] for c in chain] == [1_000_000, 250_000, 30_000]
    assert chain[1]["dice"]["WT"] == 0.6 and chain[1]["where"] == "validation"
    assert chain[2]["dice"]["WT"] == pytest.approx(0.7) and chain[2]["where"] == "held-out"


def test_report_html_is_self_contained_and_markdown_names_the_same_figures(tmp_path):
    files = build_report(write_fake_demo(tmp_path))
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "src=\"http" not in page and "<script" not in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3
    from PIL import Image

    slices = Image.open(io.BytesIO(base64.b64decode(embedded[0])))
    assert slices.width > 600 and slices.height > 500
    assert len(np.unique(np.asarray(slices.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # not a blank canvas
    md = files.markdown.read_text()
    names = re.findall(r"\]\((report_files/[a-z]+\.png)\)", md)
    assert names == ["report_files/slices.png", "report_files/dice.png", "report_files/latency.png"]
    assert all((tmp_path / n).is_file() for n in names)
    for text in (page, md):
        for expected in ("Dice WT", "HD95 WT", "MACs", "Test CPU", "speed-up", "assistant 1", "reused",
                         "POST /segment", "Uncertainty: hand-made."):  # fmt: skip
            assert expected in text, expected


def test_the_report_without_uncertainty_still_draws(tmp_path):
    files = build_report(write_fake_demo(tmp_path, with_uncertainty=False))
    assert files.html.is_file() and "teacher uncertainty" not in files.markdown.read_text()


def test_a_missing_record_is_one_clear_error(tmp_path):
    out = write_fake_demo(tmp_path)
    (out / "stages" / "evaluate.json").unlink()
    with pytest.raises(ReportError, match="no record of the 'evaluate' stage"):
        collect(out)


def test_slices_go_through_the_centre_of_mass_and_regions_nest():
    mask = np.zeros((10, 8, 6), bool)
    mask[2:5, 3:6, 1:4] = True
    assert centre_of_mass(mask) == (3, 4, 2)
    assert centre_of_mass(np.zeros((10, 8, 6), bool)) == (5, 4, 3)
    volume = np.arange(10 * 8 * 6).reshape(10, 8, 6)
    axial = view_slice(volume, "axial", (3, 4, 2))
    assert axial.shape == (8, 10) and axial[-1, 0] == volume[0, 0, 2]  # Y up, X across
    assert view_slice(volume, "sagittal", (3, 4, 2)).shape == (6, 8)
    regions = np.zeros((3, 2, 2), bool)
    regions[0] = True
    regions[1, 0, 0] = regions[2, 0, 0] = True
    rgba = regions_rgba(regions)
    assert rgba[0, 0, 2] > 0.6 and rgba[1, 1, 0] > 0.9 and rgba[:, :, 3].min() > 0  # ET blue on top; WT yellow


def test_counts_carry_a_unit():
    assert [fmt_count(v) for v in (None, 950, 30_012, 1_350_000, 1_350_000_000)] == ["-", "950", "30.0k", "1.35M",
                                                                                     "1.35G"]  # fmt: skip


def test_held_out_split_is_stable_and_order_free():
    ids = [f"Case_{i}" for i in range(8)]
    train, test = held_out_split(ids, 2)
    assert held_out_split(list(reversed(ids)), 2) == (train, test)
    assert len(test) == 2 and sorted(train + test) == sorted(ids)
