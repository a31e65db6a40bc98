"""Teacher soft-label cache: round trip, resume, refusals, verification, crashes and concurrency.

Arrays are tiny and synthetic; the cache uses 8³ chunks so that even a 20x18x14 case spans
several chunks. Error bounds are computed by hand: uint8 probabilities ``q = round(255 p)``
are off by at most half a step, 1/510; uncertainty ``q = round(510 s)`` by 1/1020; float16
images by 2**-11 relative. ``FLOAT32_SLACK`` covers the float32 rounding of ``q / 255``.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from distill.cache import (
    CacheError,
    CacheSpec,
    CacheWriter,
    TeacherCache,
    case_key,
    default_storage,
    pack_regions,
    remove_leftovers,
    teacher_identity_hash,
    unpack_regions,
    verify_cache,
)
from distill.cache import storage as cache_storage
from distill.cache import writer as cache_writer
from distill.data.preprocess import PreprocessRecord
from distill.teacher.base import TeacherInfo

SHAPE = (20, 18, 14)
CHUNK = 8
PROB_BOUND = 1 / 510
UNC_BOUND = 1 / 1020
FLOAT32_SLACK = 1e-6


# ----------------------------------------------------------------------------- helpers


def teacher_info(plans: str = "plans-sha-A") -> TeacherInfo:
    return TeacherInfo(
        name=f"nnunet:Dataset137_BraTS/{plans}",
        output_kind="sigmoid",
        channels=("WT", "TC", "ET"),
        parameters_per_member=1000,
        members=("fold_0", "fold_1"),
        tta="mirror8",
        identity={"plans_sha256": plans, "checkpoints": ["c0", "c1"], "tile_step": 0.5},
    )


def make_spec(plans: str = "plans-sha-A", mode: str = "full", chunk: int = CHUNK) -> CacheSpec:
    storage = {**default_storage(), "chunk_spatial": chunk}
    return CacheSpec.for_teacher(teacher_info(plans), mode, {"target_spacing": None, "divisor": 1}, storage=storage)


def make_record(shape=SHAPE) -> PreprocessRecord:
    """A crop of a slightly larger original grid, no resampling, no padding."""
    original = tuple(n + 3 for n in shape)
    return PreprocessRecord(
        original_shape=original,
        original_affine=tuple(tuple(float(v) for v in row) for row in np.diag([1.0, 1.0, 1.0, 1.0])),
        bbox=tuple((1, 1 + n) for n in shape),
        resampled_shape=tuple(shape),
        pad=((0, 0), (0, 0), (0, 0)),
    )


def make_arrays(seed: int = 0, shape=SHAPE) -> dict:
    """float32 images (4, *shape), probabilities and uncertainty (3, *shape), nested regions (3, *shape).

    Probabilities include the worst case for rounding (half-way between two uint8 steps) and
    the exact ends 0 and 1.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 1.5, size=(4, *shape)).astype(np.float32)
    probabilities = rng.random((3, *shape), dtype=np.float32)
    probabilities[0, 0, 0, :5] = (np.arange(5) + 0.5) / 255
    probabilities[1, 0, 0, :2] = (0.0, 1.0)
    uncertainty = (0.5 * rng.random((3, *shape))).astype(np.float32)
    wt = probabilities[0] > 0.4
    regions = np.stack([wt, wt & (probabilities[1] > 0.5), wt & (probabilities[1] > 0.5) & (probabilities[2] > 0.5)])
    return {"images": images, "probabilities": probabilities, "uncertainty": uncertainty, "regions": regions}


def write(writer: CacheWriter, case_id: str, key: str = "key-1", seed: int = 0, regions: bool = True, shape=SHAPE):
    arrays = make_arrays(seed, shape)
    entry = writer.write_case(
        case_id,
        key,
        arrays["images"],
        arrays["probabilities"],
        arrays["uncertainty"],
        arrays["regions"] if regions else None,
        record=make_record(shape),
        source={"inputs": {"t1": "sha-t1"}, "members": ["fold_0", "fold_1"]},
        n_passes=16,
        seconds=1.5,
    )
    return entry, arrays


def chunk_files(cache_dir: Path, case_id: str, array: str) -> list[Path]:
    (folder,) = (cache_dir / "cases").glob(f"{case_id}.*.zarr")
    return sorted((folder / array).glob("c.*"))


def flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    path.write_bytes(bytes(raw))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict]:
    """Written once per module: a finalised cache with cases a (with regions) and b (without)."""
    path = tmp_path_factory.mktemp("pristine") / "cache"
    writer = CacheWriter.open(path, make_spec(), ["a", "b"])
    _, arrays = write(writer, "a", seed=1)
    write(writer, "b", seed=2, regions=False)
    assert writer.finalize()
    return path, arrays


@pytest.fixture
def finished(pristine, cache_dir) -> tuple[Path, dict]:
    """A private copy of the pristine cache (tests damage it); returns its path and case a's input arrays."""
    shutil.copytree(pristine[0], cache_dir)
    return cache_dir, pristine[1]


# ----------------------------------------------------------------------------- round trip


def test_round_trip_within_recorded_bounds(finished):
    path, arrays = finished
    reader = TeacherCache.open(path)
    case = reader.read_case("a")

    assert reader.case_ids == ["a", "b"]
    assert case.images.dtype == case.probabilities.dtype == case.uncertainty.dtype == np.float32
    assert np.abs(case.probabilities - arrays["probabilities"]).max() <= PROB_BOUND + FLOAT32_SLACK
    assert np.abs(case.uncertainty - arrays["uncertainty"]).max() <= UNC_BOUND + FLOAT32_SLACK
    assert np.all(np.abs(case.images - arrays["images"]) <= np.abs(arrays["images"]) * 2.0**-11 + 1e-7)
    assert case.probabilities[1, 0, 0, 0] == 0.0 and case.probabilities[1, 0, 0, 1] == 1.0
    assert case.record == make_record()
    assert case.source["members"] == ["fold_0", "fold_1"]
    assert reader.shape("a") == SHAPE


def test_bounds_and_measured_errors_are_recorded(finished):
    path, _ = finished
    reader = TeacherCache.open(path)
    quantisation = reader.spec.quantisation
    assert quantisation["probabilities"]["dtype"] == "uint8"
    assert quantisation["probabilities"]["max_abs_error_bound"] == pytest.approx(1 / 510)
    assert quantisation["uncertainty"]["max_abs_error_bound"] == pytest.approx(1 / 1020)
    assert quantisation["images"]["dtype"] == "float16"
    measured = reader.entry("a").quantisation_error["probabilities"]
    # The fixture holds values exactly half-way between steps, so the worst case is reached.
    assert measured["max_abs"] == pytest.approx(1 / 510, abs=FLOAT32_SLACK)
    summary = reader.manifest["quantisation_error"]["probabilities"]
    assert summary["max_abs"] <= summary["bound"] + FLOAT32_SLACK


def test_region_bit_field_hand_values():
    # WT only -> 0b001, WT+TC -> 0b011, WT+TC+ET -> 0b111, ET alone (hierarchy violated) -> 0b100
    regions = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=bool).reshape(3, 5, 1, 1)
    packed = pack_regions(regions)
    assert packed.ravel().tolist() == [1, 3, 7, 4, 0]
    assert np.array_equal(unpack_regions(packed), regions)


def test_regions_round_trip_through_cache(finished):
    path, arrays = finished
    reader = TeacherCache.open(path)
    regions = reader.read_case("a").regions
    assert regions.dtype == bool and regions.shape == (3, *SHAPE)
    assert np.array_equal(regions, arrays["regions"])
    assert reader.read_case("b").regions is None
    assert reader.read_patch("b", (0, 0, 0), (4, 4, 4)).regions is None


