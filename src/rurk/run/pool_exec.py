"""`rurk run --jobs K`: the grid's cells on K worker processes of this machine, one torch thread each.

Why processes: on a small CPU, K processes of one thread each finish a grid sooner than one process of K
threads (torch's intra-op threads idle at every small op and sync), and seeds are independent.

How, without a scheduler: every worker walks the whole grid through the ordinary local code
(:func:`rurk.run.experiment.run_seed`) on the shared run store, whose per-cell claims (:meth:`rurk.store.Store.claim`)
make sure no cell is computed twice — a worker that meets a cell another one is computing waits for it and
reads its result. To keep them from meeting, worker ``w`` starts at seed ``w`` (rotated seed order) and walks
the rows forwards (even ``w``) or backwards (odd ``w``), so two workers in the same seed meet in the middle.
When all have finished, :func:`rurk.run.experiment.run_experiment` assembles the summary from the store, as after
any other executor. The numbers equal a local run's at one torch thread (``--threads 1``): each cell is computed
by the same code at the same thread count, in whichever process.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from .. import workers
from ..pipeline import prepare, reference_model
from ..store import Store
from .experiment import run_seed


class WorkerFailed(RuntimeError):
    """A worker process ended with an error (its cells that finished are in the store)."""


class ProcessExecutor:
    """The executor of ``--jobs K`` (see the module docstring)."""

    #: the workers print their own progress lines; the assembly pass after them stays quiet
    quiet_assembly = True

    def __init__(self, jobs: int, threads: int = 1):
        if jobs < 2:
            raise ValueError(f"--jobs = {jobs}: ProcessExecutor needs at least 2 workers")
        self.jobs, self.threads = jobs, threads

    def fill(self, scenario, opts, store, prepared, seeds, names, spec, out_dir, *, progress=None, log=print) -> None:
        seeds, names = list(seeds), list(names)
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: torch's threads set before any work
        procs = []
        for w in range(self.jobs):
            order = seeds[w % len(seeds):] + seeds[: w % len(seeds)]
            rows = names if w % 2 == 0 else names[::-1]
            p = workers.process(ctx, f"rurk-worker-{w}", _worker, w, scenario, opts, str(store.root), order, rows,
                                spec, str(out_dir), self.threads)
            p.start()
            procs.append(p)
        monitor = Progress(store, scenario.name, prepared.split.digest(), seeds, 2 + len(names), log)
        try:
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=monitor.every)
                monitor.tick()
        finally:
            for p in procs:  # on Ctrl-C or an error here: no orphan keeps computing
                if p.is_alive():
                    p.terminate()
                    p.join()
        bad = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
        if bad:
            raise WorkerFailed(f"{', '.join(bad)} failed; finished cells are kept in {store.root} — run the same "
                               "command again to continue")


class Progress:
    """The parent's view of a ``--jobs`` run: every :attr:`every` seconds, how many of the grid's rows are
    finished (their evaluation is in the store: read with one query, nothing loaded), how many are left, and an
    ETA from the rate so far — a line only when something changed."""

    every = 15.0

    def __init__(self, store, scenario: str, split: str, seeds: list[int], rows_per_seed: int, log):
        self.store, self.scenario, self.split, self.seeds, self.log = store, scenario, split, list(seeds), log
        self.total = rows_per_seed * len(self.seeds)
        self.t0, self.start, self.last = time.monotonic(), self.done(), None

    def done(self) -> int:
        return min(self.store.count("eval", self.scenario, self.seeds, self.split), self.total)

    def tick(self) -> None:
        done = self.done()
        if done == self.last:
            return
        self.last = done
        new, elapsed = done - self.start, time.monotonic() - self.t0
        eta = "" if new <= 0 or done >= self.total else f", about {(self.total - done) * elapsed / new / 60:.0f} min left"
        self.log(f"progress: {done} of {self.total} rows finished ({self.start} from the store){eta}")


def _worker(w, scenario, opts, root, seeds, names, spec, out_dir, threads) -> None:
    """One worker (started by :func:`rurk.workers.process`: it dies with its parent, Ctrl-C is the parent's)."""
    os.environ["RURK_PROGRESS"] = "0"  # K workers' progress bars would overwrite each other; rows are printed
    import torch

    torch.set_num_threads(threads)
    store = Store(root)
    prepared = prepare(scenario, store)

    def log(msg: str) -> None:
        print(f"[worker {w}]{msg}", flush=True)

    if not scenario.pretrain.dataset:
        train_references(scenario, prepared, seeds, store, opts.device, w, log=log)
    for seed in seeds:
        run_seed(scenario, prepared, seed, store, names, opts, Path(out_dir), spec=spec, progress=False, log=log,
                 log_cached=False)


def train_references(scenario, prepared, seeds, store, device, w: int, log=None) -> None:
    """Train every seed's Original and Re-train first, skipping a model another worker is training: the grid's
    rows need them, and a worker that met another's reference claim used to wait for it (three seeds on two
    workers: one idled while the other trained the third seed's two models). Worker ``w`` takes the seeds in its
    rotated order, Original first when ``w`` is even, Re-train first when odd, so two workers start on different
    models; whatever the order, each model is the same (same key, seed and code)."""
    kinds = ("original", "retrain") if w % 2 == 0 else ("retrain", "original")
    for seed in seeds:
        for kind in kinds:  # ``log`` hears when a model starts training and when it is done (seed, model, seconds)
            reference_model(kind, scenario, prepared, seed, store, device=device, progress=False, wait=False, log=log)
