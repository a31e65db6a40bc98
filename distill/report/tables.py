"""The report's tables, each a :class:`Table` of formatted strings built from :class:`ReportInputs`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from distill.report.inputs import ReportInputs

REGIONS = ("WT", "TC", "ET")
MODEL_NAMES = {"teacher": "teacher (nnU-Net, 5 folds x 8 mirror TTA)", "student": "student (ONNX, onnxruntime)",
               "threshold": "threshold baseline (no training)"}  # fmt: skip


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def fmt_number(value: float | int | None, digits: int = 3) -> str:
    """``-`` for missing or non-finite values, else ``digits`` decimals."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_count(value: int | None) -> str:
    """Large counts with a unit: 30,012 -> ``30.0k``, 1.35e9 -> ``1.35G``."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.{2 if unit != 'k' else 1}f}{unit}"
    return str(value)


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    return f"{int(value // 60)} min {value % 60:.0f} s"


def region_mean(summary: dict[str, Any], region: str, metric: str) -> float | None:
    try:
        return summary["per_region"][region][metric]["mean"]
    except (KeyError, TypeError):
        return None


def accuracy_table(inputs: ReportInputs) -> Table:
    """Dice and HD95 (mean over the held-out cases) per region for each model."""
    headers = ["model", *(f"Dice {r}" for r in REGIONS), *(f"HD95 {r} (mm)" for r in REGIONS)]
    rows = []
    for model, summary in inputs.summaries.items():
        rows.append([MODEL_NAMES.get(model, model), *(fmt_number(region_mean(summary, r, "dice")) for r in REGIONS),
                     *(fmt_number(region_mean(summary, r, "hd95"), 1) for r in REGIONS)])  # fmt: skip
    n = next(iter(inputs.summaries.values()), {}).get("n_cases", 0)
    return Table("Accuracy on the held-out cases", headers, rows,
                 [f"Mean over {n} held-out case(s) against the ground truth (distill evaluate); "
                  "HD95 of an empty prediction follows the evaluation's declared empty-mask policy."])  # fmt: skip


def size_table(inputs: ReportInputs) -> Table:
    """Parameters, MACs and the size on disk of what is deployed."""
    teacher = inputs.record("teacher")
    members = len(teacher.get("folds", [])) or 1
    passes = members * int(teacher.get("tta_passes", 8))
    per_member, per_pass = teacher.get("parameters_per_member"), teacher.get("macs_128_per_pass")
    model = inputs.manifest.get("model", {})
    rows = [
        [MODEL_NAMES["teacher"], f"{fmt_count(per_member)} x {members}",
         f"{fmt_count(per_pass)} x {passes}" if per_pass else "-", fmt_bytes(teacher.get("checkpoint_bytes")),
         "nnU-Net checkpoints (checkpoint_final.pth per fold)"],
        [MODEL_NAMES["student"], fmt_count(model.get("parameters", inputs.card.get("parameters"))),
         fmt_count(model.get("macs_128", inputs.card.get("macs_128"))),
         fmt_bytes(inputs.record("export").get("package_bytes")), "model package (ONNX + manifest + weights)"],
        [MODEL_NAMES["threshold"], "0", "-", "-", "intensity thresholds in the brain mask"],
    ]  # fmt: skip
    notes = ["MACs: multiply-accumulates of one forward pass on a 128^3 tile (convolutions only)."]
    if per_member and model.get("parameters"):
        notes.append(f"The student has {per_member * members / model['parameters']:.0f}x fewer parameters than the "
                     f"{members}-member ensemble ({per_member / model['parameters']:.0f}x fewer than one member).")
    return Table("Size", ["model", "parameters", "MACs (128^3)", "on disk", "what"], rows, notes)


def latency_table(inputs: ReportInputs) -> Table:
    """Seconds per case on this machine, and the student's speed-up over each teacher setting."""
    latency = inputs.record("predict").get("latency", {})
    student = latency.get("student_s")
    rows = []
    for key, name in (("teacher_tta_s", "teacher, 5 folds x 8 mirror TTA"),
                      ("teacher_no_tta_s", "teacher, 5 folds, no TTA"),
                      ("student_s", "student, onnxruntime"),
                      ("threshold_s", "threshold baseline")):  # fmt: skip
        seconds = latency.get(key)
        if seconds is None:
            continue
        speedup = f"{seconds / student:.0f}x" if student and key.startswith("teacher") else "-"
        rows.append([name, fmt_seconds(seconds), speedup])
    serve = inputs.records.get("serve", {})
    if serve.get("round_trip_s") is not None:
        rows.append(["student over HTTP (POST /segment, round trip)", fmt_seconds(serve["round_trip_s"]), "-"])
    case = latency.get("case", "the held-out case")
    threads = latency.get("threads")
    notes = [f"Wall time for {case}: preprocessing, model and export to the original grid; the student's is the "
             f"median of {latency.get('student_repeats', 1)} runs after a warm-up"
             + (f"; {threads} CPU thread(s)" if threads else "") + "."]
    return Table("Latency on this machine", ["model", "per case", "student speed-up"], rows, notes)


