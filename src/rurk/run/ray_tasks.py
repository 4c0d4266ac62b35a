"""The worker side of `rurk run --executor ray` (:mod:`rurk.run.ray_exec`): one Ray task computes one cell (or
one tuning trial) with the ordinary local code on a scratch store seeded with its dependencies, and returns what it
made for the driver to check and commit."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..pipeline import pretrained_model, reference_model, reference_models
from ..store import Store
from .experiment import run_seed, unlearned_model
from .grid import REFERENCES
from .tune import _Objective

RAY_MISSING = "--executor ray needs Ray: pip install 'rurk[ray]'"

#: Test hook (read by the driver, sent with each task): ``"PATTERN@DIR"`` makes the first attempt of every cell
#: whose id contains PATTERN kill its worker (``os._exit``), leaving a marker file in DIR; Ray retries it.
FAULT_ENV = "RURK_RAY_FAULT"
#: Test hook: stop the driver (as if by Ctrl-C) after committing this many cells.
STOP_ENV = "RURK_RAY_STOP_AFTER"

#: Counters of the last :meth:`RayExecutor.fill` (read by tests): cell ids found done, submitted, failed.
LAST_RUN: dict = {}


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray



# ------------------------------------------------------------------------------------------------ worker side
class _State:
    """A state dict that :meth:`rurk.store.Store.save_model` can save (it only calls ``state_dict()``)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _install(store, records: list[dict], weights: dict[str, dict]) -> None:
    for key, w in weights.items():
        meta = {k: v for k, v in w["meta"].items() if k not in ("sha256", "format", "key")}
        store.save_model(key, _State(w["state"]), meta)
    for r in records:
        store.put(r["kind"], r["key"], scenario=r["scenario"], seed=r["seed"], config=r["config"],
                  metrics=r["metrics"], timings=r["timings"])


def _read_checkpoint(store, key: str) -> dict | None:
    """{"state": CPU tensors, "meta": model.json} of a complete checkpoint, else None."""
    from safetensors.torch import load_file

    meta = store.load_meta(key)
    if meta is None:
        return None
    return {"state": load_file(str(store.model_dir(key) / "model.safetensors"), device="cpu"), "meta": meta}


def _harvest(store, before: set, seeded: set, out_root: Path) -> dict:
    records = [r for r in store.records() if (r["kind"], r["key"], r["created"]) not in before]
    models = store.root / "models"
    checkpoints = {}
    for d in sorted(models.iterdir()) if models.is_dir() else []:
        if d.name not in seeded:
            ck = _read_checkpoint(store, d.name)
            if ck is not None:
                checkpoints[d.name] = ck
    files = {str(p.relative_to(out_root)): p.read_bytes() for p in sorted(out_root.rglob("*")) if p.is_file()}
    return {"records": records, "checkpoints": checkpoints, "files": files}


def _fault(cell_id: str, fault: tuple[str, str] | None) -> None:
    if not fault or fault[0] not in cell_id:
        return
    marker = Path(fault[1]) / (cell_id.replace(" ", "_").replace("/", "_") + ".failed-once")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{socket.gethostname()} {os.getpid()}\n")
        os._exit(1)  # the worker dies; Ray resubmits the task


def _worker_setup(threads: int) -> None:
    import torch

    os.environ["RURK_PROGRESS"] = "0"
    torch.set_num_threads(max(1, int(threads)))


def _compute(job: dict, prepared, store, out_root: Path) -> None:
    """Run the local code of one cell against the (scratch) store."""
    kind, seed, scenario, opts = job["kind"], job["seed"], job["scenario"], job["opts"]
    if kind == "pretrained":
        pretrained_model(scenario, prepared, seed, store, device=opts.device, progress=False)
    elif kind in ("original", "retrain"):
        pre = (pretrained_model(scenario, prepared, seed, store, device=opts.device, progress=False)
               if scenario.pretrain.dataset else (None, None))
        reference_model(kind, scenario, prepared, seed, store, device=opts.device, progress=False, pretrained=pre)
    elif kind == "unlearn":
        refs = reference_models(scenario, prepared, seed, store, device=opts.device, progress=False)
        unlearned_model(job["name"], scenario, prepared, refs, seed, store, log=_quiet, retry_failed=opts.retry_failed)
    elif kind == "eval":
        names = [] if job["name"] == REFERENCES else [job["name"]]
        run_seed(scenario, prepared, seed, store, names, replace(opts, retry_failed=False), out_root / scenario.name,
                 spec=job["spec"], progress=False, log=_quiet)
    else:
        raise ValueError(f"unknown cell kind {kind!r}")


def _quiet(*_a, **_k) -> None:
    pass


def cell_task(job: dict, prepared, records: list[dict], weights: dict, fault) -> dict:
    """The body of one Ray task (runs on a worker): compute one cell, return what it produced."""
    import ray

    t0 = time.perf_counter()
    _fault(job["id"], fault)
    _worker_setup(job["threads"])
    with tempfile.TemporaryDirectory(prefix="rurk-ray-") as tmp:
        store, out_root = Store(Path(tmp) / "store"), Path(tmp) / "out"
        out_root.mkdir()
        _install(store, records, {k: ray.get(ref) for k, ref in weights.items()})
        before = {(r["kind"], r["key"], r["created"]) for r in store.records()}
        _compute(job, prepared, store, out_root)
        result = _harvest(store, before, set(weights), out_root)
    result.update(wall_s=time.perf_counter() - t0, host=socket.gethostname(), pid=os.getpid())
    return result


_SPLITS: dict[str, tuple] = {}  # worker-side cache: token -> (scratch directory, rebuilt tuning splits)


def trial_task(token: str, objective_parts: dict, split_parts: list[dict], params: dict) -> dict:
    """The body of one tuning trial (runs on a worker): the local objective on the shipped tuning splits."""
    import ray

    _worker_setup(objective_parts["threads"])
    if token not in _SPLITS:
        import shutil

        for old in _SPLITS.values():  # one study at a time per worker process
            shutil.rmtree(old[0], ignore_errors=True)
        _SPLITS.clear()
        tmp = tempfile.mkdtemp(prefix="rurk-ray-tune-")
        splits = []
        for n, part in enumerate(split_parts):
            store = Store(Path(tmp) / f"split-{n}")
            _install(store, [], {k: ray.get(ref) for k, ref in part["weights"].items()})
            prepared = ray.get(part["prepared"])
            refs = reference_models(prepared.scenario, prepared, objective_parts["seed"], store,
                                    device=objective_parts["device"], progress=False)
            splits.append((prepared, refs, prepared.unlearn_data(refs.pretrained), part["ref"]))
        _SPLITS[token] = (tmp, splits)
    p = objective_parts
    try:
        value, gaps = _Objective(p["scenario"], p["method"], p["base"], p["seed"], _SPLITS[token][1],
                                 p.get("objective", "gap"))(params)
    except Exception as e:  # reported on the driver as the same exception type and message
        return {"error": (type(e).__name__, str(e))}
    return {"value": value, "gaps": gaps}
