"""A worker process that ends when the process that started it is gone.

A long child (the nnU-Net teacher build runs its trainer in one) outlives a parent killed by a
signal it cannot catch: SIGKILL, or SIGTERM under Python's default handler. Left running, the
orphan keeps training into the same folders as the next attempt, and shares the cores with it.
:func:`exit_with_parent` starts a daemon thread in the child that watches its parent's pid and,
once the child has been re-parented, stops the child's own multiprocessing workers (nnU-Net's
augmentation processes) and exits at once: whatever checkpoint the trainer last wrote stays,
so the next attempt continues from it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

#: Exit status of a worker that ended because its parent did.
ORPHANED_EXIT_CODE = 3


def exit_with_parent(parent: int | None = None, interval: float = 1.0) -> threading.Thread:
    """Watch the parent every ``interval`` seconds from a daemon thread; returns the thread.

    ``parent``: the pid the parent gave the child (its own ``os.getpid()``); without it the
    parent is read here, which misses a parent that died while the child was starting up.
    """
    expected = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(interval)
        try:
            for worker in multiprocessing.active_children():
                worker.kill()
        finally:
            os._exit(ORPHANED_EXIT_CODE)  # no clean-up: the trainer's last checkpoint is what counts

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
