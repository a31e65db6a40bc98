"""A MONAI network as a teacher member, so ensembles can mix architectures with nnU-Net.

A member is a small JSON config beside a weights file::

    {
      "architecture": "SegResNet",
      "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 8},
      "weights": "model.pt",
      "output_kind": "sigmoid",
      "channels": ["TC", "WT", "ET"],
      "input_order": ["t1", "t1ce", "t2", "flair"],
      "preprocessing": {"normalisation": "zscore_nonzero", "target_spacing": null, "divisor": 8},
      "tta": "mirror8",
      "roi_size": [96, 96, 96]
    }

``weights`` is relative to the config's folder and holds a plain ``state_dict`` (or a dict with
a ``"state_dict"`` key), read with ``torch.load(weights_only=True)``, so no code in the file runs.
The network class comes from an explicit name -> constructor table, never from an import
string, so a config cannot execute code either.

Prediction of one case:

1. the four modalities are put in the member's ``input_order`` (BraTS 2023 names such as
   ``t1n`` or ``t2f`` are accepted as aliases of Distill's modalities);
2. Distill's preprocessing (brain crop, z-score inside the brain, optional resampling, zero
   padding to ``divisor``; see :mod:`distill.data.preprocess`);
3. the network runs on the whole volume, or with MONAI's sliding-window inference over
   ``roi_size`` tiles (overlap 0.5, Gaussian blending), once per TTA pass: ``"mirror8"`` runs
   all 8 combinations of flips of the 3 spatial axes, ``"none"`` runs once;
4. sigmoid or softmax after each pass; mean and standard deviation over the passes;
5. region channels are put in Distill's order WT, TC, ET (MONAI's BraTS transform gives
   TC, WT, ET); other channel names keep the config's order;
6. both maps go back to the case's original grid.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks import nets

from distill.core.jsonfile import read_json_object
from distill.data.case import Case
from distill.data.conventions import REGIONS
from distill.data.discovery import MODALITIES, MODALITY_ALIASES
from distill.data.preprocess import PreprocessConfig, PreprocessRecord, preprocess, restore_probabilities
from distill.errors import DataError, DistillError
from distill.teacher.base import (
    OUTPUT_KINDS,
    SIGMOID,
    SOFTMAX,
    PassAccumulator,
    SoftPrediction,
    TeacherInfo,
    canonical_hash,
    file_sha256,
)

# The only networks a config may name. Adding one is a deliberate one-line change here.
ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "SegResNet": nets.SegResNet,
    "UNet": nets.UNet,
    "BasicUNet": nets.BasicUNet,
    "SwinUNETR": nets.SwinUNETR,
    "DynUNet": nets.DynUNet,
    "AttentionUnet": nets.AttentionUnet,
}

TTA_MODES = ("mirror8", "none")
NORMALISATIONS = ("zscore_nonzero",)  # what distill.data.preprocess does: z-score inside the brain
SLIDING_WINDOW_OVERLAP = 0.5
SLIDING_WINDOW_BLEND = "gaussian"
BACKGROUND_NAMES = ("background", "bg")
CONFIG_KEYS = frozenset(
    {"architecture", "kwargs", "weights", "output_kind", "channels", "input_order", "preprocessing", "tta", "roi_size"}
    | {"sw_batch_size"}
)
PREPROCESSING_KEYS = frozenset({"normalisation", "target_spacing", "divisor"})
DEFAULT_PREPROCESSING = {"normalisation": "zscore_nonzero", "target_spacing": None, "divisor": 1}
SPATIAL_AXES = (2, 3, 4)  # of a (batch, channel, X, Y, Z) tensor
_LISTED_KEYS = 5  # how many mismatching keys an error message shows


@dataclass(frozen=True)
class MemberConfig:
    """A validated member config; see the module docstring for the JSON form.

    Attributes:
        architecture: a key of :data:`ARCHITECTURES`.
        kwargs: constructor arguments of that network.
        weights: weights file name, relative to the config's folder (or absolute).
        output_kind: ``"sigmoid"`` or ``"softmax"``.
        channels: output channel names in the network's order.
        input_order: the network's input channels as Distill modalities (aliases resolved).
        normalisation: only ``"zscore_nonzero"``.
        target_spacing: resample to this spacing in mm, or ``None``.
        divisor: pad the preprocessed grid to a multiple of this (the network's total stride).
        tta: ``"mirror8"`` or ``"none"``.
        roi_size: sliding-window tile size, or ``None`` for whole-volume inference.
        sw_batch_size: tiles per forward call in sliding-window inference.
    """

    architecture: str
    kwargs: dict[str, Any]
    weights: str
    output_kind: str
    channels: tuple[str, ...]
    input_order: tuple[str, ...]
    normalisation: str = "zscore_nonzero"
    target_spacing: tuple[float, float, float] | None = None
    divisor: int = 1
    tta: str = "mirror8"
    roi_size: tuple[int, int, int] | None = None
    sw_batch_size: int = 1

    def prediction_hash(self) -> str:
        """Hash of every setting that changes predictions; the weights file name is left out
        (its content is hashed separately), so moving a member does not change its identity."""
        settings = {k: v for k, v in asdict(self).items() if k != "weights"}
        return canonical_hash(settings)


# --------------------------------------------------------------------------- config parsing


def _config_error(source: Path, problem: str) -> DistillError:
    return DistillError(f"{source}: {problem}")


def canonical_modality(name: str, source: Path) -> str:
    """``"t1n"`` -> ``"t1"``, ``"t2f"`` -> ``"flair"`` ...; unknown names are refused."""
    key = str(name).strip().lower()
    for modality, aliases in MODALITY_ALIASES.items():
        if key in aliases:
            return modality
    known = ", ".join(alias for aliases in MODALITY_ALIASES.values() for alias in aliases)
    raise _config_error(source, f"input_order names unknown modality {name!r} (known: {known})")


def _parse_input_order(value: Any, source: Path) -> tuple[str, ...]:
    if value is None:
        return MODALITIES
    if not isinstance(value, list):
        raise _config_error(source, f"input_order must be a list of {len(MODALITIES)} modality names, got {value!r}")
    order = tuple(canonical_modality(name, source) for name in value)
    if sorted(order) != sorted(MODALITIES):
        raise _config_error(source, f"input_order {value} must name each of {list(MODALITIES)} exactly once")
    return order


def _parse_channels(value: Any, output_kind: str, source: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise _config_error(source, f"channels must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise _config_error(source, f"channels {value} repeat a name")
    channels = tuple(c.upper() if c.upper() in REGIONS else c for c in value)
    if output_kind == SOFTMAX and channels[0].lower() not in BACKGROUND_NAMES:
        # Outside the brain crop a softmax map must say "background" with certainty.
        raise _config_error(
            source, f"a softmax member's first channel must be the background (named 'background'), got {value}"
        )
    return channels


def _parse_triple(value: Any, name: str, source: Path, kind: type) -> tuple | None:
    if value is None:
        return None
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or len(value) != 3 or not all(v > 0 for v in value):
        raise _config_error(source, f"{name} must be null or three positive numbers, got {value!r}")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise _config_error(source, f"{name} must be whole numbers, got {value!r}")
    return tuple(kind(v) for v in value)


def _parse_preprocessing(value: Any, source: Path) -> dict[str, Any]:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise _config_error(source, f"preprocessing must be an object, got {value!r}")
    unknown = sorted(set(value) - PREPROCESSING_KEYS)
    if unknown:
        raise _config_error(source, f"unknown preprocessing keys {unknown} (known: {sorted(PREPROCESSING_KEYS)})")
    normalisation = value.get("normalisation", "zscore_nonzero")
    if normalisation not in NORMALISATIONS:
        raise _config_error(
            source, f"normalisation {normalisation!r} is not supported (supported: {list(NORMALISATIONS)})"
        )
    divisor = value.get("divisor", 1)
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise _config_error(source, f"preprocessing divisor must be a positive integer, got {divisor!r}")
    spacing = _parse_triple(value.get("target_spacing"), "preprocessing target_spacing", source, float)
    return {"normalisation": normalisation, "divisor": divisor, "target_spacing": spacing}


def _check_kwargs_match(config: MemberConfig, source: Path) -> None:
    """The channel counts the config declares must be the ones the network is built with."""
    out_channels = config.kwargs.get("out_channels")
    if out_channels is not None and out_channels != len(config.channels):
        names = list(config.channels)
        raise _config_error(source, f"kwargs out_channels={out_channels} but {len(names)} channels are named {names}")
    in_channels = config.kwargs.get("in_channels")
    if in_channels is not None and in_channels != len(MODALITIES):
        raise _config_error(
            source, f"kwargs in_channels={in_channels}, but a BraTS case has {len(MODALITIES)} modalities"
        )


def parse_member_config(raw: Any, source: Path) -> MemberConfig:
    """Validate the JSON object of a member config; every problem names ``source``."""
    if not isinstance(raw, dict):
        raise _config_error(source, "a member config must be a JSON object")
    unknown = sorted(set(raw) - CONFIG_KEYS)
    if unknown:
        raise _config_error(source, f"unknown keys {unknown} (known: {sorted(CONFIG_KEYS)})")
    missing = [k for k in ("architecture", "weights", "channels") if k not in raw]
    if missing:
        raise _config_error(source, f"missing keys {missing}")
    if raw["architecture"] not in ARCHITECTURES:
        raise _config_error(
            source, f"architecture {raw['architecture']!r} is not allowed (allowed: {sorted(ARCHITECTURES)})"
        )
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise _config_error(source, f"kwargs must be an object, got {kwargs!r}")
    if not isinstance(raw["weights"], str) or not raw["weights"]:
        raise _config_error(source, f"weights must be a file name, got {raw['weights']!r}")
    output_kind = raw.get("output_kind", SIGMOID)
    if output_kind not in OUTPUT_KINDS:
        raise _config_error(source, f"output_kind {output_kind!r} must be one of {list(OUTPUT_KINDS)}")
    tta = raw.get("tta", "mirror8")
    if tta not in TTA_MODES:
        raise _config_error(source, f"tta {tta!r} must be one of {list(TTA_MODES)}")
    sw_batch_size = raw.get("sw_batch_size", 1)
    if not isinstance(sw_batch_size, int) or isinstance(sw_batch_size, bool) or sw_batch_size < 1:
        raise _config_error(source, f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
    preprocessing = _parse_preprocessing(raw.get("preprocessing"), source)
    roi_size = _parse_triple(raw.get("roi_size"), "roi_size", source, int)
    if roi_size is not None and any(n % preprocessing["divisor"] for n in roi_size):
        raise _config_error(
            source, f"roi_size {list(roi_size)} must be a multiple of the divisor {preprocessing['divisor']}"
        )
    config = MemberConfig(
        architecture=raw["architecture"],
        kwargs=kwargs,
        weights=raw["weights"],
        output_kind=output_kind,
        channels=_parse_channels(raw["channels"], output_kind, source),
        input_order=_parse_input_order(raw.get("input_order"), source),
        tta=tta,
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        **preprocessing,
    )
    _check_kwargs_match(config, source)
    return config


def read_member_config(path: Path) -> MemberConfig:
    """Read and validate a member config file."""
    path = Path(path)
    raw = read_json_object(path, "member config", "a member config is a JSON object (see the README)")
    return parse_member_config(raw, path)


# --------------------------------------------------------------------------- network and weights


def build_network(
    architecture: str, kwargs: Mapping[str, Any], source: Path | str = "member config"
) -> torch.nn.Module:
    """Construct a network from the allowed table; bad constructor arguments name ``source``."""
    if architecture not in ARCHITECTURES:
        raise DistillError(f"{source}: architecture {architecture!r} is not allowed (allowed: {sorted(ARCHITECTURES)})")
    try:
        return ARCHITECTURES[architecture](**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise DistillError(f"{source}: cannot build {architecture} from kwargs {dict(kwargs)}: {exc}") from exc


def _unpickler_reason(exc: Exception) -> str:
    """The informative line of torch's (long) weights-only refusal, or the error's first line."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = match.group(1) if match else (text.strip().splitlines() or [type(exc).__name__])[0]
    return reason[:200]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a plain ``state_dict`` or a dict holding one under ``"state_dict"``.

    A ``"module."`` prefix on every key (left by ``DataParallel``) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{path}: weights file not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        reason = f"{type(exc).__name__}: {_unpickler_reason(exc)}"
        raise DistillError(f"{path}: cannot read weights as a torch state_dict ({reason})") from exc
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise DistillError(
            f"{path}: expected a state_dict (a mapping of parameter names to tensors), got {type(loaded).__name__}"
        )
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DistillError(f"{path}: state_dict entries that are not name -> tensor: {bad[:_LISTED_KEYS]}")
    if all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return dict(loaded)


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_LISTED_KEYS])
    return shown + (f" (+{len(items) - _LISTED_KEYS} more)" if len(items) > _LISTED_KEYS else "")


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a network's state_dict and a file's (empty if they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} file {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    return problems


def load_weights_into(network: torch.nn.Module, weights_path: Path, config_path: Path, architecture: str) -> None:
    """Load a weights file into ``network``, refusing any key or shape that does not fit."""
    state = read_state_dict(weights_path)
    problems = state_dict_mismatches(network.state_dict(), state)
    if problems:
        raise DistillError(
            f"{weights_path}: weights do not fit the {architecture} described by {config_path}: " + "; ".join(problems)
        )
    network.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- inference helpers


def network_input(images: np.ndarray, input_order: Sequence[str]) -> np.ndarray:
    """``(4, X, Y, Z)`` images in ``MODALITIES`` order -> the same in the member's ``input_order``."""
    return images[[MODALITIES.index(m) for m in input_order]]


def flip_sets(tta: str) -> list[tuple[int, ...]]:
    """Spatial axes to flip per pass: ``[()]`` for ``"none"``, all 8 subsets for ``"mirror8"``."""
    if tta == "none":
        return [()]
    return [axes for r in range(len(SPATIAL_AXES) + 1) for axes in itertools.combinations(SPATIAL_AXES, r)]


def output_order(channels: Sequence[str]) -> list[int]:
    """Indices that put region channels in Distill's order WT, TC, ET; identity otherwise."""
    if sorted(channels) == sorted(REGIONS) and len(channels) == len(REGIONS):
        return [list(channels).index(r) for r in REGIONS]
    return list(range(len(channels)))


def _outside_crop(record: PreprocessRecord) -> np.ndarray:
    """Boolean original-grid mask of the voxels outside the brain crop."""
    outside = np.ones(record.original_shape, dtype=bool)
    outside[tuple(slice(a, b) for a, b in record.bbox)] = False
    return outside


class TorchMemberTeacher:
    """One MONAI network as a :class:`~distill.teacher.base.Teacher`.

    Args:
        config_path: the member's JSON config (weights path relative to its folder).
        device: torch device to run on, e.g. ``"cpu"`` or ``"cuda"``.
        name: member name reported in ``info.members`` (default: the config file's stem).

    Raises:
        DistillError: missing/unreadable config or weights, an architecture outside the
            allowed table, constructor arguments the network refuses, or weights that do not
            fit the network (first mismatching keys and shapes listed).
    """

    def __init__(self, config_path: Path | str, device: str = "cpu", name: str | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = read_member_config(self.config_path)
        self.weights_path = self.config_path.parent / self.config.weights
        self.device = torch.device(device)
        self.member_name = name or self.config_path.stem
        self.network = build_network(self.config.architecture, self.config.kwargs, self.config_path)
        load_weights_into(self.network, self.weights_path, self.config_path, self.config.architecture)
        self.network.to(self.device).eval()
        self._order = output_order(self.config.channels)
        self._info = self._describe()

    def _describe(self) -> TeacherInfo:
        config = self.config
        return TeacherInfo(
            name=f"monai:{config.architecture}",
            output_kind=config.output_kind,
            channels=tuple(config.channels[i] for i in self._order),
            parameters_per_member=sum(p.numel() for p in self.network.parameters()),
            members=(self.member_name,),
            tta=config.tta,
            preprocessing={
                "normalisation": config.normalisation,
                "target_spacing": list(config.target_spacing) if config.target_spacing else None,
                "divisor": config.divisor,
                "input_order": list(config.input_order),
                "roi_size": list(config.roi_size) if config.roi_size else None,
                "overlap": SLIDING_WINDOW_OVERLAP if config.roi_size else None,
                "blend": SLIDING_WINDOW_BLEND if config.roi_size else None,
            },
            identity={"config_sha256": config.prediction_hash(), "weights_sha256": file_sha256(self.weights_path)},
        )

    @property
    def info(self) -> TeacherInfo:
        return self._info

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(target_spacing=self.config.target_spacing, divisor=self.config.divisor)

    def _check_members(self, members: Sequence[str] | None) -> None:
        if members is not None and self.member_name not in members:
            raise DistillError(
                f"{self.config_path}: member {self.member_name!r} is not among the requested members {list(members)}"
            )

    def _check_case(self, case: Case) -> None:
        images = np.asarray(case.images)
        if images.ndim != 4 or images.shape[0] != len(MODALITIES):
            raise DataError(
                f"case {case.case_id}: expected images of shape ({len(MODALITIES)}, X, Y, Z) "
                f"in the order {list(MODALITIES)}, got {images.shape}"
            )

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, C_in, X, Y, Z)`` -> ``(1, K, X, Y, Z)`` logits, whole volume or tiled."""
        if self.config.roi_size is None:
            return self.network(x)
        return sliding_window_inference(
            x,
            self.config.roi_size,
            self.config.sw_batch_size,
            self.network,
            overlap=SLIDING_WINDOW_OVERLAP,
            mode=SLIDING_WINDOW_BLEND,
        )

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.config.channels):
            raise DistillError(
                f"{self.config_path}: the network outputs {logits.shape[1]} channels, "
                f"the config names {len(self.config.channels)}"
            )
        return torch.sigmoid(logits) if self.config.output_kind == SIGMOID else torch.softmax(logits, dim=1)

    def predict_preprocessed(self, images: np.ndarray) -> PassAccumulator:
        """Probabilities per TTA pass on the preprocessed grid, accumulated.

        Args:
            images: float32 ``(4, X, Y, Z)`` preprocessed, in the member's ``input_order``.

        Returns:
            A :class:`PassAccumulator` over ``(K, X, Y, Z)`` maps in the network's channel order.
        """
        accumulator = PassAccumulator()
        x = torch.from_numpy(np.ascontiguousarray(images[None], dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            for axes in flip_sets(self.config.tta):
                # Flip in, predict, flip back: flipping is its own inverse.
                flipped = torch.flip(x, axes) if axes else x
                logits = self._logits(flipped)
                logits = torch.flip(logits, axes) if axes else logits
                accumulator.add(self._activate(logits)[0].float().cpu().numpy())
        return accumulator

    def predict(self, case: Case, members: Sequence[str] | None = None) -> SoftPrediction:
        """Soft maps ``(K, *case.shape)`` on the case's grid; see the module docstring for the steps."""
        self._check_members(members)
        self._check_case(case)
        images = network_input(np.asarray(case.images, dtype=np.float32), self.config.input_order)
        prepared = preprocess(images, case.affine, config=self.preprocess_config, source=f"case {case.case_id}")
        accumulator = self.predict_preprocessed(prepared.images)
        probabilities = restore_probabilities(accumulator.mean()[self._order], prepared.record)
        uncertainty = restore_probabilities(accumulator.std()[self._order], prepared.record)
        if self.config.output_kind == SOFTMAX:
            probabilities[0][_outside_crop(prepared.record)] = 1.0  # certain background outside the brain
        return SoftPrediction(probabilities=probabilities, uncertainty=uncertainty, n_passes=int(accumulator.count))


def save_member(
    directory: Path | str,
    architecture: str,
    kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    channels: Sequence[str],
    output_kind: str = SIGMOID,
    input_order: Sequence[str] = MODALITIES,
    preprocessing: Mapping[str, Any] | None = None,
    tta: str = "mirror8",
    roi_size: Sequence[int] | None = None,
    name: str = "member",
) -> Path:
    """Write ``<name>.json`` and ``<name>.pt`` into ``directory``; returns the config path.

    The config is validated (and the network built and loaded once) before anything is
    written, so a member that :class:`TorchMemberTeacher` would refuse is never saved.
    """
    directory = Path(directory)
    config_path = directory / f"{name}.json"
    raw = {
        "architecture": architecture,
        "kwargs": dict(kwargs),
        "weights": f"{name}.pt",
        "output_kind": output_kind,
        "channels": list(channels),
        "input_order": list(input_order),
        "preprocessing": dict(preprocessing or DEFAULT_PREPROCESSING),
        "tta": tta,
        "roi_size": list(roi_size) if roi_size is not None else None,
    }
    config = parse_member_config(raw, config_path)
    network = build_network(architecture, config.kwargs, config_path)
    problems = state_dict_mismatches(network.state_dict(), state_dict)
    if problems:
        raise DistillError(f"{config_path}: state_dict does not fit {architecture}: " + "; ".join(problems))
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, directory / config.weights)
    config_path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return config_path
