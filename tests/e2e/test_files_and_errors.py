"""Files and errors a user can trust: every command's outputs, reruns, bad locations and bad input.

The command line is driven through ``distill.cli.main`` in this process (the same code path as
the console script: one-line errors, exit codes), on 4 mm phantoms and a ~20k-parameter
student with random weights.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from distill.cli import main
from distill.core.atomic import atomic_write_text
from distill.core.paths import prepare_output_dir, remove_stale_partials
from distill.data.discovery import MODALITIES
from distill.data.nifti import read_nifti, write_nifti
from distill.data.phantoms import PhantomConfig, write_phantoms
from distill.errors import DataError
from distill.export.run import ExportConfig, export_package
from distill.train.chain import save_untrained_student

PHANTOM = PhantomConfig(spacing_mm=4.0)


def distill(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``distill ARGS`` as the console script does; ``(exit code, stdout, stderr)``."""
    monkeypatch.setattr(sys, "argv", ["distill", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space (the console wraps long lines)."""
    return " ".join(text.split())


def one_line_error(err: str) -> str:
    """The error line of a failed command; fails the test on a traceback or a multi-line error."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("files_and_errors")


@pytest.fixture(scope="module")
def cases(workdir) -> Path:
    write_phantoms(workdir / "cases", n_cases=2, seed=3, config=PHANTOM, progress=False)
    return workdir / "cases"


@pytest.fixture(scope="module")
def package(workdir) -> Path:
    run = save_untrained_student(workdir / "run", 20_000, seed=0)
    return export_package(ExportConfig(run_dir=run, out=workdir / "pkg", n_phantoms=1,
                                       phantom_spacing=4.0)).package_dir  # fmt: skip


def copy_cases(source: Path, target: Path) -> Path:
    for path in sorted(source.glob("*/*.nii.gz")):
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        (target / path.parent.name / path.name).write_bytes(path.read_bytes())
    return target


# ---------------------------------------------------------------------------------------------
# 1. integer label maps, the user's umask


def test_predicted_label_maps_are_unscaled_uint8(monkeypatch, capsys, package, cases, tmp_path):
    code, _, err = distill(monkeypatch, capsys, "predict", package, cases, tmp_path / "out", "--no-progress")
    assert code == 0, err
    for path in sorted((tmp_path / "out").glob("*.nii.gz")):
        image = nib.load(path)
        assert image.get_data_dtype() == np.uint8
        assert image.header.get_slope_inter() == (None, None)
        assert set(np.unique(np.asarray(image.dataobj))) <= {0, 1, 2, 4}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        path = atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_every_cache_file_follows_the_umask(stub_cache):
    from distill.core.atomic import current_umask

    expected = 0o666 & ~current_umask()
    modes = {p.relative_to(stub_cache).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in stub_cache.rglob("*") if p.is_file()}  # fmt: skip
    assert "spec.json" in modes and {m for m in modes.values()} == {expected}, modes


# ---------------------------------------------------------------------------------------------
# 2. reruns with other options


def test_convert_rerun_with_another_spacing_is_refused_and_the_same_resumes(monkeypatch, capsys, cases, tmp_path):
    raw = tmp_path / "raw"
    code, _, err = distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "7", "--spacing", "6")
    assert code == 0, err
    dataset = raw / "Dataset007_BraTS"
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*.nii.gz")}
    code, _, err = distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "7")
    line = one_line_error(err)
    assert code == 2 and "--spacing was [6.0, 6.0, 6.0], now unset" in line and str(dataset) in line
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*.nii.gz")} == before  # nothing touched
    assert json.loads((dataset / "dataset.json").read_text())["distill"]["target_spacing"] == [6.0] * 3
    code, _, err = distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "7", "--spacing", "6")
    assert code == 0 and "2 already complete" in flat(err)


def test_convert_refuses_a_dataset_from_before_records_with_other_options(monkeypatch, capsys, cases, tmp_path):
    raw = tmp_path / "raw"
    assert distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "8", "--spacing", "6")[0] == 0
    (raw / "Dataset008_BraTS" / "distill_convert.json").unlink()  # as an older Distill left it
    code, _, err = distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "8", "--spacing", "5")
    assert code == 2 and "--spacing was [6.0, 6.0, 6.0], now [5.0, 5.0, 5.0]" in one_line_error(err)


def test_phantoms_rerun_with_another_seed_is_refused_but_more_cases_resume(monkeypatch, capsys, tmp_path):
    args = ("data", "phantoms", tmp_path / "ph", "--spacing", "6")
    assert distill(monkeypatch, capsys, *args, "-n", "1")[0] == 0
    code, _, err = distill(monkeypatch, capsys, *args, "-n", "1", "--seed", "5")
    assert code == 2 and "--seed was 0, now 5" in one_line_error(err)
    code, _, err = distill(monkeypatch, capsys, *args, "-n", "2")
    assert code == 0 and "1 phantom case(s) written, 1 already complete" in flat(err)


