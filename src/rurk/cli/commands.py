"""The commands that train, unlearn, run, tune, plan and write README blocks (`rurk audit` is in
:mod:`rurk.cli.audit`). Each ``cmd_*`` takes the parsed and checked arguments."""

from __future__ import annotations

import sys
from pathlib import Path

from ..audit import metrics as M
from ..audit.metric_specs import cell_failure, failure_reason
from ..config import ConfigError, list_scenarios
from ..methods import load_all
from ..pipeline import prepare, reference_models
from ..report.claims import claims_lines
from ..report.readme import compare, read_block, render, render_transfer, update
from ..report.tables import main_table, markdown
from ..report.write import residual_plot
from ..run.experiment import RunOptions, method_config, run_experiment, unlearned_model
from ..run.plan import plan, plan_lines
from ..run.pool_exec import ProcessExecutor
from ..run.ray_exec import RayExecutor, import_ray
from ..run.tune import tune
from ..run.tuned import read_tuned, tuned_path
from ..store import Store, cache_key
from ..threads import available_cpus
from ..toy import iris_figure
from .checks import _audit_options, _refuse, _run_options, _scenario, _seeds


class CellFailed(RuntimeError):
    """Some work failed (exit code 1, distinct from usage errors)."""


def cmd_scenarios(args) -> None:
    for name, desc in list_scenarios().items():
        print(f"{name:16s} {desc}")


def cmd_train(args) -> None:
    scenario = _scenario(args)
    store = Store(args.out)
    prepared = prepare(scenario, store)
    print(f"{scenario.name}: |S_r|={len(prepared.data.retain)} |S_f|={len(prepared.data.forget)} "
          f"|test|={len(prepared.data.test)} classes={list(prepared.split.classes)} split={prepared.split.digest()[:12]}")
    for seed in _seeds(args, scenario):
        refs = reference_models(scenario, prepared, seed, store, device=args.device)
        print(f"seed {seed}: {'model':9s} {'retain':>7s} {'forget':>7s} {'test':>7s}   checkpoint")
        for kind, acc in refs.accuracies.items():
            print(f"seed {seed}: {kind:9s} {acc['retain']:7.2%} {acc['forget']:7.2%} {acc['test']:7.2%}   "
                  f"{store.model_dir(refs.keys[kind])}")


def cmd_methods(args) -> None:
    for name, spec in sorted(load_all().items()):
        print(f"{name:13s} {spec.summary}")
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults().items())
        print(f"{'':13s}   defaults: {defaults}")
        if spec.presets:
            print(f"{'':13s}   presets: " + "; ".join(f"{p}: {v}" for p, v in spec.presets.items()))


def cmd_unlearn(args) -> None:
    """Unlearn with one method (or variant), save the checkpoint in the store and print accuracies — nothing else
    (`rurk run` adds MIA, re-learn time and the audit)."""
    scenario = _scenario(args)
    print(f"{args.method}: {method_config(scenario, args.method)}")
    store = Store(args.out)
    prepared = prepare(scenario, store)
    d = prepared.data
    failed = False
    for seed in _seeds(args, scenario):
        refs = reference_models(scenario, prepared, seed, store, device=args.device)
        model, rec, cell = unlearned_model(args.method, scenario, prepared, refs, seed, store)
        if model is None:
            print(f"seed {seed}: {args.method} failed: {cell_failure(rec)}")
            failed = True
            continue
        acc = M.standard_accuracies(model, d.retain, d.forget, d.test)
        print(f"seed {seed}: {args.method} retain {acc.retain_acc:.2%} forget {1 - acc.unlearn_acc:.2%} test "
              f"{acc.test_acc:.2%} ({rec.get('wall_s', 0):.1f} s)   checkpoint "
              f"{store.model_dir(cache_key(kind='unlearned', **cell)) / 'model.safetensors'}")
    if failed:
        raise CellFailed("a method failed or diverged (see above)")


def cmd_run(args) -> None:
    scenario = _scenario(args)
    opts, executor = _run_options(args, scenario), _executor(args)
    summary = run_experiment(scenario, opts, args.out, executor=executor)
    _print_summary(summary, Path(args.out) / scenario.name)
    _raise_on_failures(summary)


