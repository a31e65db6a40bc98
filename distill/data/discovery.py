"""Finding BraTS cases on disk, whatever naming they use.

Three layouts are recognised (``.nii`` and ``.nii.gz`` alike):

* BraTS 2017-2021: ``<id>_t1``, ``<id>_t1ce``, ``<id>_t2``, ``<id>_flair``, ``<id>_seg``
* BraTS 2023+:     ``<id>-t1n``, ``<id>-t1c``, ``<id>-t2w``, ``<id>-t2f``, ``<id>-seg``
* nnU-Net raw:     ``imagesTr/<id>_0000..0003``, ``labelsTr/<id>``, ``dataset.json``
  (channel order read from ``dataset.json``'s ``channel_names``)

Files may sit in one folder per case or all in one folder. Every case is returned with
its four modalities in Distill's canonical order ``MODALITIES`` (the order nnU-Net's own
BraTS conversion uses), so channel ``i`` means the same thing everywhere downstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from distill.core.jsonfile import read_json_object
from distill.data.conventions import LAYOUT_BRATS2017, LAYOUT_BRATS2023, LAYOUT_NNUNET
from distill.data.nifti import is_nifti_path, strip_nifti_suffix
from distill.errors import DataError

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# File-name suffix -> canonical modality, per layout. "seg" marks the label map.
_SUFFIXES: dict[str, dict[str, str]] = {
    LAYOUT_BRATS2017: {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    LAYOUT_BRATS2023: {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"},
}
_PATTERNS: dict[str, re.Pattern[str]] = {
    LAYOUT_BRATS2017: re.compile(r"^(?P<case>.+)_(?P<suffix>t1ce|t1|t2|flair|seg)$", re.IGNORECASE),
    LAYOUT_BRATS2023: re.compile(r"^(?P<case>.+)-(?P<suffix>t1n|t1c|t2w|t2f|seg)$", re.IGNORECASE),
}
# Channel names seen in nnU-Net dataset.json files -> canonical modality.
_CHANNEL_NAMES: dict[str, str] = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "native t1": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1-gd": "t1ce", "t1 contrast": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2-flair": "flair", "t2 flair": "flair",
}  # fmt: skip
# Aliases a user may use to name a modality (e.g. in a service request).
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w"),
    "t1ce": ("t1ce", "t1c", "t1gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}
_SCAN_DEPTH = 2


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: the case identifier shared by its files.
        images: canonical modality (``MODALITIES`` order) -> NIfTI path.
        label: ground-truth label map, if present.
        layout: ``"brats2017"``, ``"brats2023"`` or ``"nnunet"``; hints the label convention.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    layout: str

    @property
    def image_paths(self) -> list[Path]:
        return [self.images[m] for m in MODALITIES]


@dataclass(frozen=True)
class LabelMaps:
    """Label maps found under a folder: case id -> path, and the layout they came in."""

    files: dict[str, Path]
    layout: str | None
    root: Path = field(default=Path("."))


def find_cases(
    root: str | Path, require_labels: bool = False, incomplete: dict[str, str] | None = None
) -> list[CaseFiles]:
    """All cases under ``root`` (a dataset folder, a single case folder, or an nnU-Net raw dataset).

    Raises :class:`DataError` when nothing is found, when a case lacks a modality (naming the
    case and modality), when layouts are mixed, or when ``require_labels`` and a label is missing.
    Given an ``incomplete`` dict, a case that lacks a modality is recorded there (case id ->
    reason) and left out instead (a batch that goes on past failures).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    cases = _find_nnunet_cases(root, incomplete) if is_nnunet_raw(root) else _find_brats_cases(root, incomplete)
    if not cases and not incomplete:
        raise DataError(
            f"{root}: no BraTS cases found (expected <id>_t1/_t1ce/_t2/_flair, <id>-t1n/-t1c/-t2w/-t2f, "
            "or an nnU-Net raw dataset with dataset.json and imagesTr/)"
        )
    if require_labels:
        missing = [c.case_id for c in cases if c.label is None]
        if missing:
            raise DataError(
                f"{root}: no label map (segmentation) for cases {missing[:10]}{' ...' if len(missing) > 10 else ''}"
            )
    return cases


