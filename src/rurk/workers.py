"""Worker processes that never outlive their parent and leave Ctrl-C to it (``rurk run --jobs``, ``rurk tune --jobs``).

A spawned worker first re-imports its parent's main module and unpickles its arguments, and only then runs any
code of ours; rurk's arguments (scenarios, run options) import torch when they are unpickled — seconds, and
tens of seconds on a loaded machine. A parent killed in that window used to leave workers that computed on for
their whole start-up and beyond. So work travels as bytes, pickled here and unpickled there only after
:func:`arm`:

1. Linux is asked to send the worker SIGTERM the moment its parent dies (``PR_SET_PDEATHSIG``), and a parent
   that died before that (while the worker was starting) ends the worker at once;
2. SIGINT is ignored: Ctrl-C reaches the whole process group, and the parent, which gets it too, ends its workers
   itself — a worker that died of it mid-trial used to be reported as a failed trial.

The command line's parser imports nothing heavy (:mod:`rurk.cli`), so the worker's re-import of the main module
is light too. Pool workers (``rurk tune``) and workers elsewhere than Linux watch their parent from a thread
instead (:func:`arm`).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

#: how often a watching worker looks whether its parent is still there (seconds)
WATCH_EVERY = 0.25


def arm(parent: int, watch: bool = False) -> None:
    """Die with ``parent`` (see the module docstring) and leave SIGINT to it. ``watch``: instead of the
    parent-death signal, a daemon thread that ends the process within :data:`WATCH_EVERY` s of the parent's
    death — for pool workers, which a pool may start from any of the parent's threads, and Linux sends the signal
    when the starting *thread* ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if watch or not sys.platform.startswith("linux"):
        import threading
        import time

        def watchdog() -> None:
            while os.getppid() == parent:
                time.sleep(WATCH_EVERY)
            os._exit(1)

        threading.Thread(target=watchdog, name="rurk-parent-watch", daemon=True).start()
    else:
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


def payload(fn, *args) -> bytes:
    """``fn(*args)`` as bytes for :func:`run` / :func:`init` (``fn`` a module-level function)."""
    return pickle.dumps((fn, args))


def run(parent: int, blob: bytes, watch: bool = False):
    """A worker process's target: :func:`arm`, then unpickle and call the payload."""
    arm(parent, watch)
    fn, args = pickle.loads(blob)  # noqa: S301 — our own bytes, from the parent process, never a file
    return fn(*args)


def process(ctx, name: str, fn, *args):
    """A process of ``ctx`` (e.g. ``multiprocessing.get_context("spawn")``) that runs ``fn(*args)`` after
    :func:`arm` (not started)."""
    return ctx.Process(target=run, name=name, args=(os.getpid(), payload(fn, *args)))


def pool_initializer(fn, *args) -> dict:
    """``initializer`` and ``initargs`` for a ``ProcessPoolExecutor`` whose initializer is ``fn(*args)``, run after
    :func:`arm`: ``ProcessPoolExecutor(..., **pool_initializer(fn, *args))``."""
    return {"initializer": run, "initargs": (os.getpid(), payload(fn, *args), True)}