@pytest.mark.parametrize(
    "start, size",
    [
        ((3, 2, 1), (8, 9, 10)),  # inside, not chunk-aligned
        ((0, 0, 0), SHAPE),  # the whole volume
        ((-3, 10, 9), (8, 12, 10)),  # crosses the lower border on x and the upper on y, z
        ((15, -5, -5), (16, 32, 32)),  # larger than the volume on two axes
        ((25, 0, 0), (4, 4, 4)),  # entirely outside
    ],
)
def test_read_patch_equals_slicing_the_padded_case(finished, start, size):
    path, _ = finished
    reader = TeacherCache.open(path)
    case = reader.read_case("a")
    patch = reader.read_patch("a", start, size)
    margin = max(abs(s) for s in start) + max(size)  # enough zeros on both sides for any box asked for

    def expected(volume: np.ndarray) -> np.ndarray:
        padded = np.pad(volume, [(0, 0)] + [(margin, margin)] * 3)
        return padded[(slice(None), *(slice(s + margin, s + margin + n) for s, n in zip(start, size)))]

    assert patch.images.shape == (4, *size) and patch.probabilities.shape == (3, *size)
    np.testing.assert_array_equal(patch.images, expected(case.images))
    np.testing.assert_array_equal(patch.probabilities, expected(case.probabilities))
    np.testing.assert_array_equal(patch.uncertainty, expected(case.uncertainty))
    np.testing.assert_array_equal(patch.regions, expected(case.regions))


def test_read_patch_decodes_only_the_chunks_it_touches(finished):
    path, _ = finished
    # Damage the chunk at the far corner (chunk index 2, 2, 1 of 8³ chunks); crc32c makes any read of it fail.
    (folder,) = (path / "cases").glob("a.*.zarr")
    flip_bytes(folder / "probabilities" / "c.0.2.2.1")
    reader = TeacherCache.open(path)
    reader.read_patch("a", (0, 0, 0), (8, 8, 8))  # touches chunk (0, 0, 0) only
    with pytest.raises(CacheError, match="probabilities.*damaged"):
        reader.read_patch("a", (16, 16, 8), (4, 2, 4))  # x 16-19, y 16-17, z 8-11: inside chunk (2, 2, 1)
    with pytest.raises(CacheError, match="damaged"):
        reader.read_case("a")


# ----------------------------------------------------------------------------- resume and staleness


def test_resume_skips_same_key_and_rewrites_stale(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec())
    write(writer, "a", key="key-1", seed=1)
    (old_folder,) = (cache_dir / "cases").glob("a.*.zarr")

    assert writer.is_complete("a", "key-1")
    assert not writer.is_complete("a", "key-2")  # e.g. an input file changed
    assert not writer.is_complete("never-written", "key-1")

    _, new_arrays = write(writer, "a", key="key-2", seed=7)
    assert writer.is_complete("a", "key-2") and not writer.is_complete("a", "key-1")
    assert not old_folder.exists()  # the stale version's data went with it
    assert writer.finalize(["a"])
    case = TeacherCache.open(cache_dir).read_case("a")
    assert np.abs(case.probabilities - new_arrays["probabilities"]).max() <= PROB_BOUND + FLOAT32_SLACK


def test_case_key_changes_with_members_and_inputs():
    spec = make_spec()
    base = case_key(spec, ["fold_0", "fold_1"], {"t1": "a"})
    assert base == case_key(make_spec(), ["fold_0", "fold_1"], {"t1": "a"})
    assert base != case_key(spec, ["fold_0"], {"t1": "a"})
    assert base != case_key(spec, ["fold_0", "fold_1"], {"t1": "b"})
    assert base != case_key(make_spec(mode="oof"), ["fold_0", "fold_1"], {"t1": "a"})


def test_teacher_identity_follows_teacher_infos_own_rule():
    """The cache restates TeacherInfo's identity rule (it does not import the teacher stage): the two agree."""
    for info in (teacher_info(), teacher_info("plans-sha-B"), replace(teacher_info(), tta="none", identity={})):
        assert teacher_identity_hash(info.to_dict()) == info.identity_hash
        assert CacheSpec.for_teacher(info, "full", {}).teacher_hash == info.identity_hash
    renamed = replace(teacher_info(), name="another name", parameters_per_member=5, members=("fold_3",))
    assert teacher_identity_hash(renamed.to_dict()) == teacher_info().identity_hash  # not part of the identity
    incomplete = {k: v for k, v in teacher_info().to_dict().items() if k != "tta"}
    with pytest.raises(CacheError, match=r"teacher description is incomplete \(missing tta\)"):
        teacher_identity_hash(incomplete)


