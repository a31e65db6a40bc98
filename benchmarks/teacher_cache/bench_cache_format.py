"""Benchmark: bytes, error and read speed of the teacher-cache format vs nnU-Net's probability files.

Soft maps come from real BraTS 2018 ground truth (``../shared/data/brats18`` beside the
repository; the benchmark exits with a message when it is absent, and copies nothing into
the repository). Per case, at the 1 mm grid cropped to the brain box and at 2 mm:

* three sigmoid region maps (WT, TC, ET) like a mirror-TTA ensemble makes them: for each of
  8 simulated passes, a Gaussian-blurred region mask turned into a logit, plus smooth
  per-pass noise, through a sigmoid; the float32 mean is the probability map and the std
  over passes the uncertainty map (so, like nnU-Net's output, nothing is exactly zero).
  Two teachers: a confident one (logit -8 far from tumour, p ~ 3e-4) and a hesitant one
  (logit -5, p ~ 7e-3); how far from 0 the background sits decides most of the bytes;
* bytes and max/mean abs error vs the float32 maps for: ``np.savez`` (float32),
  ``np.savez_compressed`` (float32, what nnU-Net's ``save_probabilities`` writes) on the same
  grid and on the original 240x240x155 grid (where nnU-Net writes it), and this cache's
  encodings: uint8 q/255 (the default), uint8 q/128 and float16 (zarr v3, blosc/zstd, bytes on disk);
* the time to read a random 64³ patch of every array (median of ``--reads``) vs decoding the
  whole case, and, at 1 mm, the same for 32³, 48³ and 64³ chunks.

    python benchmarks/teacher_cache/bench_cache_format.py          # writes results_format.json + RESULTS_format.md here
    python benchmarks/teacher_cache/bench_cache_format.py --cases 1 --reads 10 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import scipy
import zarr
from scipy import ndimage

from distill import __version__
from distill.cache import (
    CacheSpec,
    CacheWriter,
    Quantiser,
    TeacherCache,
    default_quantisation,
    default_storage,
)
from distill.data.case import load_case
from distill.data.conventions import get_convention
from distill.data.discovery import find_cases
from distill.data.preprocess import PreprocessConfig, preprocess, restore_probabilities
from distill.teacher.base import PassAccumulator, TeacherInfo

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "brats18"
GRIDS = {"1mm": PreprocessConfig(), "2mm": PreprocessConfig(target_spacing=(2.0, 2.0, 2.0))}
N_PASSES = 8  # mirror TTA of one member; the std over passes is the uncertainty
TEACHERS = {"confident": -8.0, "hesitant": -5.0}  # logit far from any tumour
PATCH = 64
CHUNK_CHOICES = (32, 48, 64)
TARGET_RATIO = 30.0  # issue: >= 30x smaller than nnU-Net's float32 npz ...
TARGET_ERROR = 1 / 255  # ... at max abs error <= 1/255


# ----------------------------------------------------------------------------- realistic soft maps


def smooth_noise(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation (float32)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    return noise / max(float(noise.std()), 1e-6)


def soft_maps(regions: np.ndarray, brain: np.ndarray, spacing_mm: float, background_logit: float, rng):
    """Ensemble-like sigmoid maps for boolean ``regions`` ``(3, X, Y, Z)``.

    Returns float32 ``(probabilities, uncertainty)``, both ``(3, X, Y, Z)``: the mean and the
    std over ``N_PASSES`` passes. Each pass: logit = -2 background_logit (blurred mask - 0.5)
    + 0.8 smooth noise (so ``background_logit`` far from tumour, its negative deep inside),
    and one less than that outside the brain (never exactly 0 there either).
    """
    blur = 1.5 / spacing_mm  # about 1.5 mm of edge softness
    logits = []
    for region in regions:
        base = -2.0 * background_logit * (ndimage.gaussian_filter(region.astype(np.float32), blur) - 0.5)
        base[~brain] = background_logit - 1.0
        logits.append(base)
    base_logits = np.stack(logits)
    accumulator = PassAccumulator()
    for _ in range(N_PASSES):
        noisy = base_logits + 0.8 * smooth_noise(base_logits.shape, 2.0 / spacing_mm, rng)
        accumulator.add(1.0 / (1.0 + np.exp(-noisy)))
    return accumulator.mean(), accumulator.std()


# ----------------------------------------------------------------------------- formats


def npz_bytes(array: np.ndarray, compressed: bool) -> tuple[int, float]:
    """Bytes of ``np.savez[_compressed](probabilities=array)`` and seconds to load it back."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, probabilities=array)
    start = time.perf_counter()
    np.load(io.BytesIO(buffer.getvalue()))["probabilities"]
    return len(buffer.getvalue()), time.perf_counter() - start


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def teacher_info() -> TeacherInfo:
    return TeacherInfo(
        name="benchmark:simulated-sigmoid-ensemble",
        output_kind="sigmoid",
        channels=("WT", "TC", "ET"),
        parameters_per_member=0,
        members=("simulated",),
        tta="mirror8",
        identity={"simulated": True},
    )