def test_resuming_predictions_with_another_package_is_refused(monkeypatch, capsys, package, cases, tmp_path):
    out = tmp_path / "out"
    assert distill(monkeypatch, capsys, "predict", package, cases, out, "--no-progress")[0] == 0
    other = export_package(ExportConfig(run_dir=save_untrained_student(tmp_path / "run2", 20_000, seed=1),
                                        out=tmp_path / "pkg2", n_phantoms=1, phantom_spacing=4.0)).package_dir
    code, _, err = distill(monkeypatch, capsys, "predict", other, cases, out, "--skip-existing", "--no-progress")
    assert code == 2 and "PACKAGE (its model.onnx) was" in one_line_error(err)
    # without --skip-existing every case is redone, so another package is fine
    assert distill(monkeypatch, capsys, "predict", other, cases, out, "--no-progress")[0] == 0
    code, _, err = distill(monkeypatch, capsys, "predict", other, cases, out, "--skip-existing", "--no-progress")
    assert code == 0 and "2 already present" in flat(err)


# ---------------------------------------------------------------------------------------------
# 3. output locations checked first, OS errors in one line


def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(monkeypatch, capsys, package, cases, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for args in (("predict", package, cases, blocker, "--no-progress"),
                 ("data", "convert", cases, blocker),
                 ("data", "phantoms", blocker / "below", "-n", "1"),
                 ("evaluate", cases, cases, "--out", blocker),
                 ("bench", package, "--out", blocker / "bench.json", "--input", cases)):  # fmt: skip
        code, _, err = distill(monkeypatch, capsys, *args)
        line = one_line_error(err)
        assert code == 2 and str(blocker) in line and "file" in line, (args, line)


def test_bench_checks_its_output_before_timing(monkeypatch, package, tmp_path):
    from distill.infer import bench

    timed = []
    monkeypatch.setattr(bench, "_bench_backend", lambda *a, **k: timed.append(a) or {})
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match=r"f: the folder of the benchmark file is an existing file"):
        bench.run_bench(bench.BenchConfig(package=package, out=tmp_path / "f" / "bench.json"))
    assert timed == []