def test_writing_after_finalize_removes_the_manifest(finished):
    path, _ = finished
    writer = CacheWriter.open(path, make_spec())
    write(writer, "a", key="key-2", seed=3)
    assert not (path / "manifest.json").exists()
    with pytest.raises(CacheError, match="incomplete"):
        TeacherCache.open(path)
    assert writer.finalize(["a", "b"])
    assert TeacherCache.open(path).entry("a").key == "key-2"


def test_finalize_refuses_while_cases_are_missing_or_stale(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec())
    write(writer, "a", key="key-1")
    assert not writer.finalize(["a", "b"])
    assert not writer.finalize({"a": "key-other"})
    assert not (cache_dir / "manifest.json").exists()
    assert writer.finalize({"a": "key-1"})


# ----------------------------------------------------------------------------- refusals


def test_writer_refuses_a_cache_of_another_teacher(finished):
    path, _ = finished
    ours, theirs = make_spec(plans="plans-sha-A"), make_spec(plans="plans-sha-B")
    with pytest.raises(CacheError) as info:
        CacheWriter.open(path, theirs)
    message = str(info.value)
    assert ours.teacher_hash in message and theirs.teacher_hash in message
    assert "identity.plans_sha256" in message


def test_writer_refuses_another_mode(finished):
    path, _ = finished
    with pytest.raises(CacheError, match="mode: cache 'full', this run 'oof'"):
        CacheWriter.open(path, make_spec(mode="oof"))


def test_writer_refuses_a_folder_that_is_not_a_cache(tmp_path):
    (tmp_path / "notes.txt").write_text("my data")
    with pytest.raises(CacheError, match="not a teacher cache"):
        CacheWriter.open(tmp_path, make_spec())


@pytest.mark.parametrize("file_name", ["spec.json", "manifest.json"])
def test_reader_refuses_another_format_version(finished, file_name):
    path, _ = finished
    edit_json(path / file_name, format_version=99)
    with pytest.raises(CacheError, match=r"format version 99.*reads format version 1"):
        TeacherCache.open(path)
    assert not verify_cache(path).ok


def test_reader_refuses_an_incomplete_cache(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec(), ["a", "b"])
    write(writer, "a")
    with pytest.raises(CacheError, match=r"cache incomplete \(1 of 2 cases done.*[Rr]e-run teacher-cache"):
        TeacherCache.open(cache_dir)
    partial = TeacherCache.open(cache_dir, require_complete=False)
    assert partial.case_ids == ["a"] and not partial.is_complete


def test_reader_refuses_another_teacher(finished):
    path, _ = finished
    other = make_spec(plans="plans-sha-B").teacher_hash
    with pytest.raises(CacheError, match=f"not by the expected teacher \\(identity {other}\\)"):
        TeacherCache.open(path, expect_teacher_hash=other)
    assert TeacherCache.open(path, expect_teacher_hash=make_spec().teacher_hash).case_ids == ["a", "b"]


def test_reader_refuses_a_cache_changed_after_its_manifest(finished):
    path, _ = finished
    edit_json(path / "cases" / "a.json", key="edited")
    with pytest.raises(CacheError, match="case a changed or vanished after the manifest"):
        TeacherCache.open(path)


def test_bad_inputs_are_refused_before_anything_is_written(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec())
    arrays = make_arrays()
    common = dict(record=make_record(), source={}, n_passes=1, seconds=0.0)
    too_high = arrays["probabilities"] + 0.5
    with pytest.raises(CacheError, match=r"case a: probabilities: values span"):
        writer.write_case("a", "k", arrays["images"], too_high, arrays["uncertainty"], **common)
    with pytest.raises(CacheError, match="cannot name a cache file"):
        writer.write_case("../a", "k", arrays["images"], arrays["probabilities"], arrays["uncertainty"], **common)
    with pytest.raises(CacheError, match="preprocess record describes grid"):
        writer.write_case(
            "a", "k", arrays["images"], arrays["probabilities"], arrays["uncertainty"],
            record=make_record((10, 10, 10)), source={}, n_passes=1, seconds=0.0,
        )  # fmt: skip
    assert sorted(p.name for p in (cache_dir / "cases").iterdir()) == []


# ----------------------------------------------------------------------------- verify


def test_verify_passes_on_a_finished_cache(finished):
    path, _ = finished
    report = verify_cache(path)
    assert report.ok, report.lines()
    assert set(report.cases) == {"a", "b"} and not report.leftovers and not report.unlisted


