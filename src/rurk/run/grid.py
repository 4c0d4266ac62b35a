"""The cell graph of `rurk run`, which of its cells the store already holds, and a list-scheduling estimate.

Per seed the graph is::

    pretrained (only when the scenario pre-trains)
      -> original, retrain                      the references (Original on S, Re-train on S_r)
        -> eval references                      metrics, attack curves and audit of the two reference rows
        -> unlearn M          (one per method)  the unlearned checkpoint of M
             -> eval M        (+ eval references)  metrics, attack curves and audit of row M

``eval M`` also waits for ``eval references`` because a row is computed by the very code of `rurk run`
(:func:`rurk.run.experiment.run_seed`), which visits the reference rows first; their records are then in the store
and cost nothing.

:func:`grid_status` tells which cells are finished *without computing anything*: the references by their keys
(:func:`rurk.pipeline.reference_keys`), every other cell by running the ordinary `rurk run` code
(:func:`~rurk.run.experiment.unlearned_model`, :func:`~rurk.run.experiment.run_seed`) against a read-only view of the
store that stops at the first record it would have to compute. So a cell counts as done exactly when the local
executor would skip it, whatever cells that code caches now or in the future.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

from ..pipeline import reference_keys, reference_models
from .dryrun import Missing, ProbeStore  # noqa: F401 (re-exported: the status below is decided against it)
from .experiment import run_seed, unlearned_model

#: Cell kinds in graph order.
KINDS = ("pretrained", "original", "retrain", "unlearn", "eval")
REFERENCES = "references"  # the name of the eval cell of the two reference rows


@dataclass
class Cell:
    id: str  # "seed 131 unlearn gd"
    kind: str  # one of KINDS
    seed: int
    name: str | None = None  # the method (unlearn, eval) or REFERENCES (eval of the reference rows)
    deps: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The kind of cell for costs: ``original``, ``unlearn gd``, ``eval references``, ..."""
        return self.kind if self.name is None else f"{self.kind} {self.name}"


def cell_graph(scenario, names: list[str], seeds: list[int], *, references_only: bool = False) -> list[Cell]:
    """Every cell of the grid, dependencies first (a topological order)."""
    cells: list[Cell] = []
    for s in seeds:
        pre = []
        if scenario.pretrain.dataset:
            cells.append(Cell(f"seed {s} pretrained", "pretrained", s))
            pre = [cells[-1].id]
        ref = [f"seed {s} original", f"seed {s} retrain"]
        cells += [Cell(ref[0], "original", s, deps=list(pre)), Cell(ref[1], "retrain", s, deps=list(pre))]
        if references_only:
            continue
        cells.append(Cell(f"seed {s} eval {REFERENCES}", "eval", s, REFERENCES, deps=list(ref)))
        for m in names:
            cells.append(Cell(f"seed {s} unlearn {m}", "unlearn", s, m, deps=list(ref)))
            cells.append(Cell(f"seed {s} eval {m}", "eval", s, m,
                              deps=[f"seed {s} unlearn {m}", f"seed {s} eval {REFERENCES}"]))
    return cells


# ------------------------------------------------------------------------------------------------ status
def _quiet(*_a, **_k) -> None:
    pass


def grid_status(scenario, prepared, store, cells: list[Cell], opts, spec, out_dir) -> set[str]:
    """The ids of the cells the store already holds (computes nothing; loads the finished checkpoints)."""
    done: set[str] = set()
    probe = ProbeStore(store)
    probe_opts = replace(opts, device="cpu")
    by_seed: dict[int, list[Cell]] = {}
    for c in cells:
        by_seed.setdefault(c.seed, []).append(c)
    for seed, group in by_seed.items():
        keys = reference_keys(scenario, prepared, seed)
        for c in group:
            if c.kind in ("pretrained", "original", "retrain") and store.load_meta(keys[c.kind]) is not None:
                done.add(c.id)
        if not all(k in done for k in (f"seed {seed} original", f"seed {seed} retrain",
                                        *([f"seed {seed} pretrained"] if "pretrained" in keys else []))):
            continue
        rest = [c for c in group if c.kind in ("unlearn", "eval")]
        if not rest:
            continue
        try:
            refs = reference_models(scenario, prepared, seed, probe, device="cpu", progress=False)
        except Missing:
            continue
        methods = [c.name for c in rest if c.kind == "eval" and c.name != REFERENCES]
        try:  # the usual case on a rerun: the whole seed is finished
            run_seed(scenario, prepared, seed, probe, methods, probe_opts, out_dir, spec=spec, progress=False,
                     log=_quiet)
            done.update(c.id for c in rest)
            continue
        except Missing:
            pass
        for c in rest:
            try:
                if c.kind == "unlearn":
                    unlearned_model(c.name, scenario, prepared, refs, seed, probe, log=_quiet,
                                    retry_failed=opts.retry_failed)
                elif f"seed {seed} unlearn {c.name}" in done or c.name == REFERENCES:
                    run_seed(scenario, prepared, seed, probe, [] if c.name == REFERENCES else [c.name], probe_opts,
                             out_dir, spec=spec, progress=False, log=_quiet)
                else:
                    continue
                done.add(c.id)
            except Missing:
                pass
    return done


# ------------------------------------------------------------------------------------------------ schedule
def list_schedule(cells: list[Cell], cost: dict[str, float], workers: int, done: set[str] = frozenset()) -> float:
    """The makespan of greedy list scheduling on ``workers`` identical workers: whenever a worker is free it
    takes the ready cell with the longest remaining path to the end (dependencies respected). Cells in
    ``done`` cost nothing. Returns seconds."""
    if workers < 1:
        raise ValueError(f"workers = {workers}: expected >= 1")
    todo = {c.id: c for c in cells if c.id not in done}
    if not todo:
        return 0.0
    children: dict[str, list[str]] = {i: [] for i in todo}
    indeg = {i: 0 for i in todo}
    for c in todo.values():
        for d in c.deps:
            if d in todo:
                children[d].append(c.id)
                indeg[c.id] += 1
    level: dict[str, float] = {}
    for c in reversed(cells):  # cells are topologically ordered
        if c.id in todo:
            level[c.id] = cost[c.id] + max((level[k] for k in children[c.id]), default=0.0)
    ready = [(-level[i], n, i) for n, i in enumerate(todo) if indeg[i] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []  # (finish time, id)
    free, now, order = workers, 0.0, {i: n for n, i in enumerate(todo)}
    while ready or running:
        while ready and free:
            _, _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + cost[i], i))
            free -= 1
        now, i = heapq.heappop(running)
        free += 1
        for k in children[i]:
            indeg[k] -= 1
            if indeg[k] == 0:
                heapq.heappush(ready, (-level[k], order[k], k))
    return now


def critical_path(cells: list[Cell], cost: dict[str, float], done: set[str] = frozenset()) -> float:
    """The longest chain of dependent cells (the wall time with unlimited workers)."""
    finish: dict[str, float] = {}
    for c in cells:
        start = max((finish.get(d, 0.0) for d in c.deps), default=0.0)
        finish[c.id] = start + (0.0 if c.id in done else cost[c.id])
    return max(finish.values(), default=0.0)
