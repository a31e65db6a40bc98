"""A worker started with exit_with_parent ends, with its own workers, when its parent is killed."""

import os
import signal
import subprocess
import sys
import time

import pytest

# the middle process starts the worker and waits; the worker starts a multiprocessing child of
# its own, writes both pids, then would sleep for a minute
WORKER = """
import multiprocessing, sys, time
from distill.core.lifecycle import exit_with_parent

def idle():
    time.sleep(60)

if __name__ == "__main__":
    exit_with_parent(int(sys.argv[1]), interval=0.1)
    helper = multiprocessing.get_context("spawn").Process(target=idle, daemon=True)
    helper.start()
    print(helper.pid, flush=True)
    time.sleep(60)
"""
MIDDLE = """
import os, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE, text=True)
print(worker.pid, worker.stdout.readline().strip(), flush=True)
worker.wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state where /proc exists
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process model")
def test_a_killed_parent_takes_the_worker_and_its_helpers_with_it():
    middle = subprocess.Popen([sys.executable, "-c", MIDDLE, WORKER], stdout=subprocess.PIPE, text=True)
    worker, helper = (int(pid) for pid in middle.stdout.readline().split())
    assert _alive(worker) and _alive(helper)
    middle.send_signal(signal.SIGKILL)  # what Python cannot clean up after
    middle.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_alive(worker) or _alive(helper)):
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(helper)