def test_verify_detects_a_corrupted_chunk(finished):
    path, _ = finished
    flip_bytes(chunk_files(path, "a", "uncertainty")[0])
    report = verify_cache(path)
    assert not report.ok
    assert list(report.bad_cases) == ["a"]
    assert "'uncertainty' undecodable" in report.bad_cases["a"][0]


def test_verify_detects_a_deleted_chunk_file(finished):
    path, _ = finished
    # zarr reads a missing chunk as zeros; only the whole-array checksum notices.
    chunk_files(path, "a", "images")[0].unlink()
    report = verify_cache(path)
    assert report.bad_cases == {"a": ["array 'images' checksum mismatch (stored data differ from what was written)"]}


def test_verify_detects_a_deleted_entry(finished):
    path, _ = finished
    (path / "cases" / "b.json").unlink()
    report = verify_cache(path)
    assert not report.ok
    assert report.missing == ["b"]
    assert any(name.startswith("cases/b.") for name in report.leftovers)  # its unreferenced data


def test_verify_reports_an_unfinished_cache(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec(), ["a", "b"])
    write(writer, "a")
    report = verify_cache(cache_dir)
    assert not report.ok and report.missing == ["b"]
    assert any("no manifest.json" in p for p in report.problems)


# ----------------------------------------------------------------------------- failures while writing