def find_label_maps(root: str | Path) -> LabelMaps:
    """Label maps under ``root``: the ``seg`` files of a BraTS or nnU-Net dataset, or else every
    NIfTI in a flat folder (a prediction folder of ``<case>.nii.gz``, as nnU-Net writes them).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if is_nnunet_raw(root):
        labels = root / "labelsTr"
        files = {strip_nifti_suffix(p.name): p for p in sorted(labels.iterdir()) if is_nifti_path(p)}
        return LabelMaps(files=files, layout=LAYOUT_NNUNET, root=root)
    nifti_files = _scan_nifti(root)
    if not nifti_files:
        raise DataError(f"{root}: no NIfTI label maps found")
    layout = _detect_brats_layout(nifti_files)
    if layout is not None:
        # only the seg files: a case whose images are incomplete still has a usable label map
        _, grouped = _group_brats_files(root)
        files = {case_id: roles["seg"] for case_id, roles in sorted(grouped.items()) if "seg" in roles}
        if not files:
            raise DataError(f"{root}: BraTS cases found but none has a segmentation (_seg / -seg) file")
        return LabelMaps(files=files, layout=layout, root=root)
    files = {}
    for path in nifti_files:
        # "<id>_seg" / "<id>-seg" files without their images: the case id is "<id>".
        case_id = re.sub(r"[_-]seg$", "", strip_nifti_suffix(path.name), flags=re.IGNORECASE)
        if case_id in files:
            raise DataError(f"{root}: two label maps for case {case_id!r}: {files[case_id]} and {path}")
        files[case_id] = path
    return LabelMaps(files=files, layout=None, root=root)


def is_nnunet_raw(root: Path) -> bool:
    return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()


def _scan_nifti(root: Path) -> list[Path]:
    """NIfTI files in ``root`` and up to ``_SCAN_DEPTH - 1`` folders below, hidden and partial files skipped."""
    found: list[Path] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and depth + 1 < _SCAN_DEPTH:
                stack.append((entry, depth + 1))
            elif entry.is_file() and is_nifti_path(entry):
                found.append(entry)
    return sorted(found)


def _detect_brats_layout(paths: list[Path]) -> str | None:
    """The single BraTS naming used by ``paths``, or ``None`` if no file uses one."""
    hits = {layout: sum(bool(p_.match(strip_nifti_suffix(p.name))) for p in paths) for layout, p_ in _PATTERNS.items()}
    # "<id>_t1" never matches the 2023 pattern and vice versa, except "seg" which both have.
    strong = {layout: n for layout, n in hits.items() if n and _has_image(paths, layout)}
    if len(strong) > 1:
        raise DataError(f"mixed BraTS namings (2017-2021 '_t1ce' style and 2023+ '-t1c' style) under {paths[0].parent}")
    return next(iter(strong), None)


def _has_image(paths: list[Path], layout: str) -> bool:
    pattern = _PATTERNS[layout]
    for p in paths:
        m = pattern.match(strip_nifti_suffix(p.name))
        if m and m.group("suffix").lower() != "seg":
            return True
    return False


def _find_brats_cases(root: Path, incomplete: dict[str, str] | None = None) -> list[CaseFiles]:
    layout, grouped = _group_brats_files(root)
    made = (_make_case_or_record(case_id, files, layout, incomplete) for case_id, files in sorted(grouped.items()))
    return [case for case in made if case is not None]


def _make_case_or_record(case_id: str, files: dict[str, Path], layout: str,
                         incomplete: dict[str, str] | None) -> CaseFiles | None:  # fmt: skip
    """:func:`_make_case`, or ``None`` with the reason recorded in ``incomplete`` when one is given."""
    try:
        return _make_case(case_id, files, layout)
    except DataError as exc:
        if incomplete is None:
            raise
        incomplete[case_id] = str(exc)
        return None


def _group_brats_files(root: Path) -> tuple[str | None, dict[str, dict[str, Path]]]:
    """``(layout, case -> role -> path)`` for BraTS-named files under ``root``; nothing is required
    to be complete, so a caller that needs only the label maps does not depend on the images."""
    paths = _scan_nifti(root)
    layout = _detect_brats_layout(paths)
    if layout is None:
        return None, {}
    pattern, suffixes = _PATTERNS[layout], _SUFFIXES[layout]
    grouped: dict[str, dict[str, Path]] = {}
    for path in paths:
        m = pattern.match(strip_nifti_suffix(path.name))
        if not m:
            continue
        role = suffixes[m.group("suffix").lower()]
        files = grouped.setdefault(m.group("case"), {})
        if role in files:
            raise DataError(f"case {m.group('case')!r}: two files for {role}: {files[role]} and {path}")
        files[role] = path
    return layout, grouped


def _make_case(case_id: str, files: dict[str, Path], layout: str) -> CaseFiles:
    missing = [m for m in MODALITIES if m not in files]
    if missing:
        where = next(iter(files.values())).parent
        raise DataError(f"case {case_id!r} in {where}: missing modality {', '.join(missing)}")
    return CaseFiles(case_id=case_id, images={m: files[m] for m in MODALITIES}, label=files.get("seg"), layout=layout)


def read_dataset_json(root: Path) -> dict:
    return read_json_object(root / "dataset.json", "nnU-Net dataset.json", error=DataError)


def nnunet_channel_order(dataset: dict, source: Path) -> list[str]:
    """Canonical modality of each nnU-Net channel index, from ``channel_names``."""
    names = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(names, dict) or len(names) != len(MODALITIES):
        raise DataError(f"{source}: expected 4 channel_names (T1, T1ce, T2, FLAIR), got {names!r}")
    order = []
    for index in range(len(MODALITIES)):
        raw = str(names.get(str(index), names.get(index, ""))).strip().lower()
        if raw not in _CHANNEL_NAMES:
            raise DataError(f"{source}: channel {index} is named {raw!r}, not a BraTS modality")
        order.append(_CHANNEL_NAMES[raw])
    if sorted(order) != sorted(MODALITIES):
        raise DataError(f"{source}: channel_names {names!r} do not cover T1, T1ce, T2 and FLAIR once each")
    return order


def _find_nnunet_cases(root: Path, incomplete: dict[str, str] | None = None) -> list[CaseFiles]:
    dataset = read_dataset_json(root)
    order = nnunet_channel_order(dataset, root / "dataset.json")
    ending = dataset.get("file_ending", ".nii.gz")
    cases: list[CaseFiles] = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        folder = root / images_dir
        if not folder.is_dir():
            continue
        grouped: dict[str, dict[str, Path]] = {}
        for path in sorted(folder.iterdir()):
            m = re.match(r"^(?P<case>.+)_(?P<channel>\d{4})$", strip_nifti_suffix(path.name))
            if not (m and path.name.endswith(ending)):
                continue
            channel = int(m.group("channel"))
            if channel >= len(order):
                raise DataError(f"{path}: channel {channel} but dataset.json declares {len(order)} channels")
            grouped.setdefault(m.group("case"), {})[order[channel]] = path
        for case_id, files in sorted(grouped.items()):
            label = root / labels_dir / f"{case_id}{ending}"
            files["seg"] = label if label.is_file() else None  # type: ignore[assignment]
            present = {k: v for k, v in files.items() if v is not None}
            case = _make_case_or_record(case_id, present, LAYOUT_NNUNET, incomplete)
            if case is not None:
                cases.append(case)
    return cases
