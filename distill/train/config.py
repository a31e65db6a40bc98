"""Configuration of ``distill train-student`` and the teacher-assistant chain it trains."""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from distill.core.hashing import canonical_hash
from distill.core.jsonfile import read_json_object
from distill.errors import DistillError
from distill.losses.kd_correction import CORRECTIONS
from distill.losses.kd_teachers import BALANCES
from distill.train.augment import AUGMENTATIONS

LR_SCHEDULES = ("poly", "constant", "cosine")
KD_SOURCES = ("cache", "live")


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
        temperature: KD temperature T (the loss is scaled by T²); 1 is no tempering.
        kd_correction: ``"none"``, ``"mask"`` or ``"adjust"``: where the teacher contradicts the
            expert label, leave it, drop those voxels from KD, or swap ``p -> 1 - p`` (knowledge
            adjustment, Wen et al., Neurocomputing 2021; :mod:`distill.losses.kd_correction`).
        kd_balance: ``"voxel"`` (the voxel-mean KL), ``"region"`` (each region's KL normalised by
            its extent, :mod:`distill.losses.kd_balanced`) or ``"dice"`` (soft Dice between
            student and teacher maps, :mod:`distill.losses.kd_dice`), so ET can weigh as much as WT;
            ``"dice_voxel"`` soft Dice plus voxel-mean KL, the supervised Dice + BCE with the
            teacher's map as the target (:mod:`distill.losses.kd_teachers`).
        kd_warmup_steps: λ ramps linearly from 0 to ``kd_weight`` over this many steps (the
            supervised weight from 1 to ``1 - kd_weight``); 0 = no warm-up.
        lr_schedule: ``"poly"`` (``lr·(1 - t)^0.9``, as nnU-Net, per step), ``"cosine"`` or
            ``"constant"``, after ``lr_warmup_steps`` of linear warm-up (``t`` counts from the
            end of the warm-up).
        et_fraction: share of patches centred on an enhancing-tumour voxel when the case has
            one (else on a tumour voxel), beside ``foreground_fraction``; the two add up to <= 1.
        min_first_width: the student's first stage has at least this many channels (4 = no
            narrower than the four input modalities); 0 = the family's own widths.
        calibrate_thresholds: after training, choose per region the probability threshold
            that maximises mean Dice on the validation cases; recorded on the student card,
            and used by ``distill export`` unless ``--thresholds`` is given.
        recipe: the name of the preset (:mod:`distill.train.recipes`) the options came from, if
            any; a label only: the options themselves are what the hash guards.
        graph_flow_weight: weight of 3D graph-flow distillation (links fed by a live teacher);
            ramped in over ``graph_flow_ramp`` steps after ``graph_flow_start``.
        graph_flow_stages: (shallow, deep) feature names used on both student and teacher.
        paraphraser_steps, paraphraser_batches: pre-training of graph flow's paraphrasers on the
            live teacher's features: optimiser steps, over this many sampled batches.
        teacher_model_dir: the nnU-Net model folder of the cache's teacher. When set, the first
            link runs one of its folds live (:mod:`distill.teacher.features`), so graph flow and
            region affinity distil from the nnU-Net teacher's own features; KD still comes from
            the cache (unless ``kd_source="live"``). The fold's checkpoint must be the one the
            cache recorded.
        kd_source: where the first link's KD target comes from: ``"cache"`` (the cached maps of
            the unaugmented volumes) or ``"live"`` (the live nnU-Net fold's sigmoid on the very
            patch the student sees, augmentation included: consistent teaching, Beyer et al.,
            CVPR 2022). ``"live"`` needs ``teacher_model_dir`` and ``kd_weight`` > 0, and takes
            neither ``dense_guidance`` nor ``uncertainty_weighting`` (both read the cache).
        augment: ``"light"`` (flips, a small per-channel scale and shift) or ``"strong"`` (those
            plus nnU-Net's intensity transforms, :mod:`distill.train.augment`).
        teacher_fold: which fold runs live (default: the cache's first).
        teacher_context: voxels of context on every side of each patch that the live nnU-Net
            teacher is given (its maps and features cropped back to the patch): a bare 48³ patch
            is far less than the windows the fold was trained on. A multiple of the network's
            total stride (16 for the compact plans); 0 gives it the patch alone.
        region_affinity_weight: weight of Qin et al.'s region-affinity loss between the student's
            and the live teacher's ``region_affinity_stage`` features (needs ground truth).
        boundary_weight: Kervadec boundary loss, ramped in over the second half of each link.
        uncertainty_weighting: down-weight KD where the teacher ensemble disagrees.
        uncertainty_head: give the final student a distilled-uncertainty head (a 3x3x3 conv on
            ``dec0``, ~27·w0·3 parameters, :class:`~distill.students.StudentConfig`) trained in the
            same steps to predict the cache's per-region teacher spread (the standard deviation
            of the teacher's passes, in [0, 0.5]) with
            :func:`~distill.losses.uncertainty_regression`; its cost is on the student card and
            ``distill export`` packages it as a second output. Assistants never get it.
        uncertainty_head_weight: weight of that loss term in the link's total.
        ema_decay: each link ships the exponential moving average of its weights with this
            decay (:mod:`distill.train.ema`) instead of its last iterate; 0 = the last iterate.
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
    kd_correction: str = "none"
    kd_balance: str = "voxel"
    kd_warmup_steps: int = 0
    lr_schedule: str = "poly"
    lr_warmup_steps: int = 0
    graph_flow_weight: float = 0.0
    graph_flow_start: int = 0
    graph_flow_ramp: int = 50
    graph_flow_stages: tuple[str, str] = ("enc1", "bottleneck")
    paraphraser_steps: int = 100
    paraphraser_batches: int = 4
    teacher_model_dir: str | None = None
    teacher_fold: str | None = None
    teacher_context: int = 0
    kd_source: str = "cache"
    augment: str = "light"
    region_affinity_weight: float = 0.0
    region_affinity_stage: str = "dec1"
    boundary_weight: float = 0.0
    uncertainty_weighting: bool = False
    uncertainty_head: bool = False
    uncertainty_head_weight: float = 1.0
    ema_decay: float = 0.0
    foreground_fraction: float = 0.33
    et_fraction: float = 0.0
    min_first_width: int = 0
    calibrate_thresholds: bool = False
    val_cases: int = 1
    val_every: int = 0
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    progress: bool = True
    recipe: str | None = None
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
        self._check_options()

    def _check_options(self) -> None:
        """The options beyond the flags: one-line errors naming the ``--set`` key."""
        choices = {"kd_correction": CORRECTIONS, "kd_balance": BALANCES, "lr_schedule": LR_SCHEDULES,
                   "kd_source": KD_SOURCES, "augment": AUGMENTATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("kd_warmup_steps", "lr_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.steps:
                raise TrainConfigError(f"{name} must be a whole number of steps in [0, steps={self.steps}]; "
                                       f"got {value!r}")
        if self.kd_warmup_steps and self.kd_weight == 1.0:
            raise TrainConfigError("kd_warmup_steps ramps λ up from 0, which leaves no loss at all at the start "
                                   "with --kd-weight 1")
        if self.lr_warmup_steps == self.steps and self.lr_warmup_steps > 0:
            raise TrainConfigError(f"lr_warmup_steps ({self.lr_warmup_steps}) leaves no step after the warm-up; "
                                   "use fewer")
        fractions = {"foreground_fraction": self.foreground_fraction, "et_fraction": self.et_fraction}
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise TrainConfigError(f"{name} must lie in [0, 1]; got {value!r}")
        if self.foreground_fraction + self.et_fraction > 1.0 + 1e-9:
            raise TrainConfigError(f"foreground_fraction + et_fraction must not exceed 1; got "
                                   f"{self.foreground_fraction} + {self.et_fraction}")  # fmt: skip
        width = self.min_first_width
        if isinstance(width, bool) or not isinstance(width, int) or not 0 <= width <= 64:
            raise TrainConfigError(f"min_first_width must be a channel count in [0, 64]; got {self.min_first_width!r}")
        if self.paraphraser_batches < 1 or self.paraphraser_steps < 0:
            raise TrainConfigError("paraphraser_batches must be at least 1 and paraphraser_steps at least 0")
        if self.region_affinity_weight < 0:
            raise TrainConfigError(f"region_affinity_weight must be non-negative; got {self.region_affinity_weight}")
        if isinstance(self.teacher_context, bool) or not isinstance(self.teacher_context, int) \
                or self.teacher_context < 0:
            raise TrainConfigError(f"teacher_context must be a voxel count >= 0; got {self.teacher_context!r}")
        if self.teacher_context and self.teacher_model_dir is None:
            raise TrainConfigError("teacher_context widens the live nnU-Net teacher's input: set teacher_model_dir too")
        if self.kd_source == "live" and self.teacher_model_dir is None:
            raise TrainConfigError("kd_source=live distils from the live nnU-Net teacher: set teacher_model_dir too")
        if self.kd_source == "live" and self.kd_weight == 0:
            raise TrainConfigError("kd_source=live with kd_weight=0 would run the live teacher for nothing; "
                                   "give kd_weight > 0 or leave kd_source=cache")
        if self.kd_source == "live" and self.dense_guidance:
            raise TrainConfigError("kd_source=live with dense_guidance would mix the cached maps back in (DGKD "
                                   "keeps the cache among the first link's teachers); use one or the other")
        if self.kd_source == "live" and self.uncertainty_weighting:
            raise TrainConfigError("uncertainty_weighting reads the cached ensemble's spread, which a single "
                                   "live fold does not have: leave it off with kd_source=live")
        if self.teacher_fold is not None and self.teacher_model_dir is None:
            raise TrainConfigError("teacher_fold names a fold of teacher_model_dir: set teacher_model_dir too")
        if isinstance(self.uncertainty_head_weight, bool) or not self.uncertainty_head_weight >= 0:
            raise TrainConfigError(f"uncertainty_head_weight must be a non-negative number; "
                                   f"got {self.uncertainty_head_weight!r}")
        if self.uncertainty_head and self.uncertainty_head_weight == 0:
            raise TrainConfigError("uncertainty_head=true with uncertainty_head_weight=0 would leave the head "
                                   "untrained; give it a positive weight")
        if self.uncertainty_head_weight != 1.0 and not self.uncertainty_head:
            raise TrainConfigError("uncertainty_head_weight weights the uncertainty head's loss: "
                                   "set uncertainty_head=true too")
        if isinstance(self.ema_decay, bool) or not 0.0 <= self.ema_decay < 1.0:
            raise TrainConfigError(f"ema_decay must lie in [0, 1) (0 = no weight average); got {self.ema_decay!r}")
        if self.calibrate_thresholds and self.val_cases < 1:
            raise TrainConfigError("calibrate_thresholds needs validation cases: set val_cases to 1 or more")

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
        """Hash of what changes the trained weights (not output paths, progress bars or devices).

        Options added after the first release count only when they differ from their default,
        so a run folder started before they existed resumes with its old hash.
        """
        # the live teacher's folder is where it lies, not what it is: its checkpoint is checked
        # against the cache's record, and the fold is hashed
        ignored = {"out", "progress", "device", "val_every", "checkpoint_every", "recipe", "teacher_model_dir"}
        defaults = option_defaults()
        hashed = {k: v for k, v in self.to_dict().items()
                  if k not in ignored and not (k in LATER_OPTIONS and v == defaults[k])}  # fmt: skip
        if self.teacher_model_dir is not None:
            hashed["live_teacher"] = True
        return canonical_hash(hashed)


#: Options added after run folders were first written; hashed only when not at their default.
LATER_OPTIONS = ("kd_correction", "kd_balance", "kd_warmup_steps", "lr_schedule", "lr_warmup_steps", "et_fraction",
                 "min_first_width", "calibrate_thresholds", "paraphraser_batches", "teacher_fold",
                 "region_affinity_weight", "region_affinity_stage", "uncertainty_head",
                 "uncertainty_head_weight", "teacher_context", "ema_decay", "kd_source", "augment")  # fmt: skip


def option_defaults() -> dict[str, Any]:
    """Every TrainConfig field with a plain default -> that default."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


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
    stored = read_json_object(path, "run record", "remove the run folder to start again", TrainConfigError)
    if stored.get("training_hash") != config.training_hash():
        before, now, defaults = stored.get("config", {}), config.to_dict(), option_defaults()
        changed = sorted(k for k in now if k not in {"out", "progress", "device", "recipe"}
                         and before.get(k, defaults.get(k)) != now[k])  # fmt: skip
        raise TrainConfigError(
            f"{path.parent}: this run folder was started with other options "
            f"(changed: {', '.join(changed) or 'unknown'}); "
            "use a new --out folder or the original options to resume"
        )


# ---------------------------------------------------------------------------------------------
# ``--set key=value``

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
#: Fields ``--set`` does not take: they have their own flags (or are not options at all).
NOT_SETTABLE = {"cache": "--cache", "out": "--out", "recipe": "--recipe", "extra": None}


def parse_set_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["key=value", ...]`` -> TrainConfig values, each parsed and type-checked by its field's type.

    Booleans take true/false (yes/no, on/off, 1/0); ``X | None`` fields take ``none``; tuples
    take comma-separated values (``patch_size=48`` is a cube); a later item wins over an earlier.

    Raises:
        TrainConfigError: not ``key=value``, an unknown key (the message lists the known ones),
            or a value that does not parse as the field's type.
    """
    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TrainConfigError(f"--set takes key=value, got {item!r}")
        if key in NOT_SETTABLE:
            flag = NOT_SETTABLE[key]
            raise TrainConfigError(f"--set {key}: not settable here" + (f"; use {flag}" if flag else ""))
        if key not in hints:
            known = ", ".join(sorted(k for k in hints if k not in NOT_SETTABLE))
            raise TrainConfigError(f"--set {key}: unknown option; known: {known}")
        try:
            values[key] = _parse_value(hints[key], text.strip(), key)
        except (TypeError, ValueError) as exc:
            raise TrainConfigError(f"--set {key}={text.strip()}: {exc}") from None
    return values


def _parse_value(kind: Any, text: str, key: str) -> Any:
    """``text`` as a value of the type ``kind`` (the field types TrainConfig uses)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if text.lower() in {"none", "null", ""}:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        args = typing.get_args(kind)
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if kind is str:
        return text
    if kind is Path:
        return Path(text)
    if typing.get_origin(kind) is tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) == 1 and len(args) > 1 and args[0] is int:
            parts = parts * len(args)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values")
        return tuple(_parse_value(a, p, key) for a, p in zip(args, parts))
    raise TypeError(f"option {key} of type {kind} cannot be set from text")
