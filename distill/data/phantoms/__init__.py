"""BraTS-like synthetic brain-tumour phantoms for tests, CI and the demo.

Each phantom is a skull-stripped four-modality MRI (T1, T1ce, T2, FLAIR) of a glioma-like
lesion with a BraTS 2017-2021 label map (0 background, 1 NCR/NET, 2 oedema, 4 enhancing).
The aim is data on which a network has to learn something real, so:

* anatomy comes from the MNI152 2009 grey/white-matter templates packaged with nilearn
  (no download), warped per case by a random rotation, scaling, shift and a smooth elastic
  displacement, and placed where BraTS brains sit in the 240x240x155 mm field of view;
* tumours have random size, lobulated shape and position in white matter, with nested
  necrosis inside an enhancing rim inside the core, and oedema spreading preferentially
  along white matter; the tumour pushes surrounding tissue aside (mass effect);
* intensities are tissue- and modality-specific with per-case jitter, tumour texture,
  enhancing vessels on T1ce, a multiplicative bias field, partial-volume blur and Rician
  noise, so intensity ranges of the classes overlap and no single threshold segments them.

Everything is driven by one integer seed through :class:`numpy.random.SeedSequence`;
geometry is defined in millimetres, so one seed gives the same brain and tumour at 1 mm,
2 mm or a small CI shape, up to voxelisation (on grids coarser than ~4 mm, minimum lesion
sizes of 1.5 voxels can enlarge the smallest lesions).

Coordinates: output arrays are indexed (i, j, k) with a BraTS-style LPS affine
``diag(-s, -s, s)`` plus an offset; at 1 mm it equals the affine of real BraTS files. The
anatomy is placed in world (RAS+, mm) coordinates, so it is correctly oriented whatever
the voxel order.

Modules, one concern each: :mod:`.config` (settings, grid, shared constants),
:mod:`.templates` (MNI152 maps), :mod:`.fields` (smooth random fields, grid geometry),
:mod:`.anatomy` (brain warp, tissue sampling), :mod:`.tumour` (lesion geometry and labels),
:mod:`.intensity` (MRI contrast and noise), :mod:`.generate` (one phantom from one seed),
:mod:`.layouts` (BraTS 2021 folders or nnU-Net raw, the latter through
:class:`distill.data.convert.NnUNetDatasetWriter`) and :mod:`.dataset` (a whole dataset).
"""

from distill.data.phantoms.anatomy import BRATS_BRAIN_CENTRE_VOXEL, BRATS_TO_TEMPLATE_SIZE
from distill.data.phantoms.config import (
    BRATS_FOV_MM,
    CSF,
    DEFAULT_KIND_WEIGHTS,
    ED,
    ET,
    GM,
    KINDS,
    MODALITIES,
    NCR,
    WM,
    PhantomConfig,
    brats_affine,
)
from distill.data.phantoms.dataset import PhantomResult, case_id, case_seed, write_phantoms
from distill.data.phantoms.generate import COARSE_SPACING_MM, MIN_TUMOUR_CENTRE_Z_MM, Phantom, make_phantom
from distill.data.phantoms.intensity import TISSUE_CONTRAST
from distill.data.phantoms.layouts import LAYOUTS, case_files, nnunet_dataset_json
from distill.data.phantoms.templates import preload_templates
from distill.data.phantoms.tumour import LESION_STYLES

__all__ = [
    "BRATS_BRAIN_CENTRE_VOXEL",
    "BRATS_FOV_MM",
    "BRATS_TO_TEMPLATE_SIZE",
    "COARSE_SPACING_MM",
    "CSF",
    "DEFAULT_KIND_WEIGHTS",
    "ED",
    "ET",
    "GM",
    "KINDS",
    "LAYOUTS",
    "LESION_STYLES",
    "MIN_TUMOUR_CENTRE_Z_MM",
    "MODALITIES",
    "NCR",
    "TISSUE_CONTRAST",
    "WM",
    "Phantom",
    "PhantomConfig",
    "PhantomResult",
    "brats_affine",
    "case_files",
    "case_id",
    "case_seed",
    "make_phantom",
    "nnunet_dataset_json",
    "preload_templates",
    "write_phantoms",
]