# Encodings of the maps compared in the cache (images are float16 in all of them).
ENCODINGS = {
    "uint8 q/255 (chosen)": {"probabilities": Quantiser("uint8", divisor=255, upper=1.0)},
    "uint8 q/128": {"probabilities": Quantiser("uint8", divisor=128, upper=1.0)},
    "float16": {"probabilities": Quantiser("float16", upper=1.0), "uncertainty": Quantiser("float16", upper=0.5)},
}
CHOSEN = "uint8 q/255 (chosen)"


def make_spec(encoding: str = CHOSEN, chunk: int = 48) -> CacheSpec:
    quantisation = default_quantisation()
    quantisation.update({name: q.to_dict() for name, q in ENCODINGS[encoding].items()})
    storage = {**default_storage(), "chunk_spatial": chunk}
    preprocessing = {"benchmark": True}
    return CacheSpec.for_teacher(teacher_info(), "full", preprocessing, quantisation=quantisation, storage=storage)


def write_to_cache(root: Path, spec: CacheSpec, case_id: str, pre, probabilities, uncertainty, regions) -> dict:
    """One case through the real writer: bytes per array and per case, seconds, measured errors."""
    writer = CacheWriter.open(root, spec)
    start = time.perf_counter()
    entry = writer.write_case(
        case_id, "bench", pre.images, probabilities, uncertainty, regions,
        record=pre.record, source={}, n_passes=N_PASSES, seconds=0.0,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    folder = root / "cases" / entry.data
    return {
        "array_bytes": {name: folder_bytes(folder / name) for name in entry.arrays},
        "case_bytes": folder_bytes(folder) + (root / "cases" / f"{case_id}.json").stat().st_size,
        "write_s": seconds,
        "errors": entry.quantisation_error,
    }


def time_reads(root: Path, case_id: str, shape, n_reads: int, rng: np.random.Generator) -> dict:
    """Median seconds: one random 64³ patch of every array (images, maps, regions), and one whole case."""
    reader = TeacherCache.open(root, require_complete=False)
    reader.read_patch(case_id, (0, 0, 0), (PATCH,) * 3)  # open the arrays once, outside the timing
    patch_s = []
    for _ in range(n_reads):
        start_voxel = [int(rng.integers(0, max(n - PATCH, 0) + 1)) for n in shape]
        start = time.perf_counter()
        reader.read_patch(case_id, start_voxel, (PATCH,) * 3)
        patch_s.append(time.perf_counter() - start)
    full_s = []
    for _ in range(5):
        start = time.perf_counter()
        reader.read_case(case_id)
        full_s.append(time.perf_counter() - start)
    return {"patch_median_s": float(np.median(patch_s)), "full_case_median_s": float(np.median(full_s))}


# ----------------------------------------------------------------------------- one case


def measure_case(case, grid: str, teacher: str, n_reads: int, rng: np.random.Generator, work: Path) -> dict:
    pre = preprocess(case.images, case.affine, case.labels, GRIDS[grid], source=case.case_id)
    regions = get_convention("brats2017").to_regions(pre.labels, case.case_id)
    spacing = float(np.mean(pre.record.spacing))
    probabilities, uncertainty = soft_maps(regions, pre.brain_mask, spacing, TEACHERS[teacher], rng)
    original = restore_probabilities(probabilities, pre.record)  # where nnU-Net writes its npz

    result: dict = {"case_id": case.case_id, "grid_shape": list(pre.record.shape), "spacing_mm": round(spacing, 3)}
    result["fraction_below_1_510"] = float(np.mean(probabilities < 1 / 510))
    savez, _ = npz_bytes(probabilities, compressed=False)
    savez_c, savez_c_load = npz_bytes(probabilities, compressed=True)
    original_c, original_c_load = npz_bytes(original, compressed=True)
    unc_c, _ = npz_bytes(uncertainty, compressed=True)
    result["npz"] = {
        "savez_f32_grid": savez,
        "savez_compressed_f32_grid": savez_c,
        "savez_compressed_f32_grid_load_s": savez_c_load,
        "savez_compressed_f32_original": original_c,
        "savez_compressed_f32_original_load_s": original_c_load,
        "original_shape": list(original.shape),
        "uncertainty_savez_compressed_f32_grid": unc_c,
    }
    result["cache"] = {}
    for encoding in ENCODINGS:
        root = work / f"{case.case_id}-{grid}-{teacher}-{len(result['cache'])}"
        written = write_to_cache(root, make_spec(encoding), case.case_id, pre, probabilities, uncertainty, regions)
        if encoding == CHOSEN:
            written.update(time_reads(root, case.case_id, pre.record.shape, n_reads, rng))
        result["cache"][encoding] = written
    if grid == "1mm" and teacher == next(iter(TEACHERS)):
        result["chunks"] = {}
        for chunk in CHUNK_CHOICES:
            root = work / f"{case.case_id}-chunk{chunk}"
            spec = make_spec(chunk=chunk)
            written = write_to_cache(root, spec, case.case_id, pre, probabilities, uncertainty, regions)
            result["chunks"][str(chunk)] = {
                "case_bytes": written["case_bytes"],
                **time_reads(root, case.case_id, pre.record.shape, n_reads, rng),
            }
    return result


# ----------------------------------------------------------------------------- summary


def mean(values) -> float:
    return float(np.mean(list(values)))


def summarise(rows: list[dict]) -> dict:
    """Means of bytes and times over cases; worst max abs error and mean of mean abs errors."""
    npz = {key: mean(r["npz"][key] for r in rows) for key in rows[0]["npz"] if key != "original_shape"}
    cache = {}
    for encoding in ENCODINGS:
        written = [r["cache"][encoding] for r in rows]
        cache[encoding] = {
            "array_bytes": {name: mean(w["array_bytes"][name] for w in written) for name in written[0]["array_bytes"]},
            "case_bytes": mean(w["case_bytes"] for w in written),
            "write_s": mean(w["write_s"] for w in written),
            "errors": {
                name: {
                    "max_abs": max(w["errors"][name]["max_abs"] for w in written),
                    "mean_abs": mean(w["errors"][name]["mean_abs"] for w in written),
                }
                for name in written[0]["errors"]
            },
        }
    chosen = [r["cache"][CHOSEN] for r in rows]
    summary = {
        "n_cases": len(rows),
        "grid_shape_mean": [round(mean(r["grid_shape"][i] for r in rows)) for i in range(3)],
        "fraction_below_1_510": mean(r["fraction_below_1_510"] for r in rows),
        "npz": npz,
        "cache": cache,
        "patch_median_s": mean(w["patch_median_s"] for w in chosen),
        "full_case_median_s": mean(w["full_case_median_s"] for w in chosen),
    }
    chosen_bytes = cache[CHOSEN]["array_bytes"]["probabilities"]
    summary["ratio_vs_savez_compressed_grid"] = npz["savez_compressed_f32_grid"] / chosen_bytes
    summary["ratio_vs_savez_compressed_original"] = npz["savez_compressed_f32_original"] / chosen_bytes
    if "chunks" in rows[0]:
        summary["chunks"] = {
            chunk: {key: mean(r["chunks"][chunk][key] for r in rows) for key in rows[0]["chunks"][chunk]}
            for chunk in rows[0]["chunks"]
        }
    return summary


def environment(argv: list[str]) -> dict:
    script = Path(__file__).resolve().relative_to(REPO_ROOT)
    return {
        "command": shlex.join(["python", str(script), *argv]),
        "distill": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# Teacher-cache format benchmark",
        "",
        f"Command: `{env['command']}`  ",
        f"distill {env['distill']}, Python {env['python']}, numpy {env['numpy']}, zarr {env['zarr']}, "
        f"numcodecs {env['numcodecs']}; {env['processor']}, {env['cpu_count']} CPUs, load average "
        f"{env['load_average_at_start'][0]} at start (shared machine, so times are noisy), {env['date_utc']}.",
        "",
        f"Soft maps: {N_PASSES} simulated sigmoid passes per case from real BraTS 2018 ground truth "
        "(blurred region masks -> logits + smooth noise -> sigmoid; mean = probabilities, std = uncertainty), "
        "3 channels (WT, TC, ET), float32. Teachers: "
        + ", ".join(f"{k} (logit {v:g} far from tumour)" for k, v in TEACHERS.items())
        + ". Bytes are means per case; errors are vs the float32 maps (max: worst voxel of all cases; "
        "mean: over all voxels). Ratios are vs float32 `savez_compressed` on the same grid and on the "
        "original 240x240x155 grid, where nnU-Net writes its npz.",
        "",
        "## Probabilities (3 channels)",
        "",
        "| grid, teacher (mean shape) | format | bytes | smaller than npz_c (same grid / original) "
        "| max abs err | mean abs err |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results["settings"].items():
        npz, shape = s["npz"], "x".join(map(str, s["grid_shape_mean"]))
        reference, original = npz["savez_compressed_f32_grid"], npz["savez_compressed_f32_original"]
        formats = [
            ("np.savez float32", npz["savez_f32_grid"], None),
            ("np.savez_compressed float32", reference, None),
            ("np.savez_compressed float32, original grid (nnU-Net)", original, None),
        ]
        for encoding, c in s["cache"].items():
            formats.append((f"cache {encoding}", c["array_bytes"]["probabilities"], c["errors"]["probabilities"]))
        for label, size, error in formats:
            err = (f"{error['max_abs']:.5f} | {error['mean_abs']:.6f}") if error else "0 | 0"
            ratios = f"{reference / size:.1f}x / {original / size:.1f}x"
            lines.append(f"| {name} ({shape}) | {label} | {mib(size)} | {ratios} | {err} |")
    lines += [
        "",
        "## Uncertainty, images, whole cases, reading",
        "",
        "| grid, teacher | uncertainty: npz_c f32 / uint8 q/510 / float16 | uncertainty uint8 max / mean abs err "
        "| images float16 | whole case (chosen) | write | 64³ patch, all arrays (median) | whole case decode "
        "| nnU-Net npz load (same grid / original) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["settings"].items():
        chosen, half = s["cache"][CHOSEN], s["cache"]["float16"]
        error = chosen["errors"]["uncertainty"]
        lines.append(
            f"| {name} | {mib(s['npz']['uncertainty_savez_compressed_f32_grid'])} / "
            f"{mib(chosen['array_bytes']['uncertainty'])} / {mib(half['array_bytes']['uncertainty'])} "
            f"| {error['max_abs']:.5f} / {error['mean_abs']:.6f} | {mib(chosen['array_bytes']['images'])} "
            f"| {mib(chosen['case_bytes'])} | {chosen['write_s']:.2f} s | {1000 * s['patch_median_s']:.1f} ms "
            f"| {1000 * s['full_case_median_s']:.0f} ms | {1000 * s['npz']['savez_compressed_f32_grid_load_s']:.0f} / "
            f"{1000 * s['npz']['savez_compressed_f32_original_load_s']:.0f} ms |"
        )
    for name, s in results["settings"].items():
        if "chunks" not in s:
            continue
        lines += ["", f"## Chunk size ({name}, chosen encoding)", ""]
        lines += ["| chunk | whole case | 64³ patch (median) | whole case decode |", "|---|---|---|---|"]
        for chunk, c in s["chunks"].items():
            times = f"{1000 * c['patch_median_s']:.1f} ms | {1000 * c['full_case_median_s']:.0f} ms"
            lines.append(f"| {chunk}³ | {mib(c['case_bytes'])} | {times} |")
    lines += ["", "## Target", "", *verdict(results), "", "## Choice", "", *CHOICE, ""]
    return "\n".join(lines)


CHOICE = [
    "The cache stores probabilities as uint8 q/255 (error <= 1/510, half the issue's 1/255 budget), the",
    "uncertainty as uint8 q/510 (<= 1/1020) and the student inputs as float16, in 48³ chunks with blosc/zstd-5",
    "and a crc32c per chunk. float16 maps are 8-100x larger than uint8 for an error 8x smaller (0.00024 vs",
    "0.00196), which this benchmark cannot show to matter to a student. The bytes are set by how far the",
    "teacher's background sits from 0: a confident teacher beats the 30x target by far; a hesitant one misses",
    "it on the same grid, and uint8 q/128 (error 1/256, still within 1/255) is the recorded fallback, one",
    "`CacheSpec.quantisation` entry away. 48³ and 64³ chunks perform alike; 48³ reads less surplus data for",
    "patches smaller than 64³.",
]


def verdict(results: dict) -> list[str]:
    """The issue's target, per setting: >= 30x smaller than float32 npz at max abs error <= 1/255."""
    lines = []
    for name, s in results["settings"].items():
        for encoding, c in s["cache"].items():
            if not encoding.startswith("uint8"):
                continue
            size, err = c["array_bytes"]["probabilities"], c["errors"]["probabilities"]["max_abs"]
            same = s["npz"]["savez_compressed_f32_grid"] / size
            original = s["npz"]["savez_compressed_f32_original"] / size
            met = "met" if min(same, original) >= TARGET_RATIO and err <= TARGET_ERROR else (
                "met vs nnU-Net's own npz only" if original >= TARGET_RATIO and err <= TARGET_ERROR else "NOT met"
            )
            ratios = f"{same:.0f}x (same grid) / {original:.0f}x (nnU-Net's npz)"
            lines.append(f"- {name}, {encoding}: {ratios} at max abs error {err:.5f}: {met}.")
    return lines


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.2f} MiB"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BraTS 2018 folder (real ground truth)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--reads", type=int, default=50, help="random 64³ patch reads per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results_format.json and RESULTS_format.md")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        print(f"skipped: real BraTS 2018 cases not found at {args.data}")
        return 0
    env = environment(argv)  # before the run: its load average and date describe the start
    rng = np.random.default_rng(args.seed)
    files = find_cases(args.data, require_labels=True)[: args.cases]
    per_setting: dict[str, list[dict]] = {f"{grid} {teacher}": [] for teacher in TEACHERS for grid in GRIDS}
    with tempfile.TemporaryDirectory() as tmp:
        for files_of_case in files:
            case = load_case(files_of_case)
            for teacher in TEACHERS:
                for grid in GRIDS:
                    row = measure_case(case, grid, teacher, args.reads, rng, Path(tmp))
                    per_setting[f"{grid} {teacher}"].append(row)
                    print(
                        f"{case.case_id} {grid} {teacher}: npz_c {mib(row['npz']['savez_compressed_f32_grid'])}, "
                        f"cache {mib(row['cache'][CHOSEN]['array_bytes']['probabilities'])}, "
                        f"patch {1000 * row['cache'][CHOSEN]['patch_median_s']:.1f} ms",
                        flush=True,
                    )
    results = {
        "environment": env,
        "teachers_background_logit": TEACHERS,
        "settings": {name: summarise(rows) for name, rows in per_setting.items()},
        "per_case": per_setting,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results_format.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "RESULTS_format.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
