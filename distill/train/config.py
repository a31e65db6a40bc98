"""Configuration of ``distill train-student`` and the teacher-assistant chain it trains."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.core.hashing import canonical_hash


class TrainConfigError(DistillError):
    """Options that cannot work together, or a resumed run whose options changed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (its hash guards resumption).

    Attributes:
        cache: teacher cache folder written by ``distill teacher-cache``.
        out: run folder (links, logs, final ``student.pt`` + ``student.json``).
        family: student family from the registry (``distill.students``).
        params / ratio: size of the final student: an absolute budget, or a fraction of ONE
            teacher member's parameters as recorded in the cache. Exactly one is required.
        assistants: ``"0"`` (direct KD), ``"auto"``, a count ``"K"``, or explicit sizes
            ``"300000,100000"`` (parameters, largest first).
        dense_guidance: DGKD (Son et al., ICCV 2021): every larger model of the chain (and
            the cached ensemble) guides each later link; one random teacher is dropped per batch.
        steps: optimiser steps per link.
        kd_weight: λ of ``(1-λ)·supervised + λ·KD`` (TAKD, Mirzadeh et al. 2020); 0 = no KD.
        temperature: KD temperature T (the loss is scaled by T²).
        graph_flow_weight: weight of 3D graph-flow distillation (links fed by a live teacher);
            ramped in over ``graph_flow_ramp`` steps after ``graph_flow_start``.
        graph_flow_stages: (shallow, deep) feature names used on both student and teacher.
        boundary_weight: Kervadec boundary loss, ramped in over the second half of each link.
        uncertainty_weighting: down-weight KD where the teacher ensemble disagrees.
        val_cases: held-out cache cases scored by sliding-window inference (chosen by hash).
    """

    cache: Path
    out: Path
    family: str = "unet"
    params: int | None = None
    ratio: float | None = None
    assistants: str = "0"
    dense_guidance: bool = False
    steps: int = 500
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (64, 64, 64)
    lr: float = 3e-3
    weight_decay: float = 1e-5
    kd_weight: float = 0.7
    temperature: float = 2.0
    graph_flow_weight: float = 0.0
    graph_flow_start: int = 0
    graph_flow_ramp: int = 50
    graph_flow_stages: tuple[str, str] = ("enc1", "bottleneck")
    paraphraser_steps: int = 100
    boundary_weight: float = 0.0
    uncertainty_weighting: bool = False
    foreground_fraction: float = 0.33
    val_cases: int = 1
    val_every: int = 0
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.params is None) == (self.ratio is None):
            raise TrainConfigError("give exactly one of --params N or --ratio R for the final student's size")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise TrainConfigError(f"--kd-weight must lie in [0, 1], got {self.kd_weight}")
        if self.steps < 1 or self.batch_size < 1:
            raise TrainConfigError("--steps and --batch-size must be at least 1")
        if self.temperature <= 0:
            raise TrainConfigError(f"--temperature must be positive, got {self.temperature}")
        if any(p < 8 for p in self.patch_size):
            raise TrainConfigError(f"--patch-size must be at least 8 per axis, got {self.patch_size}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cache"], data["out"] = str(self.cache), str(self.out)
        data["patch_size"], data["graph_flow_stages"] = list(self.patch_size), list(self.graph_flow_stages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["cache"], values["out"] = Path(values["cache"]), Path(values["out"])
        values["patch_size"] = tuple(values["patch_size"])
        values["graph_flow_stages"] = tuple(values["graph_flow_stages"])
        return cls(**values)

    def training_hash(self) -> str:
        """Hash of what changes the trained weights (not output paths, progress bars or devices)."""
        ignored = {"out", "progress", "device", "val_every", "checkpoint_every"}
        return canonical_hash({k: v for k, v in self.to_dict().items() if k not in ignored})


def parse_assistants(text: str) -> str | int | tuple[int, ...]:
    """``"auto"`` | ``"K"`` | ``"300000,100000"`` -> ``"auto"`` | K | explicit sizes."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise TrainConfigError(f"--assistants must be auto, a count, or comma-separated sizes; got {text!r}") from exc
    if len(values) == 1 and "," not in text:
        if values[0] < 0 or values[0] > 5:
            raise TrainConfigError(f"--assistants count must be 0..5, got {values[0]}")
        return values[0]
    return tuple(sorted(values, reverse=True))


def save_config(path: Path, config: TrainConfig) -> None:
    from distill.core.atomic import atomic_write_json

    atomic_write_json(path, {"config": config.to_dict(), "training_hash": config.training_hash()})


def check_resumable(path: Path, config: TrainConfig) -> None:
    """Refuse to resume a run folder made with different training options."""
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    if stored.get("training_hash") != config.training_hash():
        before, now = stored.get("config", {}), config.to_dict()
        changed = sorted(k for k in now if k not in {"out", "progress", "device"} and before.get(k) != now[k])
        raise TrainConfigError(
            f"{path.parent}: this run folder was started with other options (changed: {', '.join(changed) or 'unknown'}); "
            "use a new --out folder or the original options to resume"
        )
