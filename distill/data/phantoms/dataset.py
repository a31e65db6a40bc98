"""Writing a whole phantom dataset, resumably: the entry point of ``distill data phantoms``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distill.core.paths import prepare_output_dir, remove_stale_partials
from distill.core.provenance import claim_output
from distill.data.phantoms.config import PhantomConfig
from distill.data.phantoms.generate import make_phantom
from distill.data.phantoms.layouts import case_files, finish_dataset, refuse_foreign_nnunet_cases, write_case
from distill.errors import DistillError


@dataclass(frozen=True)
class PhantomResult:
    """What :func:`write_phantoms` did.

    Attributes:
        out_dir: the dataset folder.
        layout: ``"brats2021"`` or ``"nnunet"``.
        case_ids: all case ids of this run, in order.
        written: ids generated and written by this call.
        skipped: ids whose files all existed already (resumed runs).
        seconds_per_case: mean wall time to generate and write one case, ``None`` if none was written.
    """

    out_dir: Path
    layout: str
    case_ids: tuple[str, ...]
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds_per_case: float | None


def case_id(index: int) -> str:
    """Case id of the ``index``-th phantom, e.g. ``Phantom_00007``."""
    return f"Phantom_{index:05d}"


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset made with ``seed``; independent of the dataset size."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0])


RECORD_NAME = "distill_phantoms.json"
# fields without a flag of their own are named as the library spells them
_RECORD_FLAGS = {**{f.name: f"PhantomConfig.{f.name}" for f in dataclasses.fields(PhantomConfig)},
                 "seed": "--seed", "layout": "--layout", "spacing_mm": "--spacing"}


def _record_options(seed: int, layout: str, config: PhantomConfig) -> dict:
    """What decides the files of case k (not the number of cases: case k never depends on it)."""
    return {"seed": seed, "layout": layout, **dataclasses.asdict(config)}


def write_phantoms(
    out_dir: Path,
    n_cases: int,
    seed: int,
    config: PhantomConfig | None = None,
    layout: str = "brats2021",
    progress: bool = True,
) -> PhantomResult:
    """Generate ``n_cases`` phantoms into ``out_dir`` in BraTS 2021 or nnU-Net raw layout.

    * ``brats2021``: ``out_dir/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1/2/4.
    * ``nnunet``: ``imagesTr/<id>_0000..0003.nii.gz`` (T1, T1ce, T2, FLAIR),
      ``labelsTr/<id>.nii.gz`` in nnU-Net's BraTS numbering (1 ED, 2 NCR, 3 ET) and
      ``dataset.json`` for region training, written last.

    Case ``k`` uses :func:`case_seed` ``(seed, k)``, so it is the same whatever ``n_cases``.
    Cases whose files all exist are skipped, so an interrupted run can be resumed (or grown
    with a larger ``n_cases``). The seed, layout and every :class:`PhantomConfig` field are
    recorded in ``distill_phantoms.json``; a rerun with any other value stops, naming it,
    before writing a file.
    """
    config = config or PhantomConfig()
    out_dir = Path(out_dir)
    if n_cases < 0:
        raise DistillError(f"number of phantom cases must be non-negative, got {n_cases}")
    if seed < 0:
        raise DistillError(f"phantom seed must be non-negative, got {seed}")
    case_files(out_dir, case_id(0), layout)  # validates the layout before any work
    ids = tuple(case_id(i) for i in range(n_cases))
    prepare_output_dir(out_dir, "phantom folder")
    remove_stale_partials(out_dir, depth=2)  # case folders, or imagesTr/ and labelsTr/
    if layout == "nnunet":
        refuse_foreign_nnunet_cases(out_dir, ids)
    claim_output(out_dir, RECORD_NAME, "distill data phantoms", _record_options(seed, layout, config),
                 flags=_RECORD_FLAGS)  # fmt: skip

    written, skipped, seconds = [], [], 0.0
    with tqdm(range(n_cases), desc="phantoms", unit="case", disable=not progress) as bar:
        for index in bar:
            cid = ids[index]
            files = case_files(out_dir, cid, layout)
            if all(path.is_file() for path in files.values()):
                skipped.append(cid)
                continue
            start = time.perf_counter()
            write_case(make_phantom(case_seed(seed, index), config), out_dir, cid, layout)
            seconds += time.perf_counter() - start
            written.append(cid)

    finish_dataset(out_dir, layout, n_cases, seed, config)
    return PhantomResult(
        out_dir=out_dir,
        layout=layout,
        case_ids=ids,
        written=tuple(written),
        skipped=tuple(skipped),
        seconds_per_case=seconds / len(written) if written else None,
    )