def test_crash_before_the_entry_leaves_nothing_complete(cache_dir, monkeypatch):
    writer = CacheWriter.open(cache_dir, make_spec(), ["a"])

    def crash(path, entry):
        raise RuntimeError("simulated crash between data and entry")

    monkeypatch.setattr(cache_writer, "write_entry", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write(writer, "a")
    assert not writer.is_complete("a", "key-1")
    assert list((cache_dir / "cases").iterdir()) == []  # neither the partial nor the renamed folder remains

    monkeypatch.undo()
    write(writer, "a")
    assert writer.finalize() and verify_cache(cache_dir).ok


def test_crash_while_rewriting_keeps_the_previous_version(cache_dir, monkeypatch):
    writer = CacheWriter.open(cache_dir, make_spec())
    _, old = write(writer, "a", key="key-1", seed=1)
    def interrupt(path, entry):
        raise KeyboardInterrupt  # Ctrl-C between data and entry

    monkeypatch.setattr(cache_writer, "write_entry", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write(writer, "a", key="key-2", seed=2)
    assert writer.is_complete("a", "key-1")
    case = TeacherCache.open(cache_dir, require_complete=False).read_case("a")
    assert np.abs(case.probabilities - old["probabilities"]).max() <= PROB_BOUND + FLOAT32_SLACK


def test_disk_full_gives_a_clean_error_and_no_leftovers(cache_dir, monkeypatch):
    writer = CacheWriter.open(cache_dir, make_spec())
    real_write_array = cache_storage.write_array
    written = []

    def fill_disk(group, name, data, storage):
        if written:  # the first array lands on disk, the second finds it full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_array(group, name, data, storage)
        written.append(name)

    monkeypatch.setattr(cache_storage, "write_array", fill_disk)
    with pytest.raises(CacheError, match=r"disk full while writing case a to .*nothing was committed for this case"):
        write(writer, "a")
    assert written == ["images"]
    assert list((cache_dir / "cases").iterdir()) == []
    assert not writer.is_complete("a", "key-1")


def test_remove_leftovers_cleans_debris(cache_dir):
    writer = CacheWriter.open(cache_dir, make_spec())
    write(writer, "a")
    debris = cache_dir / "cases" / ".a.deadbeef.zarr.partial"
    debris.mkdir()
    assert verify_cache(cache_dir).leftovers == ["cases/.a.deadbeef.zarr.partial"]
    assert remove_leftovers(cache_dir) == ["cases/.a.deadbeef.zarr.partial"]
    assert not debris.exists() and writer.is_complete("a", "key-1")


# ----------------------------------------------------------------------------- several processes


def _write_shard(path: str, case_ids: list[str], all_ids: list[str]) -> None:
    """Child process: one shard of a run (spawned, so it shares nothing with the parent)."""
    writer = CacheWriter.open(path, make_spec(), all_ids)
    for index, case_id in enumerate(case_ids):
        if not writer.is_complete(case_id, f"key-{case_id}"):
            write(writer, case_id, key=f"key-{case_id}", seed=index)
    writer.finalize(all_ids)


def _write_until_killed(path: str, kill_point: str, ready: str) -> None:
    """Child process: start writing a larger case and hang at ``kill_point`` until killed."""

    def announce_and_hang() -> None:
        Path(ready).touch()
        time.sleep(120)

    real_write_array = cache_storage.write_array

    def hang_after_first_array(group, name, data, storage):
        real_write_array(group, name, data, storage)
        announce_and_hang()

    if kill_point == "arrays":
        cache_storage.write_array = hang_after_first_array
    else:
        cache_writer.write_entry = lambda path, entry: announce_and_hang()
    writer = CacheWriter.open(path, make_spec(chunk=16), ["small", "big"])
    write(writer, "big", key="key-big", shape=(64, 64, 48))


def test_two_processes_write_disjoint_cases_of_one_cache(cache_dir):
    context = multiprocessing.get_context("spawn")
    all_ids = ["c0", "c1", "c2", "c3"]
    shards = [context.Process(target=_write_shard, args=(str(cache_dir), all_ids[i::2], all_ids)) for i in range(2)]
    for process in shards:
        process.start()
    for process in shards:
        process.join(timeout=90)
        assert process.exitcode == 0
    report = verify_cache(cache_dir)
    assert report.ok, report.lines()
    assert not report.leftovers
    assert TeacherCache.open(cache_dir).case_ids == all_ids


@pytest.mark.parametrize("kill_point", ["arrays", "entry"])
def test_a_killed_writer_leaves_nothing_complete_and_a_rerun_finishes(cache_dir, tmp_path, kill_point):
    CacheWriter.open(cache_dir, make_spec(chunk=16), ["small", "big"])
    ready = tmp_path / "ready"
    args = (str(cache_dir), kill_point, str(ready))
    process = multiprocessing.get_context("spawn").Process(target=_write_until_killed, args=args)
    process.start()
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"writer never reached {kill_point} (exit code {process.exitcode})"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.join(timeout=30)
    assert process.exitcode == -signal.SIGKILL

    writer = CacheWriter.open(cache_dir, make_spec(chunk=16), ["small", "big"])
    assert not writer.is_complete("big", "key-big")
    assert verify_cache(cache_dir).leftovers  # the killed attempt's folder, reported, not trusted
    write(writer, "small", key="key-small", shape=(10, 10, 10))
    write(writer, "big", key="key-big", shape=(64, 64, 48))
    assert writer.finalize()
    report = verify_cache(cache_dir)
    assert report.ok, report.lines()
    remove_leftovers(cache_dir)
    assert not verify_cache(cache_dir).leftovers
    assert TeacherCache.open(cache_dir).shape("big") == (64, 64, 48)


# ----------------------------------------------------------------------------- the stub-teacher cache of the tests


def test_the_stub_teacher_cache_verifies_cleanly(stub_cache):
    """``stub_cache`` (tests/conftest.py) is a cache like any other: complete, verified, on oblique grids."""
    report = verify_cache(stub_cache)
    assert report.ok and not report.leftovers and not report.unlisted, report.lines()
    cache = TeacherCache.open(stub_cache)
    assert cache.spec.teacher_name == "stub:smoothed-labels" and len(cache.case_ids) == 5
    affines = []
    for case_id in cache.case_ids:
        case = cache.read_case(case_id)
        affines.append(np.array(case.record.original_affine))
        assert not np.allclose(affines[-1], np.eye(4)) and not np.allclose(
            affines[-1][:3, :3], np.diag(np.diag(affines[-1][:3, :3]))
        )
        assert case.regions is not None and all(region.any() for region in case.regions)
        assert 0 <= case.uncertainty.min() and case.uncertainty.max() <= 0.5
        teacher = case.probabilities > 0.5
        dice = [2 * (t & r).sum() / (t.sum() + r.sum()) for t, r in zip(teacher, case.regions)]
        assert min(dice) > 0.9, (case_id, dice)  # soft maps derived from the labels
    assert len({a.tobytes() for a in affines}) == len(affines)  # each case on its own grid
