"""Property-based pass over NIfTI header fields and file corruptions for ``distill predict`` and
``distill evaluate``: whatever the bytes, the command ends in success or one error line with
exit code 2, never a traceback.

Each example edits one valid file (a modality for ``predict``, a label map for ``evaluate``):
header fields set to values drawn from the edges of their types (NaN, infinities, zero,
negative and huge numbers), truncation, flipped bytes, appended junk, and gzip or not. A
plain run draws 25 and 40 examples (derandomised, so CI is repeatable); for a long search run
``pytest tests/e2e/test_fuzz_inputs.py --hypothesis-profile=thorough`` (hundreds of examples,
profile set in ``tests/conftest.py``).
"""

from __future__ import annotations

import gzip
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.cli import main
from distill.data.nifti import nifti_bytes, read_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.export.run import ExportConfig, export_package
from distill.train.chain import save_untrained_student

# (byte offset, struct format) of the NIfTI-1 header fields worth lying about
FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "pixdim1": (80, "<f"),
    "pixdim3": (88, "<f"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "quatern_b": (256, "<f"), "srow_x0": (280, "<f"),
    "srow_z3": (324, "<f"), "magic": (344, "<i"),
}  # fmt: skip
INTS = st.sampled_from([0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 64, 128, 255, 511, 768, 1000, 2047, 4096, 32767, -32768])
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"),
                                    float("-inf"), 352.0, 348.0, 0.5, 1e6]),
                   st.floats(width=32, allow_nan=True, allow_infinity=True))  # fmt: skip
FIELD_EDITS = st.lists(
    st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: st.tuples(st.just(name), FLOATS if FIELDS[name][1] == "<f" else INTS)
    ),
    max_size=3,
)
CORRUPTIONS = st.one_of(
    st.none(),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)
MUTATIONS = st.fixed_dictionaries({"fields": FIELD_EDITS, "corruption": CORRUPTIONS, "gzip": st.booleans()})


def mutate(raw: bytes, mutation: dict) -> bytes:
    """``raw`` (an uncompressed NIfTI-1 file) with the drawn header edits and corruption."""
    data = bytearray(raw)
    for name, value in mutation["fields"]:
        offset, fmt = FIELDS[name]
        packed = struct.pack(fmt, value) if fmt == "<f" else struct.pack(fmt, int(np.clip(value, -32768, 32767)))
        data[offset:offset + len(packed)] = packed
    corruption = mutation["corruption"]
    if corruption is not None:
        kind, arg = corruption
        if kind == "truncate":
            data = data[: int(arg * len(data))]
        elif kind == "flip":
            for where, xor in arg:
                if data:
                    data[min(int(where * len(data)), len(data) - 1)] ^= xor
        else:
            data += arg
    return gzip.compress(bytes(data), mtime=0) if mutation["gzip"] else bytes(data)


def run_cli(args) -> tuple[int, str]:
    """``distill ARGS`` as the console script runs it; any exception but SystemExit fails the test."""
    import contextlib
    import io

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["distill", *map(str, args)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as exit_info:
                code = 0 if exit_info.code is None else int(exit_info.code)
    finally:
        sys.argv = argv
    return code, err.getvalue()


def assert_clean_outcome(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), err
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_phantoms(root / "case", n_cases=1, seed=11, config=PhantomConfig(spacing_mm=8.0), progress=False)
    run = save_untrained_student(root / "run", 20_000, seed=0)
    package = export_package(ExportConfig(run_dir=run, out=root / "pkg", n_phantoms=1, phantom_spacing=8.0)).package_dir
    return root, package


def example_folder(corpus_root: Path) -> Path:
    """A fresh copy of the one-case folder (the mutated file is written into it)."""
    folder = Path(tempfile.mkdtemp(dir=corpus_root))
    for path in (corpus_root / "case").glob("*/*.nii.gz"):
        (folder / "case" / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / "case" / path.parent.name / path.name).write_bytes(path.read_bytes())
    return folder


def replace_with(path: Path, mutated: bytes, gzipped: bool) -> None:
    """Put ``mutated`` where ``path`` was, named .nii.gz or .nii as its compression says."""
    path.unlink()
    target = path if gzipped else path.with_name(path.name[: -len(".gz")])
    target.write_bytes(mutated)


def uncompressed(path: Path) -> bytes:
    volume = read_nifti(path)
    return nifti_bytes(volume.data, volume.affine, gzip_output=False)


def fuzz_settings(scale: float):
    """``scale`` times the profile's example count (25 in a plain run, 500 with ``thorough``)."""
    return settings(max_examples=int(scale * settings.default.max_examples), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def check_predict(corpus, mutation) -> None:
    root, package = corpus
    folder = example_folder(root)
    t2 = next((folder / "case").glob("*/*_t2.nii.gz"))
    replace_with(t2, mutate(uncompressed(t2), mutation), mutation["gzip"])
    assert_clean_outcome(*run_cli(["predict", package, folder / "case", folder / "out", "--no-progress"]))


def check_evaluate(corpus, mutation) -> None:
    root, _ = corpus
    folder = example_folder(root)
    seg = next((folder / "case").glob("*/*_seg.nii.gz"))
    prediction = folder / "pred" / seg.name.replace("_seg", "")
    prediction.parent.mkdir()
    prediction.write_bytes(seg.read_bytes())
    replace_with(prediction, mutate(uncompressed(seg), mutation), mutation["gzip"])
    assert_clean_outcome(*run_cli(["evaluate", folder / "pred", folder / "case", "--pred-convention", "brats2017",
                                   "--gt-convention", "brats2017", "--out", folder / "eval"]))  # fmt: skip


@given(mutation=MUTATIONS)
@fuzz_settings(1.0)
def test_predict_never_shows_a_traceback(corpus, mutation):
    check_predict(corpus, mutation)


@given(mutation=MUTATIONS)
@fuzz_settings(1.6)
def test_evaluate_never_shows_a_traceback(corpus, mutation):
    check_evaluate(corpus, mutation)
