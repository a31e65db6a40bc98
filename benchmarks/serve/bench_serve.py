"""`distill serve` on loopback against `distill predict` in process, side by side in one run.

    .venv/bin/python benchmarks/serve/bench_serve.py --data ../shared/data/brats18 \\
        --package benchmarks/realdata/packages/brats-30k --requests 20 --seconds 30

Measures, on one real 1 mm case:

1. ``/segment`` end to end (client-side latency, NIfTI bytes in and out) and per stage (the
   ``Server-Timing`` header), interleaved request by request with what ``distill predict`` does
   per case in process (read the four files, ``Predictor.segment``, write the label map), so a
   change in background load hits both alike; the HTTP overhead is the ratio of the medians;
2. requests per second with 1, 2 and 4 concurrent clients for ``--seconds`` each against the
   default admission (1 running + 2 queued), and the share of 503 (busy) answers; a client that
   gets 503 waits as its ``Retry-After`` says before trying again;
3. ``/segment/raw`` (the case preprocessed by the package's own preprocessing, as .npy) against
   ``Predictor.infer`` plus the same thresholding in process: the floor HTTP adds.

Writes ``results.json`` beside this file (or ``--out``), with the machine's load average and the
busiest other processes during the run: on a shared machine the figures are only comparable
within one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODALITIES = ("t1", "t1ce", "t2", "flair")


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
            "min_s": ordered[0]}  # fmt: skip


class Server:
    """`distill serve` in a subprocess on a free loopback port (``--port 0``)."""

    def __init__(self, package: Path, threads: int, extra: list[str]) -> None:
        command = [sys.executable, "-m", "distill", "serve", str(package), "--port", "0", "--threads", str(threads),
                   "--request-timeout", "600", *extra]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stderr], daemon=True).start()
        deadline = time.monotonic() + 300
        self.url = None
        while self.url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith('{"event": "listening"'):
                self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        assert self.url, "the server did not start"
        while httpx.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def server_timing(header: str) -> dict[str, float]:
    return {name: float(value) / 1000 for name, value in (part.split(";dur=") for part in header.split(", "))}


def busiest_processes() -> list[str]:
    import psutil

    rows = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_percent"]):
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(1.0)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cpu = proc.cpu_percent(None)
            if cpu > 5 and proc.pid != os.getpid():
                rows.append((cpu, " ".join(proc.info["cmdline"] or [])[:140]))
        except psutil.Error:
            continue
    return [f"{cpu:.0f}% {cmd}" for cpu, cmd in sorted(rows, reverse=True)[:5]]


def load_run(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> dict:
    statuses, latencies, lock = [], [], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=600) as session:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                headers = {"content-type": content_type}
                response = session.post(url + "/segment", content=body, headers=headers)
                with lock:
                    statuses.append(response.status_code)
                    latencies.append(time.perf_counter() - start)
                if response.status_code == 503:  # a well-behaved client: waits as Retry-After says
                    time.sleep(float(response.headers.get("retry-after", "1")))

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    ok = [t for t, s in zip(latencies, statuses) if s == 200]
    return {"clients": clients, "seconds": elapsed, "ok": len(ok), "busy_503": statuses.count(503),
            "other": len(statuses) - len(ok) - statuses.count(503), "ok_per_s": len(ok) / elapsed,
            "busy_share": statuses.count(503) / max(1, len(statuses)),
            "ok_latency": stats(ok) if ok else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "brats18")
    parser.add_argument("--case", default="Brats18_2013_11_1")
    parser.add_argument("--package", type=Path, default=REPO / "benchmarks" / "realdata" / "packages" / "brats-30k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    from distill.data.case import load_case
    from distill.data.discovery import find_cases
    from distill.data.nifti import write_nifti
    from distill.infer.postprocess import postprocess_regions
    from distill.infer.predictor import Predictor

    files = next(f for f in find_cases(args.data) if f.case_id == args.case)
    upload = {m: (f"{m}.nii.gz", Path(files.images[m]).read_bytes(), "application/gzip") for m in MODALITIES}
    request = httpx.Request("POST", "http://x/segment", files=upload)
    body, content_type = request.read(), request.headers["content-type"]
    predictor = Predictor.from_package(args.package, "onnxruntime", threads=args.threads)
    load_before = os.getloadavg()
    beside = busiest_processes()
    samples: list[str] = []
    sampling = threading.Event()

    def sample() -> None:  # what else used the CPU during the run, every ~15 s
        while not sampling.wait(15):
            samples.extend(busiest_processes())

    threading.Thread(target=sample, daemon=True).start()
    server = Server(args.package, args.threads, [])
    package = str(args.package.resolve().relative_to(REPO))
    report: dict = {"case": args.case, "package": package, "backend": "onnxruntime",
                    "threads": args.threads, "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_before": load_before,
                    "busiest_other_processes": beside}  # fmt: skip
    try:
        with httpx.Client(timeout=600) as session, tempfile.TemporaryDirectory() as tmp:
            post = lambda: session.post(server.url + "/segment", content=body, headers={"content-type": content_type})  # noqa: E731
            for _ in range(2):  # warm both paths
                post()
                predictor.segment(load_case(files, with_labels=False).images, np.eye(4))
            http, cli, stages, cli_stages = [], [], [], []
            for i in range(args.requests):
                start = time.perf_counter()
                response = post()
                http.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text[:300]
                stages.append(server_timing(response.headers["server-timing"]))
                start = time.perf_counter()
                case = load_case(files, with_labels=False)  # what distill predict does per case
                read_at = time.perf_counter()
                result = predictor.segment(case.images, case.affine, label_convention=predictor.package.convention.name)
                segmented_at = time.perf_counter()
                write_nifti(Path(tmp) / f"{i}.nii.gz", result.labels, case.affine)
                cli.append(time.perf_counter() - start)
                written = time.perf_counter() - segmented_at
                cli_stages.append({"read": read_at - start, **result.timings, "write": written})
                if i == 0:
                    assert (Path(tmp) / "0.nii.gz").read_bytes() == response.content, "HTTP and predict differ"
            report["segment"] = {"http": stats(http), "predict_in_process": stats(cli),
                                 "http_over_predict_p50": statistics.median(http) / statistics.median(cli),
                                 "server_stages_p50_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
                                 "predict_stages_p50_s": {k: statistics.median(s[k] for s in cli_stages)
                                                          for k in cli_stages[0]}}  # fmt: skip

            prepared = predictor.prepare(case.images, case.affine)
            raw = io.BytesIO()
            np.save(raw, prepared.images.astype(np.float32))
            raw_body = raw.getvalue()
            thresholds = np.asarray(predictor.package.thresholds, np.float32).reshape(-1, 1, 1, 1)
            raw_http, raw_local = [], []
            for _ in range(args.requests):
                start = time.perf_counter()
                response = session.post(server.url + "/segment/raw", content=raw_body,
                                        headers={"content-type": "application/x-npy"})  # fmt: skip
                raw_http.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text[:300]
                start = time.perf_counter()
                probabilities, _ = predictor.infer(prepared.images)
                spacing = predictor.package.preprocess_config.target_spacing
                regions = postprocess_regions(probabilities > thresholds, predictor.postprocess, spacing=spacing)
                predictor.package.convention.from_regions(regions)
                raw_local.append(time.perf_counter() - start)
            floor = statistics.median(raw_http) - statistics.median(raw_local)
            report["segment_raw"] = {"shape": list(prepared.images.shape), "body_bytes": len(raw_body),
                                     "http": stats(raw_http), "in_process": stats(raw_local),
                                     "http_minus_in_process_p50_s": floor}  # fmt: skip
        report["throughput"] = [load_run(server.url, body, content_type, clients, args.seconds)
                                for clients in (1, 2, 4)]  # fmt: skip
    finally:
        server.stop()
    sampling.set()
    report["load_average_after"] = os.getloadavg()
    beside_during = {}
    for row in samples:  # "<cpu>% <command>": keep each command's highest share
        cpu, command = row.split("% ", 1)
        if "bench_serve.py" not in command and "distill serve" not in command and " serve " not in command:
            beside_during[command] = max(float(cpu), beside_during.get(command, 0.0))
    report["busiest_other_processes_during"] = [f"{cpu:.0f}% {cmd}" for cmd, cpu in
                                                sorted(beside_during.items(), key=lambda kv: -kv[1])[:8]]  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    seg = report["segment"]
    print(f"/segment p50 {seg['http']['p50_s']:.2f} s vs predict {seg['predict_in_process']['p50_s']:.2f} s: "
          f"x{seg['http_over_predict_p50']:.3f}")  # fmt: skip
    print(json.dumps(report["throughput"], indent=1))


if __name__ == "__main__":
    main()