def chain_rows(inputs: ReportInputs) -> list[dict[str, Any]]:
    """Teacher, then each link of the card's chain (assistants, then the student), with size and score."""
    teacher = inputs.record("teacher")
    chain = [{"name": "teacher (5 folds)", "parameters": teacher.get("parameters_per_member"),
              "dice": {r: region_mean(inputs.summaries.get("teacher", {}), r, "dice") for r in REGIONS},
              "where": "held-out"}]  # fmt: skip
    links = inputs.card.get("chain", [])
    for i, link in enumerate(links):
        final = i == len(links) - 1
        validation = link.get("validation", {})
        if final and "student" in inputs.summaries:
            dice = {r: region_mean(inputs.summaries["student"], r, "dice") for r in REGIONS}
            where = "held-out"
        else:
            dice = {r: validation.get(f"dice_gt/{r}") for r in REGIONS}
            where = "validation" if validation else "-"
        chain.append({"name": ("student" if final else f"assistant {i + 1}"), "parameters": link.get("parameters"),
                      "dice": dice, "where": where, "steps": link.get("steps")})  # fmt: skip
    return chain


def chain_table(inputs: ReportInputs) -> Table:
    rows = [[c["name"], fmt_count(c["parameters"]), *(fmt_number(c["dice"][r]) for r in REGIONS), c["where"],
             str(c.get("steps", "-"))] for c in chain_rows(inputs)]  # fmt: skip
    notes = ["held-out: mean Dice on the held-out cases; validation: Dice on the cache's validation case(s) "
             "recorded on the student card when that link finished (training cases the student never trained on)."]
    return Table("Distillation chain: teacher -> assistants -> student",
                 ["model", "parameters", "Dice WT", "Dice TC", "Dice ET", "scored on", "steps"], rows, notes)


def stage_table(inputs: ReportInputs) -> Table:
    rows, reused = [], set(inputs.demo.get("reused", []))
    for record in inputs.stages:
        state = "skipped: " + record["skipped"] if record.get("skipped") else (
            "reused" if record.get("stage") in reused else "ran")
        rows.append([record.get("label", record.get("stage", "?")), fmt_seconds(record.get("seconds")), state])
    total = sum(r.get("seconds", 0.0) for r in inputs.stages)
    return Table("Stages", ["stage", "time", "this run"], rows,
                 [f"Total {fmt_seconds(total)} of stage time when each stage ran; 'reused' stages were finished by an "
                  "earlier run in this folder and skipped."])  # fmt: skip


def machine_table(inputs: ReportInputs) -> Table:
    machine = inputs.demo.get("machine", {})
    return Table("Machine", ["", ""], [[str(k), str(v)] for k, v in machine.items()])


def all_tables(inputs: ReportInputs) -> list[Table]:
    return [accuracy_table(inputs), size_table(inputs), latency_table(inputs), chain_table(inputs),
            stage_table(inputs), machine_table(inputs)]  # fmt: skip