def _raise_on_failures(summary: dict) -> None:
    """A run in which a cell failed ends with the list of failures and exit code 1."""
    failures = [(name, f) for name, e in summary["methods"].items() for f in e.get("failed", [])]
    if not failures:
        return
    print(f"\n{len(failures)} failed cell{'s' * (len(failures) > 1)} (recorded in the store; rerun with "
          "--retry-failed to compute them again):")
    for name, f in failures:
        print(f"  seed {f.get('seed', '?')} {name}: {failure_reason(f)}")
    raise CellFailed(f"{len(failures)} cell{'s' * (len(failures) > 1)} failed")


#: The demo's perturbed copies per sample: 32 instead of the paper's 100 keeps 19 audits x 3 seeds within a first
#: look's budget on a 2-core CPU (decision); `rurk run fmnist5` uses 100.
DEMO_DRAWS = 32
#: The demo's τ grid: the three every table and claim reads (0, the paper's 0.03, fmnist5's largest), instead of
#: fmnist5's eight (decision: the audit's forward passes grow with the τ count; each τ's counts are the same
#: whatever else the grid holds — common random numbers — so dropping the 0.1 it had saved a sixth of the demo's
#: compute and moved no number); `rurk run fmnist5` audits all eight and draws the curve.
DEMO_TAUS = [0.0, 0.03, 0.3]


def cmd_demo(args) -> None:
    import time
    from dataclasses import replace

    t0 = time.perf_counter()
    args.scenario = "fmnist5"
    scenario = _scenario(args)
    seeds = list(scenario.seeds.run)
    # three seeds, so that the claims are statistics; no attack curves (`rurk run` has them)
    opts = _audit_options(args, RunOptions(seeds=seeds, device=args.device, attacks=False), scenario)
    opts = replace(opts, draws=DEMO_DRAWS if args.draws is None else args.draws, taus=DEMO_TAUS)
    jobs = min(len(seeds), available_cpus()) if args.jobs is None else args.jobs
    summary = run_experiment(scenario, opts, args.out, executor=_jobs_executor(jobs))
    _print_summary(summary, Path(args.out) / scenario.name)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    _raise_on_failures(summary)


def _print_summary(summary: dict, out_dir: Path) -> None:
    print()
    print(markdown(*main_table(summary)))
    print(f"\nreport: {out_dir / 'report.md'}  plot: {out_dir / 'residual.png'}  summary: {out_dir / 'summary.json'}")
    n = len(summary["seeds"])
    print(f"\nclaims check ({n} seed{'s' * (n > 1)}; evidence in report.md):")
    for line in claims_lines(summary["claims"]):
        print(line)


def cmd_tune(args) -> None:
    scenario = _scenario(args)
    jobs, args.jobs = args.jobs, 1  # tune's --jobs is trials at once (its own processes, or Ray tasks): not run's pool
    executor = _executor(args)
    path = tune(scenario, args.methods, args.out, trials=args.trials,
                timeout=args.timeout, jobs=jobs, seed=args.seed, split_seeds=args.split_seeds, prune=args.prune,
                sampler_seed=args.sampler_seed, write=args.write, device=args.device, executor=executor,
                incumbent=args.incumbent, objective=args.objective)
    print(f"wrote {path}")


def _jobs_executor(jobs: int):
    """None (this process) or the ProcessExecutor of ``--jobs K`` (K > 1 worker processes, one thread each),
    with K capped at the CPUs this process may use (one line of warning)."""
    if jobs < 1:
        raise ConfigError(f"--jobs = {jobs}: expected an integer >= 1")
    cpus = available_cpus()
    if jobs > cpus:
        print(f"rurk: warning: --jobs = {jobs}: this process may use {cpus} CPUs; running {cpus} workers",
              file=sys.stderr)
        jobs = cpus
    if jobs == 1:
        return None

    return ProcessExecutor(jobs)


