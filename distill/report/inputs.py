"""What the demo's stages left in its folder, read into one object the report is built from.

The report never runs a model: every number comes from a file a stage wrote,

* ``stages/<stage>.json``: one record per finished stage (``index``, ``label``, ``seconds``,
  ``reused``, and what the stage made; see :mod:`distill.demo`);
* ``demo.json``: the machine and the demo's options;
* the evaluation ``summary.json`` files, the student card (``student.json``) and the package
  manifest (``model.json``) those records point at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.core.jsonfile import read_json_object
from distill.errors import DistillError

STAGES_DIR = "stages"
DEMO_RECORD = "demo.json"
MODELS = ("teacher", "student", "threshold")


class ReportError(DistillError):
    """The demo folder lacks a record or file the report needs."""


@dataclass
class ReportInputs:
    """Everything the report shows, as read from the demo folder."""

    out_dir: Path
    demo: dict[str, Any]
    stages: list[dict[str, Any]]
    summaries: dict[str, dict[str, Any]]
    card: dict[str, Any]
    manifest: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, stage: str) -> dict[str, Any]:
        try:
            return self.records[stage]
        except KeyError:
            raise ReportError(f"{self.out_dir / STAGES_DIR}: no record of the {stage!r} stage; "
                              "rerun the demo") from None


def _resolve(out_dir: Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else out_dir / path


def read_stage_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """``stage -> record`` for every ``stages/*.json`` (unreadable or foreign files are refused)."""
    folder = Path(out_dir) / STAGES_DIR
    records = {}
    for path in sorted(folder.glob("*.json")):
        record = read_json_object(path, "stage record", "rerun the demo", error=ReportError)
        records[record.get("stage", path.stem)] = record
    return records


def collect(out_dir: str | Path) -> ReportInputs:
    """Read the demo folder ``out_dir``.

    Raises:
        ReportError: a record or a file it names is missing or unreadable.
    """
    out_dir = Path(out_dir)
    records = read_stage_records(out_dir)
    demo = read_json_object(out_dir / DEMO_RECORD, "demo record", "rerun the demo", error=ReportError)
    inputs = ReportInputs(out_dir=out_dir, demo=demo, stages=[], summaries={}, card={}, manifest={}, records=records)
    inputs.stages = sorted(records.values(), key=lambda r: r.get("index", 0))
    evaluation = inputs.record("evaluate")
    inputs.summaries = {
        model: read_json_object(_resolve(out_dir, evaluation["summaries"][model]), f"{model} evaluation summary",
                                error=ReportError)
        for model in MODELS if model in evaluation.get("summaries", {})
    }  # fmt: skip
    inputs.card = read_json_object(_resolve(out_dir, inputs.record("student")["card"]), "student card",
                                   error=ReportError)  # fmt: skip
    inputs.manifest = read_json_object(_resolve(out_dir, inputs.record("export")["package"]) / "model.json",
                                       "package manifest", error=ReportError)  # fmt: skip
    return inputs


def resolve(inputs: ReportInputs, path: str | Path) -> Path:
    """A path from a record: absolute as written, or relative to the demo folder."""
    return _resolve(inputs.out_dir, path)
