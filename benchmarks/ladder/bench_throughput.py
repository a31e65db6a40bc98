"""Training throughput and peak memory of each ladder link kind, one fresh process per run.

The ladder itself runs every student in one process, so its memory column is the process's
peak and its steps/s depend on whatever else ran at the time. This measures the two link
kinds cleanly, each in its own ``distill train-student`` process on the ladder's cache:

* a link learning from the cache (variants a and b; the first link of c and d);
* a final link learning from a live assistant with KD + graph flow (variant d), started from
  the ladder's finished assistant (``share_first_link``), so only that link is trained.

Run after ``bench_phantom_ladder.py`` on an otherwise idle machine:

    python benchmarks/ladder/bench_throughput.py --work WORK --steps 150

Writes ``throughput.json`` and ``THROUGHPUT.md`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(work: Path, name: str, options: list[str]) -> dict:
    out = work / "throughput" / name
    command = [sys.executable, "-m", "distill", "train-student", "--cache", str(work / "cache"), "--out", str(out),
               "--val-cases", "0", "--batch-size", "2", "--seed", "0", *options]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    card = json.loads((out / "student.json").read_text())
    link = card["chain"][-1]
    return {"run": name, "link": link["name"], "steps": link["steps"], "steps_per_second": link["steps_per_second"],
            "peak_memory_mb": link["peak_memory_mb"],
            "wall_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> None:
    from distill.train.chain import share_first_link

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="The phantom ladder's --work folder")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=(100_000, 30_000))
    parser.add_argument("--markdown-only", action="store_true",
                        help="Only rewrite THROUGHPUT.md from throughput.json (and the live-teacher record)")
    args = parser.parse_args()
    if args.markdown_only:
        return write_markdown(json.loads((HERE / "throughput.json").read_text()))
    if args.work is None:
        parser.error("--work is required unless --markdown-only")
    work = args.work.resolve()
    common = ["--steps", str(args.steps), "--patch-size", str(args.patch)]
    rows = []
    for size in args.sizes:
        rows.append({"size": size, "kind": "from cache, KD",
                     **run(work, f"{size}_cache_kd", ["--params", str(size), *common])})  # fmt: skip
        target = work / "throughput" / f"{size}_live_graphflow"
        if not share_first_link(work / "students" / f"{size}_c_kd_chain", target) and not (target / "links").exists():
            raise SystemExit(f"{work / 'students' / f'{size}_c_kd_chain'}: no finished assistant; run the ladder first")
        rows.append({"size": size, "kind": "live assistant, KD + graph flow",
                     **run(work, f"{size}_live_graphflow", ["--params", str(size), "--assistants", "1",
                                                            "--graph-flow", "1.0", *common])})  # fmt: skip
        print(json.dumps(rows[-2:]), flush=True)
    result = {"command": f"python benchmarks/ladder/bench_throughput.py --work WORK --steps {args.steps} "
                         f"--patch {args.patch}",
              "cpus": os.cpu_count(), "rows": rows}  # fmt: skip
    (HERE / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result)


#: The real-data measurement of the nnU-Net teacher run live (benchmarks/realdata/live_teacher.py)
LIVE_TEACHER = HERE.parent / "realdata" / "live_teacher.json"


def write_markdown(result: dict) -> None:
    """THROUGHPUT.md from this benchmark's result and, when it has been run, the live-teacher cost."""
    lines = ["# Ladder training throughput", "",
             f"Command: `{result['command']}`; one `distill train-student` process per row, "
             f"batch 2, patch {result['command'].split('--patch ')[-1].split()[0]}³, {result['cpus']} CPU cores, "
             "nothing else running.", "",
             "| size | link | steps/s | peak MB (process) |", "|---|---|---|---|",
             *[f"| {r['size']:,} | {r['kind']} | {r['steps_per_second']:.2f} | {r['peak_memory_mb']:.0f} |"
               for r in result["rows"]]]  # fmt: skip
    if LIVE_TEACHER.is_file():
        live = json.loads(LIVE_TEACHER.read_text())
        cost = live["cost"]
        lines += ["", "## The nnU-Net teacher run live (real data)", "",
                  f"Command: `{live['command']}` (details in `benchmarks/realdata/LIVE_TEACHER.md`): students on "
                  "fold 0's cache of the real-data protocol, 48³ patches at 2 mm, batch 2, direct KD from the cache "
                  "against graph flow from fold 0's nnU-Net network run on every patch, alternating in one process.",
                  "", "| size | direct KD steps/s | live teacher + graph flow steps/s | cost ratio |",
                  "|---|---|---|---|"]  # fmt: skip
        for size, ratio in cost["ratio_live_over_direct"].items():
            direct = cost["median_seconds_per_step"][f"{size}_direct_kd"]
            with_live = cost["median_seconds_per_step"][f"{size}_live_graph_flow"]
            lines.append(f"| {size} | {1 / direct:.2f} | {1 / with_live:.2f} | {ratio:.2f}x |")
    (HERE / "THROUGHPUT.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
