"""``--executor ray``: the cells of `rurk run` and the trials of `rurk tune` as Ray tasks; the driver is the
store's only writer.

The graph (:mod:`rurk.run.grid`): per seed the references (pre-trained network, Original, Re-train), then each
method's unlearning, then each row's evaluation (metrics, attack curves, audit). Every cell is one Ray task that
declares its resources (``--cpus-per-task``, ``--gpus-per-task``, fractions allowed) and is retried by Ray when
its worker dies (``--max-retries``).

**Workers compute with the local code.** A task builds a scratch store in a temporary directory, installs the
records and checkpoints it depends on (sent through Ray's object store), and runs the very function the local
executor runs for that cell — :func:`rurk.pipeline.pretrained_model` / :func:`~rurk.pipeline.reference_model`,
:func:`rurk.run.experiment.unlearned_model`, :func:`rurk.run.experiment.run_seed` for one row — against it. What the
scratch store gained (records, checkpoints as CPU state dicts, the row's audit CSV and per-sample files) is the
task's return value. The cache keys are therefore computed by the same code as locally, and a store filled by one
executor is reused by the other.

**Data.** The split's tensors (retain, forget, val, test — a few MB for the shipped scenarios) travel through the
object store once per run, so workers need no dataset files and no shared filesystem. Exception: a scenario that
pre-trains on a *different* data source than its own (none of the shipped ones) loads that source on the worker,
whose node then needs it. Every node needs the same rurk and torch versions installed.

**Commit protocol (driver).** For each finished task the driver checks the result — records of the kinds that
cell produces, for its seed and scenario; every checkpoint loads strictly into the scenario's architecture (the
expected keys and shapes) and has finite floating-point weights — and then commits it with the ordinary store
API, under the same per-cell claims as a local run: each checkpoint (``Store.save_model``: atomic, ``model.json``
last), then its record, then the other records (``Store.put``), then the files (atomic writes). A killed driver
loses at most the cell it was committing; a cell counts as done only by its record.

**Resume.** Before submitting anything the driver asks :func:`rurk.run.grid.grid_status` which cells the store
already holds (the local code in a dry run); those are never resubmitted. A stopped run is simply started again.

**Results are the local executor's.** After the store is filled, :func:`rurk.run.experiment.run_experiment`
assembles the summary with the local code from the store alone. With the same thread count per process the
numbers are bit-identical to a local run (tasks use ``--cpus-per-task`` torch threads, default 1; float
reductions on CPU and cuDNN kernels on GPU may round differently with other thread counts or devices).
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..audit.metric_specs import cell_failure
from ..config import ConfigError
from ..data.tensordata import TensorData
from ..pipeline import Prepared, new_model, reference_keys
from ..store import atomic_write, cache_key, canonical_json
from ..train import progress_enabled
from .experiment import unlearned_key
from .grid import REFERENCES, Cell, cell_graph, grid_status
from .ray_tasks import (
    FAULT_ENV,
    LAST_RUN,
    STOP_ENV,
    _read_checkpoint,
    cell_task,
    import_ray,
    trial_task,
)
from .study import TrialFailed


# ------------------------------------------------------------------------------------------------ driver side
def shippable(prepared):
    """The Prepared a worker needs: the split's tensors, without the source's own train/test sets (kept only
    when the scenario pre-trains on its own source)."""
    src, sc = prepared.source, prepared.scenario

    def empty(td):
        return TensorData(td.x.new_zeros((0, *td.x.shape[1:])), td.y.new_zeros(0), td.index.new_zeros(0))

    keep_train = bool(sc.pretrain.dataset) and sc.pretrain.dataset == sc.data.dataset
    slim = replace(src, train=src.train if keep_train else empty(src.train), test=empty(src.test))
    return Prepared(sc, slim, prepared.split, prepared.data)


class TaskFailed(RuntimeError):
    """Cells that failed on the cluster (after Ray's retries); finished cells are in the store."""


@dataclass
class RayExecutor:
    """Run cells as Ray tasks. ``address``: None = start a local Ray instance on this machine's cores and GPUs;
    ``"auto"`` or ``"ray://host:10001"`` = join a running cluster. ``init`` = extra ``ray.init`` arguments for a
    local instance (e.g. ``num_cpus``, ``object_store_memory``)."""

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    init: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (isinstance(self.cpus_per_task, (int, float)) and math.isfinite(self.cpus_per_task)
                and self.cpus_per_task > 0):
            raise ConfigError(f"--cpus-per-task = {self.cpus_per_task}: expected a number > 0")
        if not (isinstance(self.gpus_per_task, (int, float)) and math.isfinite(self.gpus_per_task)
                and self.gpus_per_task >= 0):
            raise ConfigError(f"--gpus-per-task = {self.gpus_per_task}: expected a number >= 0 (fractions allowed)")
        if self.gpus_per_task > 1 and self.gpus_per_task != int(self.gpus_per_task):
            raise ConfigError(f"--gpus-per-task = {self.gpus_per_task}: expected a fraction <= 1 or a whole number")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"--max-retries = {self.max_retries}: expected an integer >= 0")
        if self.address is not None and not str(self.address).strip():
            raise ConfigError("--address = '': expected auto, ray://HOST:PORT or HOST:PORT")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_task))

    def check_device(self, device: str) -> None:
        if str(device).startswith("cuda") and self.gpus_per_task == 0:
            raise ConfigError(f"--device {device} with --executor ray needs --gpus-per-task > 0 (e.g. 1 or 0.5)")

    @contextmanager
    def session(self):
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            kw = {"log_to_driver": False} | ({} if self.address else {"include_dashboard": False, **self.init})
            unreachable = _unreachable(self.address) if self.address else None
            if unreachable:  # Ray itself would retry for minutes
                raise RuntimeError(f"--address {self.address}: no Ray cluster answers there ({unreachable})")
            try:
                ray.init(address=self.address, **kw)
            except Exception as e:  # ConnectionError, a bad address, ...
                where = f"--address {self.address}" if self.address else "a local Ray instance"
                raise RuntimeError(f"{where}: Ray did not start: {type(e).__name__}: {e}") from None
            started = True
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def _options(self, name: str) -> dict:
        return dict(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                    retry_exceptions=False, name=name[:100])

    # -------------------------------------------------------------------------------- rurk run
    def fill(self, scenario, opts, store, prepared, seeds, names, spec, out_dir, *, progress=None, log=print,
             references_only: bool = False) -> None:
        """Compute every cell of the grid the store lacks as Ray tasks and commit the results to ``store``."""
        self.check_device(opts.device)
        cells = cell_graph(scenario, names, list(seeds), references_only=references_only)
        done = grid_status(scenario, prepared, store, cells, opts, spec, out_dir)
        LAST_RUN.clear()
        LAST_RUN.update(done=sorted(done), submitted=[], failed=[])
        todo = [c for c in cells if c.id not in done]
        if not todo:
            return
        with self.session() as ray:
            _Grid(self, ray, scenario, opts, store, prepared, spec, out_dir, cells, done, progress, log).run()

    # -------------------------------------------------------------------------------- rurk tune
    @contextmanager
    def objective(self, objective, store, *, device: str):
        """A callable with the local objective's contract, ``params -> (value, per-split values)``, that runs
        each call as one Ray task (concurrent calls run concurrently). ``objective`` is the local
        :class:`rurk.run.tune._Objective`; its tuning splits (data and reference checkpoints from ``store``) go to
        the object store once."""
        self.check_device(device)
        with self.session() as ray:
            parts = []
            for prepared, refs, _udata, ref in objective.splits:
                weights = {k: ray.put(_read_checkpoint(store, k)) for k in refs.keys.values()}
                parts.append({"prepared": ray.put(shippable(prepared)), "weights": weights, "ref": ref})
            fixed = {"scenario": objective.scenario, "method": objective.method, "base": objective.base,
                     "seed": objective.seed, "threads": self.threads, "device": device,
                     "objective": objective.objective}
            token, remote = uuid.uuid4().hex, ray.remote(trial_task)

            def call(params: dict):
                out = ray.get(remote.options(**self._options(f"rurk trial {objective.method}")).remote(
                    token, fixed, parts, params))
                if "error" in out:
                    raise _remote_error(*out["error"])
                return out["value"], out["gaps"]

            yield call


