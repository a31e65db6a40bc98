"""BraTS label conventions and the nested tumour regions WT ⊇ TC ⊇ ET.

Distill works internally on three boolean region channels in the fixed order
``REGIONS = ("WT", "TC", "ET")`` (whole tumour, tumour core, enhancing tumour), which is
what region-based nnU-Net models predict with three sigmoid outputs. Label maps on disk
follow one of several conventions; this module is the only place that knows them.

=================  ==========================================  =====================
convention         labels                                      regions
=================  ==========================================  =====================
``brats2017``      1 NCR/NET, 2 ED, 4 ET (BraTS 2017-2021)     WT {1,2,4} TC {1,4} ET {4}
``brats2023``      1 NCR, 2 ED, 3 ET (BraTS 2023+ GLI)         WT {1,2,3} TC {1,3} ET {3}
``brats2024-gli``  as 2023 plus 4 resection cavity (RC)        WT {1,2,3} TC {1,3} ET {3}
``brats2013``      1 necrosis, 2 ED, 3 non-enh., 4 ET (2013-15) WT {1,2,3,4} TC {1,3,4} ET {4}
``nnunet``         1 ED, 2 NCR, 3 ET (nnU-Net's BraTS remap)   WT {1,2,3} TC {2,3} ET {3}
=================  ==========================================  =====================

Writing regions back to labels is lossy where a convention has more labels than the
regions can tell apart: ``brats2013`` never gets label 3 back (TC minus ET becomes 1) and
``brats2024-gli`` never gets the resection cavity back (it is not part of any region).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from distill.errors import LabelConventionError

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

# File layouts that hint at a convention (see distill.data.discovery).
LAYOUT_BRATS2017 = "brats2017"
LAYOUT_BRATS2023 = "brats2023"
LAYOUT_NNUNET = "nnunet"


# The flag most commands use to name a convention; commands with other flags pass theirs.
OPTION = "--label-convention"


@dataclass(frozen=True)
class LabelConvention:
    """One way of writing tumour sub-regions as integer labels.

    Attributes:
        name: canonical name, e.g. ``"brats2017"``.
        labels: label value -> human-readable name (background 0 not included).
        regions: region name (WT/TC/ET) -> label values that belong to it.
        write_labels: the label written for voxels that are in ET, in TC but not ET,
            and in WT but not TC, in that order; used by :meth:`from_regions`.
        description: one line for help texts.
    """

    name: str
    labels: dict[int, str]
    regions: dict[str, tuple[int, ...]]
    write_labels: tuple[int, int, int]
    description: str

    @property
    def label_values(self) -> frozenset[int]:
        """All valid label values including background 0."""
        return frozenset({0, *self.labels})

    def check_labels(self, labels: np.ndarray, source: str = "label map", option: str = OPTION) -> None:
        """Raise :class:`LabelConventionError` naming ``source`` if a value is unknown; the hint
        names ``option``, the flag of the calling command that sets this convention."""
        present = {int(v) for v in np.unique(labels)}
        unknown = sorted(present - self.label_values)
        if unknown:
            raise LabelConventionError(
                f"{source}: label values {unknown} are not part of the {self.name!r} convention "
                f"(valid: {sorted(self.label_values)}). Pass the right {option}."
            )

    def to_regions(self, labels: np.ndarray, source: str = "label map", option: str = OPTION) -> np.ndarray:
        """Label map of shape ``S`` -> boolean regions of shape ``(3, *S)`` in WT, TC, ET order."""
        labels = np.asarray(labels)
        self.check_labels(labels, source, option)
        return np.stack([np.isin(labels, self.regions[r]) for r in REGIONS])

    def from_regions(self, regions: np.ndarray) -> np.ndarray:
        """Boolean regions ``(3, *S)`` (WT, TC, ET) -> uint8 label map of shape ``S``.

        Later regions overwrite earlier ones, as nnU-Net's ``regions_class_order`` does, so
        an ET voxel is written as ET even where the hierarchy is violated.
        """
        regions = np.asarray(regions, dtype=bool)
        if regions.ndim < 1 or regions.shape[0] != len(REGIONS):
            raise ValueError(f"expected regions of shape (3, ...), got {regions.shape}")
        et_label, core_label, edema_label = self.write_labels
        out = np.zeros(regions.shape[1:], dtype=np.uint8)
        out[regions[0]] = edema_label
        out[regions[1]] = core_label
        out[regions[2]] = et_label
        return out

    def convert_to(self, labels: np.ndarray, target: LabelConvention, source: str = "label map") -> np.ndarray:
        """Rewrite a label map from this convention into ``target`` through the regions."""
        return target.from_regions(self.to_regions(labels, source))


CONVENTIONS: dict[str, LabelConvention] = {
    c.name: c
    for c in (
        LabelConvention(
            name="brats2017",
            labels={1: "necrotic / non-enhancing core", 2: "oedema", 4: "enhancing tumour"},
            regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
            write_labels=(4, 1, 2),
            description="BraTS 2017-2021: 1 NCR/NET, 2 ED, 4 ET",
        ),
        LabelConvention(
            name="brats2023",
            labels={1: "necrotic core", 2: "oedema", 3: "enhancing tumour"},
            regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
            write_labels=(3, 1, 2),
            description="BraTS 2023+ (GLI and others): 1 NCR, 2 ED, 3 ET",
        ),
        LabelConvention(
            name="brats2024-gli",
            labels={1: "necrotic core", 2: "oedema", 3: "enhancing tumour", 4: "resection cavity"},
            regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
            write_labels=(3, 1, 2),
            description="BraTS 2024 GLI: 1 NCR, 2 ED, 3 ET, 4 resection cavity (not a tumour region)",
        ),
        LabelConvention(
            name="brats2013",
            labels={1: "necrosis", 2: "oedema", 3: "non-enhancing core", 4: "enhancing tumour"},
            regions={"WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,)},
            write_labels=(4, 1, 2),
            description="BRATS 2013-2015: 1 necrosis, 2 ED, 3 non-enhancing, 4 ET",
        ),
        LabelConvention(
            name="nnunet",
            labels={1: "oedema", 2: "non-enhancing / necrotic core", 3: "enhancing tumour"},
            regions={"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)},
            write_labels=(3, 2, 1),
            description="nnU-Net's internal BraTS numbering: 1 ED, 2 NCR, 3 ET",
        ),
    )
}

ALIASES: dict[str, str] = {
    "brats2018": "brats2017",
    "brats2019": "brats2017",
    "brats2020": "brats2017",
    "brats2021": "brats2017",
    "brats17-21": "brats2017",
    "brats2023-gli": "brats2023",
    "brats2024": "brats2024-gli",
    "brats2014": "brats2013",
    "brats2015": "brats2013",
    "brats13-15": "brats2013",
}

AUTO = "auto"


def get_convention(name: str) -> LabelConvention:
    """Look a convention up by canonical name or alias (case-insensitive)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in CONVENTIONS:
        known = ", ".join([*CONVENTIONS, *ALIASES])
        raise LabelConventionError(f"unknown label convention {name!r}; known: {known}")
    return CONVENTIONS[key]