def _executor(args):
    """None (local), the ProcessExecutor of `--jobs K`, or the RayExecutor of `--executor ray` (Ray's presence
    checked now, before any work)."""
    ray_flags = {"--address": args.address, "--cpus-per-task": args.cpus_per_task,
                 "--gpus-per-task": args.gpus_per_task, "--max-retries": args.max_retries}
    if args.executor == "local":
        given = [k for k, v in ray_flags.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} needs --executor ray")
        return _jobs_executor(args.jobs)
    if args.jobs != 1:
        raise ConfigError(f"--jobs = {args.jobs}: worker processes are for --executor local; with Ray give "
                          "--cpus-per-task")

    import_ray()
    ex = RayExecutor(address=args.address,
                     cpus_per_task=1.0 if args.cpus_per_task is None else args.cpus_per_task,
                     gpus_per_task=0.0 if args.gpus_per_task is None else args.gpus_per_task,
                     max_retries=3 if args.max_retries is None else args.max_retries)
    ex.check_device(args.device)
    return ex


def cmd_plan(args) -> None:
    """The cell graph of a `rurk run`, the cost of each kind of cell and the wall time on K workers."""
    scenario = _scenario(args)
    device = args.device if args.device != "auto" else ("cuda" if _cuda_available() else "cpu")
    p = plan(scenario, _run_options(args, scenario), args.out, args.workers, device=device)
    print("\n".join(plan_lines(p)))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_readme(args) -> None:
    """Write (or, with --check, compare) a README results block from a run's summary.json."""
    import json
    import shutil

    summary_path = Path(args.summary)
    if summary_path.is_dir():
        summary_path = summary_path / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: no summary.json (run `rurk run` or `rurk demo` first)")
    summary = json.loads(summary_path.read_text())
    _check_selection(summary, summary_path, args.rows, args.columns)
    _check_selection(summary, summary_path, args.png_rows, None, flag="--png-rows")
    if args.transfer:
        if args.check:
            raise _refuse("--check", "with --transfer", "a results block (the transfer table is not checked)")
        tuned = summary.get("run", {}).get("tuned")
        if not tuned:
            raise _refuse("--transfer", str(summary_path), "a run made with a tuned file (this one used none)")
        text = render_transfer(summary, read_tuned(tuned_path(tuned)))
    else:
        text = render(summary, rows=args.rows, columns=args.columns, claims=not args.no_claims)
    if args.check:
        result = compare(read_block(args.readme, args.block), text if text.endswith("\n") else text + "\n")
        print(f"{args.readme}: block {args.block!r} against {summary_path}: {result.report()}")
        if not result.ok:
            raise CellFailed(f"{args.readme}: block {args.block!r} does not match {summary_path} (regenerate it "
                             f"with `rurk readme {args.summary} --block {args.block}` if the change is intended)")
        return
    changed = update(args.readme, args.block, text)
    if args.png and args.png_rows:
        residual_plot(summary, Path(args.png), rows=args.png_rows,
                      title=f"{summary.get('scenario')}: r_τ against Re-train ({summary.get('probe')} probe, ")
    elif args.png:
        shutil.copyfile(summary_path.parent / "residual.png", args.png)
    print(f"{args.readme}: block {args.block!r} {'is up to date' if not changed else 'updated'}")


def _check_selection(summary: dict, path: Path, rows: list[str] | None, columns: list[str] | None,
                     flag: str = "--rows") -> None:
    """`rurk readme --rows/--columns` name rows and columns the summary's table has: an unknown row used to be
    dropped without a word, an unknown column prefix to leave a header-only table (exit 0)."""
    if rows is not None:
        known = list(summary["methods"])
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise _refuse(flag, ",".join(rows), f"methods of {path} (unknown: {', '.join(unknown)}; known: "
                                                     f"{', '.join(known)})")
    if columns is not None:
        header = [h for h in main_table(summary)[0][1:] if h != "wall (s)"]  # render() leaves wall times out
        unknown = [c for c in columns if not any(h.startswith(c) for h in header)]
        if unknown:
            raise _refuse("--columns", ",".join(columns), f"prefixes of the table's columns (unknown: "
                                                           f"{', '.join(unknown)}; columns: {', '.join(header)})")


def cmd_iris_figure(args) -> None:
    res = iris_figure(args.png, seed=args.seed)
    print(f"wrote {args.png}; correct perturbed copies per model: {res['totals']}")


