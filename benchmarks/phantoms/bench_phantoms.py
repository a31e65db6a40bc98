"""Benchmark: seconds to generate (and separately to write) one BraTS-like phantom.

Times ``make_phantom`` per case at 2 mm (the demo/CI default), 1 mm and 64³, the NIfTI
writing of one case (four int16 modalities + uint8 labels, gzip), and an end-to-end
``write_phantoms`` run. Template loading happens once per process and is reported on
its own, outside the per-case times.

    python benchmarks/phantoms/bench_phantoms.py            # writes results.json + RESULTS.md here
    python benchmarks/phantoms/bench_phantoms.py --cases-2mm 3 --cases-1mm 1 --out scratch/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy

from distill.data.nifti import write_nifti
from distill.data.phantoms import MODALITIES, PhantomConfig, case_seed, make_phantom, preload_templates, write_phantoms

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TARGET_SECONDS_2MM = 2.0


def percentile_summary(seconds: list[float]) -> dict[str, float]:
    """Median, 90th percentile, min and max of per-case times, rounded to ms."""
    values = np.asarray(seconds, dtype=np.float64)
    return {
        "median_s": round(float(np.median(values)), 3),
        "p90_s": round(float(np.percentile(values, 90)), 3),
        "min_s": round(float(values.min()), 3),
        "max_s": round(float(values.max()), 3),
    }


def write_case_files(phantom, folder: Path) -> int:
    """Write one case as BraTS 2021 files into ``folder``; returns the bytes on disk."""
    paths = [write_nifti(folder / f"case_{m}.nii.gz", phantom.images[m], phantom.affine) for m in MODALITIES]
    paths.append(write_nifti(folder / "case_seg.nii.gz", phantom.labels, phantom.affine))
    return sum(p.stat().st_size for p in paths)


def time_resolution(name: str, config: PhantomConfig, n_cases: int, seed: int) -> dict:
    """Generate and write ``n_cases`` phantoms with ``config``; per-case times for each step."""
    load_s = preload_templates(config)
    generate, write, sizes, kinds = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(n_cases):
            start = time.perf_counter()
            phantom = make_phantom(case_seed(seed, index), config)
            generate.append(time.perf_counter() - start)
            start = time.perf_counter()
            sizes.append(write_case_files(phantom, Path(tmp) / f"case{index}"))
            write.append(time.perf_counter() - start)
            kinds.append(phantom.kind)
            timing = f"generate {generate[-1]:.2f} s, write {write[-1]:.2f} s"
            print(f"{name} case {index}: {phantom.kind:<16} {timing}", flush=True)
    return {
        "grid_shape": list(config.grid_shape),
        "voxel_size_mm": [round(s, 4) for s in config.voxel_size],
        "n_cases": n_cases,
        "template_preparation_s": round(load_s, 3),
        "generate": percentile_summary(generate),
        "write": percentile_summary(write),
        "generate_per_case_s": [round(s, 3) for s in generate],
        "mib_per_case": round(float(np.mean(sizes)) / 2**20, 2),
        "kinds": kinds,
    }


def time_end_to_end(config: PhantomConfig, n_cases: int, seed: int) -> dict:
    """``write_phantoms`` in nnU-Net layout: the library's own seconds per case (generate + write)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = write_phantoms(Path(tmp), n_cases, seed, config, layout="nnunet", progress=False)
    return {"layout": "nnunet", "n_cases": n_cases, "seconds_per_case": round(result.seconds_per_case or 0.0, 3)}


def environment(argv: list[str]) -> dict:
    script = Path(__file__).resolve().relative_to(REPO_ROOT)
    return {
        "command": shlex.join(["python", str(script), *argv]),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# Phantom generation benchmark",
        "",
        f"Command: `{env['command']}`  ",
        f"Python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, {env['cpu_count']} CPUs "
        f"(load average {env['load_average_at_start'][0]} at start; the machine is shared), {env['date_utc']}.",
        "",
        f"One-off template loading (import nilearn, read the MNI152 maps): {results['template_load_s']:.2f} s; "
        "blurring them for a coarser grid is shown per row and also happens once per process.",
        "",
        "| grid | voxel (mm) | cases | generate median (s) | generate p90 (s) | write median (s) | MiB/case "
        "| template prep (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["resolutions"].items():
        lines.append(
            f"| {name} {'x'.join(map(str, row['grid_shape']))} | {' x '.join(f'{s:g}' for s in row['voxel_size_mm'])} "
            f"| {row['n_cases']} | {row['generate']['median_s']:.2f} | {row['generate']['p90_s']:.2f} "
            f"| {row['write']['median_s']:.2f} | {row['mib_per_case']:.1f} | {row['template_preparation_s']:.2f} |"
        )
    e2e = results["end_to_end_2mm"]
    verdict = "meets" if results["resolutions"]["2mm"]["generate"]["p90_s"] <= TARGET_SECONDS_2MM else "misses"
    lines += [
        "",
        f"End to end (`write_phantoms`, {e2e['layout']} layout, 2 mm, {e2e['n_cases']} cases): "
        f"{e2e['seconds_per_case']:.2f} s per case, generation and gzip-compressed writing together.",
        "",
        f"Target: at most {TARGET_SECONDS_2MM:g} s to generate one 2 mm case; the p90 {verdict} it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-2mm", type=int, default=10)
    parser.add_argument("--cases-1mm", type=int, default=3)
    parser.add_argument("--cases-64", type=int, default=5)
    parser.add_argument("--cases-end-to-end", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and RESULTS.md")
    args = parser.parse_args(argv)

    results: dict = {"environment": environment(argv)}
    results["template_load_s"] = round(preload_templates(), 3)
    results["resolutions"] = {
        "2mm": time_resolution("2mm", PhantomConfig(spacing_mm=2.0), args.cases_2mm, args.seed),
        "1mm": time_resolution("1mm", PhantomConfig(spacing_mm=1.0), args.cases_1mm, args.seed),
        "64cube": time_resolution("64cube", PhantomConfig(shape=(64, 64, 64)), args.cases_64, args.seed),
    }
    results["end_to_end_2mm"] = time_end_to_end(PhantomConfig(spacing_mm=2.0), args.cases_end_to_end, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