def detect_convention(
    label_values: Iterable[int], layout: str | None = None, source: str = "labels", option: str = OPTION
) -> LabelConvention:
    """Tell the convention from the label values present and, where known, the file layout.

    Rules (``U`` = label values present, ``layout`` = naming of the files they came from):

    * nnU-Net raw layout -> ``nnunet``.
    * BraTS 2017-2021 naming: label 3 -> refused (2017-2021 has no label 3; BRATS 2013-15
      data must be named explicitly), otherwise ``brats2017``.
    * BraTS 2023+ naming: label 4 -> ``brats2024-gli``, otherwise ``brats2023``.
    * no layout: 4 without 3 -> ``brats2017``; anything with 3 is ambiguous
      (2023 vs nnU-Net, or 2013-15 vs 2024) and so is a set with neither 3 nor 4.

    Raises :class:`LabelConventionError` with the candidates when the answer is not unique;
    its hint names ``option``, the calling command's flag for the convention.
    """
    values = {int(v) for v in label_values} - {0}
    if layout == LAYOUT_NNUNET:
        chosen = CONVENTIONS["nnunet"]
    elif layout == LAYOUT_BRATS2017:
        if 3 in values:
            raise LabelConventionError(
                f"{source}: label 3 found in files with BraTS 2017-2021 naming, which has no label 3. "
                f"If these are BRATS 2013-2015 labels (3 = non-enhancing core) pass {option} brats2013."
            )
        chosen = CONVENTIONS["brats2017"]
    elif layout == LAYOUT_BRATS2023:
        chosen = CONVENTIONS["brats2024-gli" if 4 in values else "brats2023"]
    elif 4 in values and 3 not in values:
        chosen = CONVENTIONS["brats2017"]
    else:
        candidates = [c.name for c in CONVENTIONS.values() if values <= set(c.labels)]
        raise LabelConventionError(
            f"{source}: cannot tell the label convention from label values {sorted(values)} "
            f"(fits {', '.join(candidates) or 'none'}). Pass {option} explicitly."
        )
    unknown = sorted(values - set(chosen.labels))
    if unknown:
        raise LabelConventionError(
            f"{source}: label values {unknown} do not belong to the detected {chosen.name!r} convention "
            f"(valid: {sorted(chosen.label_values)})."
        )
    return chosen


def resolve_convention(
    name: str | None, label_values: Iterable[int], layout: str | None, source: str, option: str = OPTION
) -> LabelConvention:
    """``--label-convention`` semantics: an explicit name wins, ``auto``/``None`` detects."""
    if name is None or name.strip().lower() == AUTO:
        return detect_convention(label_values, layout, source, option)
    return get_convention(name)