def test_os_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, package, cases, tmp_path):
    from distill.infer import predict

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "Phantom_00000.nii.gz"))

    monkeypatch.setattr(predict, "write_nifti", disk_full)
    code, _, err = distill(monkeypatch, capsys, "predict", package, cases, tmp_path / "out", "--no-progress")
    assert code == 2
    assert one_line_error(err).endswith("Phantom_00000.nii.gz: no space left on the device")
    monkeypatch.setattr(sys, "argv", ["distill", "--debug", "predict", str(package), str(cases),
                                      str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    with pytest.raises(OSError, match="No space left"):
        main()


def test_prepare_output_dir_refuses_paths_below_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"file is a file, not a folder"):
        prepare_output_dir(tmp_path / "file" / "a" / "b")
    assert prepare_output_dir(tmp_path / "new" / "deep").is_dir()


# ---------------------------------------------------------------------------------------------
# 4. evaluate: subsets, label maps only, conventions said, hints that exist


@pytest.fixture(scope="module")
def ground_truth(workdir, cases) -> Path:
    """The phantoms' own seg files as a flat prediction folder (a perfect prediction)."""
    for seg in sorted(cases.glob("*/*_seg.nii.gz")):
        volume = read_nifti(seg)
        write_nifti(workdir / "perfect" / seg.name.replace("_seg", ""), volume.data, volume.affine)
    return workdir / "perfect"


def test_evaluate_scores_a_subset_with_allow_missing(monkeypatch, capsys, cases, ground_truth, tmp_path):
    subset = tmp_path / "subset"
    subset.mkdir()
    first = sorted(ground_truth.iterdir())[0]
    (subset / first.name).write_bytes(first.read_bytes())
    args = ("evaluate", subset, cases, "--pred-convention", "brats2017")  # one case may lack label 4
    code, _, err = distill(monkeypatch, capsys, *args, "--out", tmp_path / "a")
    assert code == 2 and "--allow-missing" in one_line_error(err)
    code, _, err = distill(monkeypatch, capsys, *args, "--out", tmp_path / "b", "--allow-missing")
    assert code == 0, err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["skipped_ground_truth"] == ["Phantom_00001"]
    assert "skipped 1 ground-truth case(s) without a prediction: Phantom_00001" in flat(err)


def test_evaluate_reads_only_label_maps_and_says_which_conventions(monkeypatch, capsys, cases, ground_truth,
                                                                   tmp_path):  # fmt: skip
    gt = copy_cases(cases, tmp_path / "gt")
    next(gt.glob("*/*_t1.nii.gz")).unlink()  # images incomplete: evaluate never reads them
    code, _, err = distill(monkeypatch, capsys, "evaluate", ground_truth, gt, "--out", tmp_path / "e")
    assert code == 0, err
    assert "label conventions: predictions brats2017 (detected), ground truth brats2017 (detected)" in flat(err)


def test_convention_hints_name_the_flags_evaluate_has(monkeypatch, capsys, cases, tmp_path):
    seg = read_nifti(next(cases.glob("*/*_seg.nii.gz")))
    as_2023 = np.where(seg.data == 4, 3, seg.data).astype(np.uint8)  # BraTS 2023 numbering, flat names
    write_nifti(tmp_path / "pred" / "Phantom_00000.nii.gz", as_2023, seg.affine)
    code, _, err = distill(monkeypatch, capsys, "evaluate", tmp_path / "pred", cases, "--allow-missing",
                           "--out", tmp_path / "e")  # fmt: skip
    line = one_line_error(err)
    assert code == 2 and "--pred-convention" in line and "--label-convention" not in line


# ---------------------------------------------------------------------------------------------
# 5. a batch goes on with --continue-on-error


def test_continue_on_error_lists_failures_and_exits_non_zero(monkeypatch, capsys, package, cases, tmp_path):
    broken = copy_cases(cases, tmp_path / "in")
    flair = broken / "Phantom_00000" / "Phantom_00000_flair.nii.gz"
    volume = read_nifti(flair)
    write_nifti(flair, np.zeros_like(volume.data), volume.affine)
    out = tmp_path / "out"
    code, _, err = distill(monkeypatch, capsys, "predict", package, broken, out, "--no-progress")
    assert code == 2 and str(flair) in one_line_error(err) and not list(out.glob("*.nii.gz"))
    incomplete = broken / "Phantom_00009"  # a third case whose T1ce is missing
    incomplete.mkdir()
    for path in (broken / "Phantom_00001").iterdir():
        if "_t1ce" not in path.name:
            (incomplete / path.name.replace("00001", "00009")).write_bytes(path.read_bytes())
    code, _, err = distill(monkeypatch, capsys, "predict", package, broken, out, "--no-progress",
                           "--continue-on-error")  # fmt: skip
    assert code == 1 and "Traceback" not in err
    failures = json.loads((out / "failures.json").read_text())
    assert failures["n_cases"] == 3 and failures["n_failed"] == 2
    assert "Phantom_00000_flair.nii.gz" in failures["failures"]["Phantom_00000"]
    assert "missing modality t1ce" in failures["failures"]["Phantom_00009"]
    assert [p.name for p in out.glob("*.nii.gz")] == ["Phantom_00001.nii.gz"]
    assert "failed Phantom_00009" in flat(err)


# ---------------------------------------------------------------------------------------------
# 6. limits before allocation, errors that name the case and file, constant modalities


def test_a_huge_header_is_refused_before_reading(tmp_path, oblique_affine):
    path = write_nifti(tmp_path / "huge.nii.gz", np.ones((4, 4, 4), np.float32), oblique_affine)
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_shape((1000, 1000, 1000))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), oblique_affine, header), tmp_path / "small.nii")
    raw = bytearray((tmp_path / "small.nii").read_bytes())
    raw[40:56] = np.array([3, 1000, 1000, 1000, 1, 1, 1, 1], dtype="<i2").tobytes()  # dim[0..7]
    (tmp_path / "lying.nii").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"lying\.nii: header claims 1000000000 voxels .* --max-voxels"):
        read_nifti(tmp_path / "lying.nii")
    with pytest.raises(DataError, match=r"lying\.nii: file holds \d+ bytes but its header promises"):
        read_nifti(tmp_path / "lying.nii", max_voxels=10**10)


def test_an_all_zero_case_names_the_case_and_the_file(monkeypatch, capsys, package, cases, tmp_path):
    zero = copy_cases(cases, tmp_path / "in")
    for modality in MODALITIES:
        path = zero / "Phantom_00001" / f"Phantom_00001_{modality}.nii.gz"
        volume = read_nifti(path)
        write_nifti(path, np.zeros_like(volume.data), volume.affine)
    code, _, err = distill(monkeypatch, capsys, "predict", package, zero, tmp_path / "out", "--no-progress")
    line = one_line_error(err)
    assert code == 2 and "Phantom_00001_t1.nii.gz (case Phantom_00001)" in line and "same value (0)" in line


