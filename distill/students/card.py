"""The student card and run folder: the one owner of what ``distill train-student`` leaves behind.

A run folder holds ``student.pt`` (a plain state dict, loadable with
``torch.load(weights_only=True)``) and ``student.json``, the card: what the student is (its
:class:`~distill.students.unet.StudentConfig`, parameters, MACs), what it learnt from (teacher,
cache, preprocessing, cases), how (chain links, losses, options) and how well (validation).
Training writes cards through :func:`write_student_run`; export reads them through
:func:`read_student_run`; nothing else parses the JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill import __version__
from distill.core.atomic import atomic_path, atomic_write_json
from distill.core.jsonfile import read_json_object
from distill.core.outputs import OUTPUT_KINDS
from distill.errors import DistillError
from distill.students.unet import StudentConfig, StudentConfigError

CARD_FORMAT = "distill-student-card"
CARD_VERSION = 1
STUDENT_WEIGHTS = "student.pt"
STUDENT_CARD = "student.json"
#: What an untrained student's card names in place of a teacher.
NO_TEACHER = "none (untrained, random weights)"


class StudentCardError(DistillError):
    """A run folder or its card is missing, unreadable, or describes another kind of student."""


@dataclass(frozen=True)
class LinkRecord:
    """One trained link of the teacher-assistant chain (the last link is the student)."""

    name: str
    parameters: int
    steps: int
    seconds: float
    steps_per_second: float
    peak_memory_mb: float
    validation: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parameters": self.parameters, "steps": self.steps,
                "seconds": round(self.seconds, 2), "steps_per_second": round(self.steps_per_second, 3),
                "peak_memory_mb": round(self.peak_memory_mb, 1), "validation": dict(self.validation)}  # fmt: skip


@dataclass(frozen=True)
class TrainingData:
    """What the student learnt from.

    Attributes:
        teacher: the teacher's name (or :data:`NO_TEACHER`).
        teacher_identity_hash: hash of everything that defines the teacher's predictions.
        preprocessing: the cache's preprocessing (spacing, divisor, image order, normalisation),
            which a package must repeat at inference.
        cache, cache_spec_hash, mode: the teacher cache and its mode (``full`` / ``oof``).
        teacher_parameters_per_member: one teacher member's size (what ``--ratio`` refers to).
        train_cases, val_cases: case ids used for training and validation.
    """

    teacher: str
    teacher_identity_hash: str
    preprocessing: dict[str, Any]
    cache: str | None = None
    cache_spec_hash: str | None = None
    mode: str | None = None
    teacher_parameters_per_member: int | None = None
    train_cases: tuple[str, ...] = ()
    val_cases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        optional = {"cache": self.cache, "cache_spec_hash": self.cache_spec_hash, "mode": self.mode,
                    "teacher_parameters_per_member": self.teacher_parameters_per_member}  # fmt: skip
        return {
            **{k: v for k, v in optional.items() if v is not None},
            "teacher": self.teacher, "teacher_identity_hash": self.teacher_identity_hash,
            "preprocessing": dict(self.preprocessing),
            **({"train_cases": list(self.train_cases), "val_cases": list(self.val_cases)} if self.cache else {}),
        }  # fmt: skip


@dataclass(frozen=True)
class ThresholdCalibration:
    """Per-region probability thresholds chosen on the validation cases (never on test cases).

    Attributes:
        thresholds: region -> the threshold (a voxel is in the region where ``p > threshold``)
            that maximised the mean Dice over ``cases``.
        dice_default: region -> mean Dice over ``cases`` at ``default_threshold``.
        dice_calibrated: region -> mean Dice over ``cases`` at the chosen threshold.
        grid: the thresholds searched.
        cases: the validation case ids the search used.
        default_threshold: the threshold the calibration is compared with (0.5).
    """

    thresholds: dict[str, float]
    dice_default: dict[str, float]
    dice_calibrated: dict[str, float]
    grid: tuple[float, ...]
    cases: tuple[str, ...]
    default_threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": dict(self.thresholds), "dice_default": dict(self.dice_default),
                "dice_calibrated": dict(self.dice_calibrated), "grid": list(self.grid), "cases": list(self.cases),
                "default_threshold": self.default_threshold}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdCalibration:
        return cls(thresholds={str(k): float(v) for k, v in dict(data["thresholds"]).items()},
                   dice_default={str(k): float(v) for k, v in dict(data.get("dice_default", {})).items()},
                   dice_calibrated={str(k): float(v) for k, v in dict(data.get("dice_calibrated", {})).items()},
                   grid=tuple(float(t) for t in data.get("grid", ())), cases=tuple(data.get("cases", ())),
                   default_threshold=float(data.get("default_threshold", 0.5)))  # fmt: skip


@dataclass(frozen=True)
class UncertaintyHeadRecord:
    """The student's distilled-uncertainty head (``train-student --set uncertainty_head=true``).

    Attributes:
        parameters: parameters of the head alone (counted in the card's ``parameters`` too).
        macs_128: its MACs on a 128^3 tile (counted in ``macs_128`` too).
        share_of_parameters: ``parameters`` over the whole student's.
        target: what it learnt to predict: the teacher cache's per-region standard deviation of the
            teacher's per-pass probabilities, in [0, 0.5]; ``source`` says whose passes.
        passes: forward passes that spread was taken over (members x TTA flips), ``None`` if unknown.
        loss: the loss description, ``weight``: its weight in each step's total.
    """

    parameters: int
    macs_128: int
    share_of_parameters: float
    source: str
    passes: int | None = None
    loss: str = "Bernoulli cross-entropy of sigmoid(z) against spread / 0.5 (uncertainty_regression)"
    weight: float | None = None
    target: str = "per-region standard deviation of the teacher's per-pass probabilities (probability units, [0, 0.5])"

    def to_dict(self) -> dict[str, Any]:
        data = {"parameters": self.parameters, "macs_128": self.macs_128,
                "share_of_parameters": round(self.share_of_parameters, 6), "target": self.target,
                "source": self.source, "passes": self.passes, "loss": self.loss, "weight": self.weight}  # fmt: skip
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UncertaintyHeadRecord:
        passes, weight = data.get("passes"), data.get("weight")
        return cls(parameters=int(data["parameters"]), macs_128=int(data["macs_128"]),
                   share_of_parameters=float(data["share_of_parameters"]), source=str(data["source"]),
                   passes=None if passes is None else int(passes), loss=str(data.get("loss", cls.loss)),
                   weight=None if weight is None else float(weight),
                   target=str(data.get("target", cls.target)))  # fmt: skip


def uncertainty_head_record(config: StudentConfig, parameters: int, source: str, passes: int | None = None,
                            weight: float | None = None) -> UncertaintyHeadRecord:
    """The card's record of ``config``'s uncertainty head; ``parameters``: the whole student's."""
    from distill.students.sizing import uncertainty_head_cost

    head_parameters, head_macs = uncertainty_head_cost(config)
    return UncertaintyHeadRecord(parameters=head_parameters, macs_128=head_macs,
                                 share_of_parameters=head_parameters / parameters, source=source, passes=passes,
                                 weight=weight)  # fmt: skip


def teacher_passes(teacher: Mapping[str, Any]) -> int | None:
    """Forward passes per case of a cached teacher description (``TeacherInfo.to_dict()``): members x TTA flips.

    ``None`` for a TTA this function does not know. In an out-of-fold cache a training case
    gets fewer (only the folds that did not train on it).
    """
    flips = {"mirror8": 8, "none": 1}.get(str(teacher.get("tta")))
    members = teacher.get("members") or ()
    return flips * len(members) if flips is not None and members else None


@dataclass(frozen=True)
class StudentCard:
    """``student.json`` as a typed object; :meth:`to_dict` / :meth:`from_dict` are its JSON form."""

    student: StudentConfig
    parameters: int
    macs_128: int
    channels: tuple[str, ...]
    data: TrainingData
    family: str = "unet"
    ratio_to_teacher: float | None = None
    chain: tuple[LinkRecord, ...] = ()
    loss: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    total_seconds: float | None = None
    toolkit_version: str = __version__
    #: thresholds calibrated on the validation cases (``calibrate_thresholds``); cards without it still read
    calibration: ThresholdCalibration | None = None
    #: the distilled-uncertainty head's cost and target (``uncertainty_head``); absent for students without one
    uncertainty_head: UncertaintyHeadRecord | None = None

    @property
    def output_kind(self) -> str:
        return self.student.output_kind

    def with_total_seconds(self, seconds: float) -> StudentCard:
        return replace(self, total_seconds=round(seconds, 2))

    def summary(self) -> dict[str, Any]:
        """The card fields a model package repeats (cases, losses and timings stay with the run)."""
        full = self.to_dict()
        keys = ("format", "version", "toolkit_version", "family", "parameters", "macs_128", "ratio_to_teacher",
                "output_kind", "channels", "validation", "calibration", "uncertainty_head")  # fmt: skip
        return {k: full[k] for k in keys if k in full}

    def to_dict(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "format": CARD_FORMAT, "version": CARD_VERSION, "toolkit_version": self.toolkit_version,
            "family": self.family, "student": self.student.to_dict(),
            "parameters": self.parameters, "macs_128": self.macs_128,
        }  # fmt: skip
        if self.ratio_to_teacher is not None:
            card["ratio_to_teacher"] = self.ratio_to_teacher
        card.update(output_kind=self.output_kind, channels=list(self.channels))
        if self.chain:
            card["chain"] = [link.to_dict() for link in self.chain]
        if self.loss:
            card["loss"] = dict(self.loss)
        if self.training:
            card["training"] = dict(self.training)
        card.update(data=self.data.to_dict(), validation=dict(self.validation))
        if self.total_seconds is not None:
            card["total_seconds"] = self.total_seconds
        if self.calibration is not None:
            card["calibration"] = self.calibration.to_dict()
        if self.uncertainty_head is not None:
            card["uncertainty_head"] = self.uncertainty_head.to_dict()
        return card

    @classmethod
    def from_dict(cls, card: Mapping[str, Any], source: str = STUDENT_CARD) -> StudentCard:
        """Parse and check a card; ``source`` names the file in errors.

        Raises:
            StudentCardError: another format, a newer version, a missing field, or a student
                config that does not validate.
        """
        if card.get("format") != CARD_FORMAT:
            raise StudentCardError(f"{source}: not a Distill student card (format {card.get('format')!r})")
        if not isinstance(card.get("version"), int) or card["version"] > CARD_VERSION:
            raise StudentCardError(
                f"{source}: card version {card.get('version')!r}; this Distill reads version {CARD_VERSION}"
            )
        missing = [k for k in ("student", "parameters", "macs_128", "channels", "data") if k not in card]
        if missing:
            raise StudentCardError(f"{source}: the card lacks {missing}; re-run `distill train-student`")
        try:
            student = StudentConfig.from_dict(card["student"])
        except (StudentConfigError, TypeError) as exc:
            raise StudentCardError(f"{source}: invalid student config ({exc})") from exc
        if (card.get("output_kind", student.output_kind) != student.output_kind
                or student.output_kind not in OUTPUT_KINDS):
            raise StudentCardError(f"{source}: output_kind {card.get('output_kind')!r} contradicts the student config")
        data = dict(card["data"])
        missing = [k for k in ("teacher", "teacher_identity_hash", "preprocessing") if k not in data]
        if missing:
            raise StudentCardError(f"{source}: the card's data section lacks {missing}")
        return cls(
            student=student, parameters=int(card["parameters"]), macs_128=int(card["macs_128"]),
            channels=tuple(card["channels"]), family=str(card.get("family", student.family)),
            ratio_to_teacher=card.get("ratio_to_teacher"),
            chain=tuple(LinkRecord(**link) for link in card.get("chain", [])),
            loss=dict(card.get("loss", {})), training=dict(card.get("training", {})),
            data=TrainingData(**{**data, "train_cases": tuple(data.get("train_cases", ())),
                                 "val_cases": tuple(data.get("val_cases", ()))}),
            validation=dict(card.get("validation", {})), total_seconds=card.get("total_seconds"),
            toolkit_version=str(card.get("toolkit_version", "unknown")),
            calibration=_calibration(card, source),
            uncertainty_head=_uncertainty_head(card, student, source),
        )  # fmt: skip


def _calibration(card: Mapping[str, Any], source: str) -> ThresholdCalibration | None:
    if card.get("calibration") is None:
        return None
    try:
        calibration = ThresholdCalibration.from_dict(card["calibration"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StudentCardError(f"{source}: unreadable calibration section ({exc})") from exc
    bad = {k: v for k, v in calibration.thresholds.items() if not 0.0 < v < 1.0}
    if bad:
        raise StudentCardError(f"{source}: calibrated thresholds {bad} are not probabilities strictly between 0 and 1")
    return calibration


def _uncertainty_head(card: Mapping[str, Any], student: StudentConfig, source: str) -> UncertaintyHeadRecord | None:
    record = card.get("uncertainty_head")
    if (record is not None) != student.uncertainty_head:
        raise StudentCardError(f"{source}: the uncertainty_head section and the student config disagree on whether "
                               "the student has an uncertainty head")  # fmt: skip
    if record is None:
        return None
    try:
        return UncertaintyHeadRecord.from_dict(record)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StudentCardError(f"{source}: unreadable uncertainty_head section ({exc})") from exc


def read_card(path: str | Path) -> StudentCard:
    """The card stored at ``path`` (usually ``<run>/student.json``)."""
    document = read_json_object(path, "student card", "a student run folder comes from `distill train-student`",
                                StudentCardError)  # fmt: skip
    return StudentCard.from_dict(document, source=str(path))


def write_student_run(folder: str | Path, state_dict: Mapping[str, Any], card: StudentCard) -> tuple[Path, Path]:
    """Write ``student.pt`` then ``student.json`` atomically; returns both paths.

    The card goes last, so a folder with a card always has the weights it describes.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, card_path = folder / STUDENT_WEIGHTS, folder / STUDENT_CARD
    with atomic_path(weights) as tmp:
        torch.save(dict(state_dict), tmp)
    atomic_write_json(card_path, card.to_dict())
    return weights, card_path


@dataclass(frozen=True)
class StudentRun:
    """A run folder opened: the card, and where its weights and card live."""

    card: StudentCard
    weights_path: Path
    card_path: Path

    def load_model(self):
        """The student rebuilt from the card, with the weights loaded ``weights_only``, in eval mode."""
        import torch

        from distill.students.registry import build_student
        from distill.students.sizing import count_parameters

        model = build_student(self.card.student)
        try:
            model.load_state_dict(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        except Exception as exc:  # unpickling and key mismatches raise several types
            raise StudentCardError(
                f"{self.weights_path}: does not load into the student the card describes ({exc})"
            ) from exc
        parameters = count_parameters(model)
        if parameters != self.card.parameters:
            raise StudentCardError(
                f"{self.card_path}: card says {self.card.parameters:,} parameters, the weights have {parameters:,}"
            )
        return model.eval()


def read_student_run(folder: str | Path) -> StudentRun:
    """Open a run folder made by ``distill train-student`` (or :func:`write_student_run`)."""
    folder = Path(folder)
    weights, card_path = folder / STUDENT_WEIGHTS, folder / STUDENT_CARD
    for path in (weights, card_path):
        if not path.is_file():
            raise StudentCardError(f"{path}: missing; a student run folder (from `distill train-student`) holds "
                                   f"{STUDENT_WEIGHTS} and {STUDENT_CARD}")  # fmt: skip
    return StudentRun(read_card(card_path), weights, card_path)