def _unreachable(address: str) -> str | None:
    """Why HOST:PORT (or ray://HOST:PORT) does not accept a TCP connection within 5 s; None when it does or when
    the address is not of that form (``auto``: Ray finds the cluster itself)."""
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _remote_error(name: str, msg: str) -> Exception:
    if name == "TrialFailed":
        return TrialFailed(msg)
    return type(name, (RuntimeError,), {})(msg)  # the same "Type: message" as a local failure


class _Grid:
    """One fill: submit ready cells, commit finished ones, until the graph is done or blocked by failures."""

    def __init__(self, ex: RayExecutor, ray, scenario, opts, store, prepared, spec, out_dir, cells, done,
                 progress, log):
        self.ex, self.ray, self.scenario, self.opts, self.store, self.spec = ex, ray, scenario, opts, store, spec
        self.prepared, self.out_dir, self.log = prepared, Path(out_dir), log
        self.cells = {c.id: c for c in cells}
        self.done, self.failed, self.blocked = set(done), {}, set()
        self.show = progress_enabled(progress)
        self.ref_keys = {s: reference_keys(scenario, prepared, s) for s in {c.seed for c in cells}}
        self.records = {}  # seed -> {(kind, key): record} of this scenario
        for r in store.records():
            if r["scenario"] == scenario.name and r["seed"] in self.ref_keys:
                self.records.setdefault(r["seed"], {})[(r["kind"], r["key"])] = r
        self.weights: dict[str, object] = {}  # checkpoint key -> ObjectRef
        self.prepared_ref = ray.put(shippable(prepared))
        self.remote = ray.remote(cell_task)
        fault = os.environ.get(FAULT_ENV)
        self.fault = tuple(fault.split("@", 1)) if fault and "@" in fault else None
        stop = os.environ.get(STOP_ENV)
        self.stop_after = int(stop) if stop else None
        self.committed = 0

    # ---------------------------------------------------------------------------- the loop
    def run(self) -> None:
        from tqdm.auto import tqdm

        todo = [c for c in self.cells.values() if c.id not in self.done]
        bar = tqdm(total=len(self.cells), initial=len(self.cells) - len(todo), desc=f"{self.scenario.name} cells",
                   unit="cell", disable=not self.show, dynamic_ncols=True)
        self.bar = bar
        in_flight: dict = {}
        try:
            while True:
                for c in todo:
                    if c.id in self.done or c.id in self.failed or c.id in self.blocked or c.id in in_flight.values():
                        continue
                    if any(d in self.failed or d in self.blocked for d in c.deps):
                        self.blocked.add(c.id)
                        continue
                    if all(d in self.done for d in c.deps):
                        in_flight[self._submit(c)] = c.id
                if not in_flight:
                    break
                ready, _ = self.ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    cell = self.cells[in_flight.pop(ref)]
                    self._finish(cell, ref)
                    if self.stop_after is not None and self.committed >= self.stop_after:
                        raise KeyboardInterrupt
        except BaseException:
            for ref in in_flight:
                self.ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        if self.failed or self.blocked:
            lines = [f"{cid}: {why}" for cid, why in self.failed.items()]
            raise TaskFailed(f"{len(self.failed)} cell{'s' * (len(self.failed) != 1)} failed on Ray "
                             f"({len(self.blocked)} more not started): " + "; ".join(lines)
                             + " — finished cells are in the store; rerun to continue")

    def _say(self, line: str) -> None:
        if self.show:
            self.bar.write(line)

    def _submit(self, c: Cell):
        job = {"id": c.id, "kind": c.kind, "seed": c.seed, "name": c.name, "scenario": self.scenario,
               "opts": self.opts, "spec": self.spec, "threads": self.ex.threads}
        records = [r for r in self.records.get(c.seed, {}).values() if r["kind"] != "task"] \
            if c.kind in ("unlearn", "eval") else []
        ref = self.remote.options(**self.ex._options(f"rurk {c.id}")).remote(
            job, self.prepared_ref, records, self._weights_for(c), self.fault)
        LAST_RUN["submitted"].append(c.id)
        return ref

    def _weights_for(self, c: Cell) -> dict:
        keys = self.ref_keys[c.seed]
        need = []
        if c.kind in ("original", "retrain") and "pretrained" in keys:
            need = [keys["pretrained"]]
        elif c.kind in ("unlearn", "eval"):
            need = list(keys.values())
            if c.kind == "eval" and c.name != REFERENCES:
                need.append(self._unlearned_key(c))
        out = {}
        for k in need:
            if k not in self.weights:
                ck = _read_checkpoint(self.store, k)
                if ck is None:
                    continue  # e.g. a failed method has no checkpoint; the cell's code knows what to do
                self.weights[k] = self.ray.put(ck)
            out[k] = self.weights[k]
        return out

    def _unlearned_key(self, c: Cell) -> str:
        return unlearned_key(c.name, self.scenario, self.prepared, self.ref_keys[c.seed], c.seed)

    def _finish(self, c: Cell, ref) -> None:
        try:
            result = self.ray.get(ref)
        except Exception as e:  # the task raised, or its worker died more than max_retries times
            why = _one_line(e)
            self.failed[c.id] = why
            LAST_RUN["failed"].append(c.id)
            self.bar.set_postfix(failed=len(self.failed))
            self.log(f"  {c.id}: FAILED on Ray: {why}")
            return
        try:
            self._commit(c, result)
        except ValueError as e:
            self.failed[c.id] = f"rejected result: {e}"
            LAST_RUN["failed"].append(c.id)
            self.bar.set_postfix(failed=len(self.failed))
            self.log(f"  {c.id}: result rejected: {e}")
            return
        self.done.add(c.id)
        self.committed += 1
        self.bar.update(1)
        self._say(f"  {c.id}: done in {result['wall_s']:.1f} s on {result['host']} "
                  f"({len(result['records'])} record{'s' * (len(result['records']) != 1)})")
        if c.kind == "unlearn":
            rec = next(r for r in result["records"] if r["kind"] == "unlearned")["metrics"]
            row = f"seed {c.seed} eval {c.name}"
            why = cell_failure(rec)
            if why and row in self.cells and row not in self.done:
                self.done.add(row)  # a failed method has no row to evaluate (as locally)
                self.bar.update(1)
                self._say(f"  {c.id}: the method failed ({why}); recorded, its row is skipped")

    # ---------------------------------------------------------------------------- the commit protocol
    def _commit(self, c: Cell, result: dict) -> None:
        self._check(c, result)
        ckpts = dict(result["checkpoints"])
        for r in result["records"]:
            with self.store.claim(r["kind"], r["key"]):
                if r["key"] in ckpts:  # the checkpoint first, its record after (a record means a complete checkpoint)
                    self._save_checkpoint(r["key"], ckpts.pop(r["key"]))
                self.store.put(r["kind"], r["key"], scenario=r["scenario"], seed=r["seed"], config=r["config"],
                               metrics=r["metrics"], timings=r["timings"])
            self.records.setdefault(c.seed, {})[(r["kind"], r["key"])] = r
        for key, ck in ckpts.items():
            self._save_checkpoint(key, ck)

        root = self.out_dir.parent
        for rel, data in result["files"].items():
            atomic_write(root / rel, data)
        self._record_task(c, result)

    def _save_checkpoint(self, key: str, ck: dict) -> None:
        model = self._model_for(ck["meta"])
        model.load_state_dict(ck["state"], strict=True)
        meta = {k: v for k, v in ck["meta"].items() if k not in ("sha256", "format", "key")}
        self.store.save_model(key, model, meta)
        self.weights.pop(key, None)

    def _model_for(self, meta: dict):
        p = self.prepared
        return new_model(self.scenario, meta.get("num_classes", p.num_classes), p.in_shape, meta.get("mean"),
                         meta.get("std"), 0, "cpu")

    def _check(self, c: Cell, result: dict) -> None:
        """Raise ValueError when a result is not what cell ``c`` produces."""
        import torch

        kinds = {"pretrained": {"model"}, "original": {"model"}, "retrain": {"model"}, "unlearn": {"unlearned"}}
        expected = {"pretrained": self.ref_keys[c.seed].get("pretrained"), "original": self.ref_keys[c.seed].get("original"),
                    "retrain": self.ref_keys[c.seed].get("retrain")}
        recs = result.get("records")
        if not isinstance(recs, list) or not isinstance(result.get("checkpoints"), dict) \
                or not isinstance(result.get("files"), dict):
            raise ValueError("malformed result")
        for r in recs:
            if r.get("scenario") != self.scenario.name or r.get("seed") != c.seed:
                raise ValueError(f"record {r.get('kind')} {r.get('key')} is for {r.get('scenario')} seed {r.get('seed')}")
            if not isinstance(r.get("key"), str) or not r["key"].isalnum():
                raise ValueError(f"record key {r.get('key')!r}")
            allowed = kinds.get(c.kind)
            if allowed is not None and r["kind"] not in allowed:
                raise ValueError(f"a {c.kind} cell produced a {r['kind']!r} record")
            if allowed is None and r["kind"] in ("model", "unlearned"):
                raise ValueError(f"an eval cell recomputed a {r['kind']!r} cell")
            canonical_json(r["metrics"])
        got = {(r["kind"], r["key"]) for r in recs}
        if c.kind in expected:
            if ("model", expected[c.kind]) not in got or expected[c.kind] not in result["checkpoints"]:
                raise ValueError(f"no {c.kind} model {expected[c.kind]} in the result")
        if c.kind == "unlearn":
            key = self._unlearned_key(c)
            rec = next((r for r in recs if r["key"] == key), None)
            if rec is None:
                raise ValueError(f"no unlearned record {key} in the result")
            failed = cell_failure(rec["metrics"])
            if not failed and key not in result["checkpoints"]:
                raise ValueError(f"no checkpoint for unlearned {key}")
        for key, ck in result["checkpoints"].items():
            state = ck.get("state")
            if not isinstance(state, dict) or not isinstance(ck.get("meta"), dict):
                raise ValueError(f"checkpoint {key}: malformed")
            bad = [k for k, v in state.items() if not torch.is_tensor(v)
                   or (v.is_floating_point() and not torch.isfinite(v).all())]
            if bad:
                raise ValueError(f"checkpoint {key}: non-finite or non-tensor weights {bad[:5]}")
            expect = set(self._model_for(ck["meta"]).state_dict())
            if set(state) != expect:
                raise ValueError(f"checkpoint {key}: keys {sorted(set(state) ^ expect)[:5]} differ from the "
                                 f"{self.scenario.model.arch} architecture")
        for rel in result["files"]:
            p = Path(rel)
            if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != self.scenario.name:
                raise ValueError(f"file {rel!r} outside the run directory")

    def _record_task(self, c: Cell, result: dict) -> None:
        """A ``task`` record per finished Ray cell: its wall time (what `rurk plan` measures), host and records."""
        key = cache_key(kind="task", cell=c.label, seed=c.seed, refs=self.ref_keys[c.seed], scenario=self.scenario.name)
        self.store.put("task", key, scenario=self.scenario.name, seed=c.seed,
                       config={"cell": c.kind, "name": c.name, "executor": "ray"},
                       metrics={"host": result["host"], "records": [[r["kind"], r["key"]] for r in result["records"]]},
                       timings={"wall_s": round(result["wall_s"], 3),  # the worker's threads, not this driver's
                                "threads": next((r["timings"].get("threads") for r in result["records"]
                                                 if r.get("timings")), None)})


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"[:300]
    return (f"{type(e).__name__}: {text[-1] if text else ''}")[:300]