def test_a_constant_channel_given_as_arrays_is_refused_naming_it(package, cases):
    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.infer.predictor import Predictor

    case = load_case(find_cases(cases)[0], with_labels=False)
    images = case.images.copy()
    images[2] = 7.0
    with pytest.raises(DataError, match=r"t2 image: every voxel holds the same value \(7\)"):
        Predictor.from_package(package, "torch").segment(images, case.affine)


# ---------------------------------------------------------------------------------------------
# 8. what a killed writer left


def test_predict_removes_the_partial_files_of_killed_runs_only(monkeypatch, capsys, package, cases, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".Phantom_00000.nii.gz.pid999999999.k3j_x.partial.nii.gz"
    legacy = out / ".Phantom_00001.nii.gz.abc123.partial.nii.gz"
    live = out / f".Phantom_00001.nii.gz.pid{os.getppid()}.zz9.partial.nii.gz"
    for path in (dead, legacy, live):
        path.write_bytes(b"\0" * 1000)
    assert distill(monkeypatch, capsys, "predict", package, cases, out, "--no-progress")[0] == 0
    assert not dead.exists() and not legacy.exists() and live.exists()


def test_convert_and_phantoms_remove_partials_of_killed_runs(monkeypatch, capsys, cases, tmp_path):
    raw = tmp_path / "raw"
    assert distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "9", "--spacing", "6")[0] == 0
    dead = raw / "Dataset009_BraTS" / "labelsTr" / ".Phantom_00000.nii.gz.pid999999999.q1.partial.nii.gz"
    dead.write_bytes(b"\0")
    assert distill(monkeypatch, capsys, "data", "convert", cases, raw, "-d", "9", "--spacing", "6")[0] == 0
    assert not dead.exists()
    assert distill(monkeypatch, capsys, "data", "phantoms", tmp_path / "ph", "-n", "1", "--spacing", "6")[0] == 0
    dead = tmp_path / "ph" / "Phantom_00000" / ".Phantom_00000_seg.nii.gz.pid999999999.q2.partial.nii.gz"
    dead.write_bytes(b"\0")
    assert distill(monkeypatch, capsys, "data", "phantoms", tmp_path / "ph", "-n", "1", "--spacing", "6")[0] == 0
    assert not dead.exists()


def test_stale_partials_are_matched_by_the_writers_naming(tmp_path):
    import distill.core.atomic as atomic

    with atomic.atomic_path(tmp_path / "x.nii.gz") as tmp:
        name = tmp.name
        assert re.match(rf"^\.x\.nii\.gz\.pid{os.getpid()}\.", name) and name.endswith(".partial.nii.gz")
        tmp.write_bytes(b"")
        assert remove_stale_partials(tmp_path) == []  # our own, still being written
    assert (tmp_path / "x.nii.gz").exists()


# ---------------------------------------------------------------------------------------------
# 9. help that reads, progress that shows


COMMANDS = [(), ("data",), ("data", "convert"), ("data", "phantoms"), ("evaluate",), ("teacher-cache",),
            ("teacher-weights",), ("train-student",), ("export",), ("export-engine",), ("predict",), ("bench",),
            ("serve",), ("demo",)]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "distill")
def test_help_fits_80_columns_and_shows_flags_as_flags(monkeypatch, capsys, command):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = distill(monkeypatch, capsys, *command, "--help")
    assert code == 0 and out.strip()
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "<bool>" not in out and "boolean" not in out.lower(), out


def test_skip_existing_and_friends_are_plain_flags(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = distill(monkeypatch, capsys, "predict", "--help")
    for flag in ("--skip-existing", "--continue-on-error", "--save-probabilities"):
        assert re.search(rf"^\s+{flag}\s{{2,}}\S", out, re.M), out


def test_bench_reports_each_backend_as_it_goes(package, cases):
    from distill.infer.backends import BackendSpec
    from distill.infer.bench import BenchConfig, run_bench

    lines: list[str] = []
    run_bench(BenchConfig(package=package, input_dir=cases, backends=(BackendSpec.parse("torch"),), runs=1,
                          warmup=0, e2e_runs=1, threads=1), report=lines.append)  # fmt: skip
    assert lines[0].startswith("torch") and "..." in lines[0] and re.search(r"model p50 \d", lines[1])


def test_demo_steps_are_reported_when_they_start_and_end():
    from distill.demo import _timed

    steps, lines = [], []
    with _timed(steps, "1. teacher", lines.append):
        assert lines == ["1. teacher ..."]
    assert re.fullmatch(r"1\. teacher \(\d+\.\d s\)", lines[1]) and steps == lines[1:]
