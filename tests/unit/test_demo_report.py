"""The demo's report on hand-made records: tables, figures, HTML and Markdown, no model run."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from report_records import write_fake_demo

from distill.demo import held_out_split
from distill.report import ReportError, build_report, collect
from distill.report.figures import centre_of_mass, regions_rgba, view_slice
from distill.report.tables import accuracy_table, chain_rows, fmt_count, latency_table, size_table


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


def _slices_width(folder: Path) -> int:
    from PIL import Image

    return Image.open(folder / "report_files" / "slices.png").width


def test_each_uncertainty_map_adds_a_column_and_the_distilled_one_is_explained(tmp_path):
    # FLAIR + ground truth, teacher, student: 4 columns; the teacher's spread a 5th, the student's map a 6th
    widths = {}
    for name, options in (("none", {"with_uncertainty": False}), ("teacher", {}),
                          ("both", {"with_student_uncertainty": True})):  # fmt: skip
        files = build_report(write_fake_demo(tmp_path / name, **options))
        widths[name] = _slices_width(tmp_path / name)
        distilled = "uncertainty head" in files.markdown.read_text()
        assert distilled == (name == "both"), name
    assert widths["none"] < widths["teacher"] < widths["both"]
    assert "not a calibrated error probability" in (tmp_path / "both" / "report.md").read_text()
    assert "on the teacher's colour scale" in (tmp_path / "both" / "report.md").read_text()
    # the student's map alone is on its own scale, and the caption does not claim otherwise
    build_report(write_fake_demo(tmp_path / "student", with_uncertainty=False, with_student_uncertainty=True))
    alone = (tmp_path / "student" / "report.md").read_text()
    assert "uncertainty head" in alone and "colour scale" not in alone


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


def test_a_student_run_with_other_options_is_discarded_and_the_same_options_resume(tmp_path):
    import json

    from distill.demo import discard_other_run

    run = tmp_path / "student"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": {}, "training_hash": "aaa"}))
    (run / "links").mkdir()
    discard_other_run(run, "aaa")  # same options: an interrupted run resumes from what it left
    assert (run / "links").is_dir()
    discard_other_run(run, "bbb")  # other options: train-student would refuse the folder
    assert not run.exists()
    discard_other_run(run, "bbb")  # nothing there: nothing to do
