"""``report.html`` (self-contained: images embedded as base64) and ``report.md`` (the same figures
as PNG files beside it in ``report_files/``) from what the demo's stages wrote."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.core.atomic import atomic_write_bytes, atomic_write_text
from distill.data.conventions import get_convention, resolve_convention
from distill.data.nifti import read_nifti, voxel_spacing
from distill.report import figures
from distill.report.inputs import ReportInputs, collect, resolve
from distill.report.tables import REGIONS, Table, all_tables, region_mean

FILES_DIR = "report_files"
PREDICTION_CONVENTION = "brats2017"


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    figures: tuple[Path, ...]


def _regions(path: Path, convention: str | None, layout: str | None = None) -> np.ndarray:
    """Boolean WT/TC/ET of a label map; ``auto`` detects the convention as ``distill evaluate`` does."""
    labels = read_nifti(path).data.astype(np.uint8)
    found = resolve_convention(convention, np.unique(labels), layout, source=str(path)) if convention in (
        None, "auto") else get_convention(convention)  # fmt: skip
    return found.to_regions(labels, source=str(path))


def uncertainty_map(path: Path | None) -> np.ndarray | None:
    """Per-voxel teacher spread ``(X, Y, Z)``: the largest std over the three regions."""
    if path is None or not Path(path).is_file():
        return None
    with np.load(path) as stored:
        spread = stored["uncertainty"].astype(np.float32)
    return spread.max(axis=0) if spread.ndim == 4 else spread


def slices(inputs: ReportInputs) -> Figure:
    case = inputs.record("predict")["report_case"]
    flair = read_nifti(resolve(inputs, case["flair"]))
    truth = _regions(resolve(inputs, case["label"]), case.get("label_convention"), case.get("label_layout"))
    panels = {"ground truth": truth}
    for model in ("teacher", "student"):
        if case.get(model):
            panels[model] = _regions(resolve(inputs, case[model]), PREDICTION_CONVENTION)
    maps = {}
    for title, key in (("teacher spread", "uncertainty"), ("student, distilled", "student_uncertainty")):
        found = uncertainty_map(resolve(inputs, case[key]) if case.get(key) else None)
        if found is not None:
            maps[title] = found
    centre = figures.centre_of_mass(truth[0])
    png = figures.slice_figure(flair.data, panels, maps, voxel_spacing(flair.affine), centre, case_id=case["id"])
    scale = " on the teacher's colour scale" if "teacher spread" in maps else ""
    distilled = (" Student, distilled: the one-pass map of the student's uncertainty head, trained to predict the "
                 "teacher's spread on the training cases (the teacher's disagreement, not a calibrated error "
                 f"probability){scale}." if "student, distilled" in maps else "")
    caption = (f"Held-out case {case['id']}, never seen in training. Slices through the centre of mass of the "
               f"ground truth's whole tumour. Colours: WT yellow, TC vermilion, ET blue (nested). "
               f"{case.get('uncertainty_source', 'No teacher uncertainty was recorded.')}{distilled}")  # fmt: skip
    return Figure("slices", "Ground truth, teacher, student and their uncertainty", caption, png)


def dice_chart(inputs: ReportInputs) -> Figure:
    dice = {m: {r: region_mean(s, r, "dice") for r in REGIONS} for m, s in inputs.summaries.items()}
    return Figure("dice", "Dice per region", "Mean Dice on the held-out cases (distill evaluate).",
                  figures.dice_figure(dice))  # fmt: skip


def latency_chart(inputs: ReportInputs) -> Figure | None:
    latency = inputs.record("predict").get("latency", {})
    names = {"teacher_tta_s": "teacher 5x8 TTA", "teacher_no_tta_s": "teacher 5 folds, no TTA",
             "student_s": "student (onnxruntime)"}  # fmt: skip
    seconds = {label: latency[key] for key, label in names.items() if latency.get(key)}
    if not seconds:
        return None
    return Figure("latency", "Latency per case", "Seconds per held-out case on this machine (log scale).",
                  figures.latency_figure(seconds))  # fmt: skip


def headline(inputs: ReportInputs) -> list[str]:
    """A few sentences: what was distilled into what, and what it gained."""
    teacher, latency = inputs.record("teacher"), inputs.record("predict").get("latency", {})
    student_params = inputs.manifest.get("model", {}).get("parameters") or inputs.card.get("parameters")
    members = len(teacher.get("folds", [])) or 1
    lines = [f"Data: {inputs.demo.get('data', 'phantoms')}. Budget: {inputs.demo.get('budget', 'default')}."]
    if teacher.get("parameters_per_member") and student_params:
        lines.append(f"A {members}-fold nnU-Net v2 teacher ({teacher['parameters_per_member']:,} parameters per fold) "
                     f"was distilled into a {student_params:,}-parameter student.")
    if latency.get("teacher_tta_s") and latency.get("student_s"):
        lines.append(f"The student segments a case in {latency['student_s']:.3f} s against the teacher's "
                     f"{latency['teacher_tta_s']:.2f} s with 5x8 TTA: "
                     f"{latency['teacher_tta_s'] / latency['student_s']:.0f}x faster on this machine.")
    serve = inputs.records.get("serve", {})
    if serve.get("round_trip_s") is not None:
        lines.append(f"Served over HTTP (distill serve on 127.0.0.1:{serve.get('port')}), POST /segment answered "
                     f"{serve.get('status')} in {serve['round_trip_s']:.2f} s with a {tuple(serve.get('shape', []))} "
                     "label map; the server then shut down cleanly." if serve.get("clean_shutdown") else
                     f"POST /segment answered {serve.get('status')} in {serve['round_trip_s']:.2f} s.")  # fmt: skip
    elif serve.get("skipped"):
        lines.append(f"The serve stage was skipped: {serve['skipped']}.")
    if inputs.demo.get("accuracy_note"):
        lines.append(inputs.demo["accuracy_note"])
    return lines


def _md_table(table: Table) -> str:
    lines = [f"## {table.title}", "", "| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table.rows]
    lines += ["", *table.notes] if table.notes else []
    return "\n".join(lines) + "\n"


def markdown(title: str, intro: list[str], figure_list: list[Figure], tables: list[Table]) -> str:
    parts = [f"# {title}", "", " ".join(intro), ""]
    for figure in figure_list[:1]:
        parts += [f"## {figure.title}", "", f"![{figure.title}]({FILES_DIR}/{figure.name}.png)", "", figure.caption, ""]
    for table in tables:
        parts.append(_md_table(table))
        for figure in figure_list[1:]:
            if _figure_after(figure, table):
                parts += [f"![{figure.title}]({FILES_DIR}/{figure.name}.png)", "", figure.caption, ""]
    return "\n".join(parts)


def _figure_after(figure: Figure, table: Table) -> bool:
    return (figure.name, table.title.split()[0]) in {("dice", "Accuracy"), ("latency", "Latency")}


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0}td.text{text-align:left}.note{color:#555;font-size:.88em}
.intro{background:#f6f8fa;border-left:4px solid #009E73;padding:.6em 1em}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    return (f"<h2>{html.escape(table.title)}</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{notes}")


def _html_figure(figure: Figure, heading: bool) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    title = f"<h2>{html.escape(figure.title)}</h2>" if heading else ""
    return (f'{title}<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="note">{html.escape(figure.caption)}</figcaption></figure>')  # fmt: skip


def html_page(title: str, intro: list[str], figure_list: list[Figure], tables: list[Table]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>", '<div class="intro">'
             + "".join(f"<p>{html.escape(line)}</p>" for line in intro) + "</div>"]  # fmt: skip
    parts += [_html_figure(f, heading=True) for f in figure_list[:1]]
    for table in tables:
        parts.append(_html_table(table))
        parts += [_html_figure(f, heading=False) for f in figure_list[1:] if _figure_after(f, table)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")  # fmt: skip


def build_report(out_dir: str | Path, title: str = "Distill demo: what distillation gains") -> ReportFiles:
    """Write ``report.html``, ``report.md`` and ``report_files/*.png`` into ``out_dir`` from its records.

    Raises:
        ReportError: a record or a file the report needs is missing.
    """
    out_dir = Path(out_dir)
    inputs = collect(out_dir)
    figure_list = [slices(inputs), dice_chart(inputs)]
    latency = latency_chart(inputs)
    figure_list += [latency] if latency else []
    tables, intro = all_tables(inputs), headline(inputs)
    paths = tuple(atomic_write_bytes(out_dir / FILES_DIR / f"{f.name}.png", f.png) for f in figure_list)
    md = atomic_write_text(out_dir / "report.md", markdown(title, intro, figure_list, tables))
    page = atomic_write_text(out_dir / "report.html", html_page(title, intro, figure_list, tables))
    return ReportFiles(html=page, markdown=md, figures=paths)


def summary_lines(files: ReportFiles) -> list[str]:
    return [f"report: {files.html} (self-contained), {files.markdown} (+ {len(files.figures)} PNG)"]


__all__ = ["Figure", "ReportFiles", "build_report", "html_page", "markdown"]
