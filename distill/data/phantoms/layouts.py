"""Where and how a phantom case is written: BraTS 2021 case folders or an nnU-Net raw dataset.

The nnU-Net layout itself (file names, ``dataset.json`` fields) belongs to
:class:`distill.data.convert.NnUNetDatasetWriter`; this module only maps a phantom onto it.
"""

from __future__ import annotations

from pathlib import Path

from distill.data.conventions import get_convention
from distill.data.convert import NnUNetDatasetWriter, nnunet_region_fields
from distill.data.nifti import write_nifti
from distill.data.phantoms.config import MODALITIES, PhantomConfig
from distill.data.phantoms.generate import Phantom
from distill.errors import DistillError

LAYOUTS: tuple[str, ...] = ("brats2021", "nnunet")


def _nnunet(out_dir: Path) -> NnUNetDatasetWriter:
    return NnUNetDatasetWriter(out_dir, n_channels=len(MODALITIES))


def case_files(out_dir: Path, cid: str, layout: str) -> dict[str, Path]:
    """Where each volume of a case goes: keys are the modalities and ``"seg"``."""
    if layout == "brats2021":
        folder = out_dir / cid
        return {name: folder / f"{cid}_{name}.nii.gz" for name in (*MODALITIES, "seg")}
    if layout == "nnunet":
        writer = _nnunet(out_dir)
        files = dict(zip(MODALITIES, writer.image_paths(cid)))
        files["seg"] = writer.label_path(cid)
        return files
    raise DistillError(f"unknown phantom layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def nnunet_dataset_json(n_cases: int, seed: int, config: PhantomConfig) -> dict:
    """nnU-Net v2 ``dataset.json`` for region-based BraTS training on the phantoms."""
    size = "x".join(str(n) for n in config.grid_shape)
    return {
        "name": "DistillPhantoms",
        "description": f"BraTS-like synthetic phantoms, seed {seed}, grid {size}",
        **nnunet_region_fields(n_cases),
    }


def write_case(phantom: Phantom, out_dir: Path, cid: str, layout: str) -> None:
    """Write images first and the label map last, each atomically."""
    if layout == "nnunet":
        labels = get_convention("brats2017").convert_to(phantom.labels, get_convention("nnunet"))
        _nnunet(out_dir).write_case(cid, [phantom.images[m] for m in MODALITIES], phantom.affine, labels)
        return
    files = case_files(out_dir, cid, layout)
    for modality in MODALITIES:
        write_nifti(files[modality], phantom.images[modality], phantom.affine)
    write_nifti(files["seg"], phantom.labels, phantom.affine)


def refuse_foreign_nnunet_cases(out_dir: Path, ids: tuple[str, ...]) -> None:
    """nnU-Net needs numTraining to match labelsTr; refuse folders holding other cases."""
    writer = _nnunet(out_dir)
    labels_dir = writer.labels_dir
    if not labels_dir.is_dir():
        return
    expected = {writer.label_path(cid).name for cid in ids}
    foreign = sorted(p.name for p in labels_dir.glob("*.nii.gz") if p.name not in expected)
    if foreign:
        raise DistillError(
            f"{labels_dir}: holds {len(foreign)} label file(s) this run would not write (e.g. {foreign[0]}); "
            "write the phantoms into an empty folder or ask for at least as many cases"
        )


def finish_dataset(out_dir: Path, layout: str, n_cases: int, seed: int, config: PhantomConfig) -> None:
    """What a layout writes once every case is there: nnU-Net's ``dataset.json``."""
    if layout == "nnunet":
        _nnunet(out_dir).write_dataset_json(nnunet_dataset_json(n_cases, seed, config))
