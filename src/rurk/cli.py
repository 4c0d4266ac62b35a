"""The ``rurk`` command line: parses arguments, loads a scenario, calls one function per subcommand."""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Callable, TypeVar

from .threads import prefer_short_spin

prefer_short_spin()  # before torch loads (rurk.config imports it): see rurk.threads, "Waiting threads"

# Every subcommand's modules, imported once here, after prefer_short_spin() (hence E402); optional heavy
# dependencies (optuna, ray, matplotlib) are imported where they are used, by the modules that need them.
from . import __version__, metrics as M  # noqa: E402
from .attack_report import write_robust  # noqa: E402
from .attacks import RobustSettings, robust_curves, subsample  # noqa: E402
from .audit import residual_knowledge  # noqa: E402
from .claims import claims_lines  # noqa: E402
from .config import MAX_BOOTSTRAP, ConfigError, Scenario, list_scenarios, load_scenario, parse_overrides  # noqa: E402
from .data.loaders import BUNDLED  # noqa: E402
from .experiment import RunOptions, audit_settings, method_config, run_experiment, unlearned_model  # noqa: E402
from .gallery import write_per_sample  # noqa: E402
from .methods import load_all  # noqa: E402
from .metric_specs import cell_failure, failure_reason  # noqa: E402
from .pipeline import load_run_model, pick_device, prepare, reference_models  # noqa: E402
from .plan import plan, plan_lines  # noqa: E402
from .plots import plot_residual_curves  # noqa: E402
from .pool_exec import ProcessExecutor  # noqa: E402
from .ray_exec import RayExecutor, import_ray  # noqa: E402
from .readme import compare, read_block, render, render_transfer, update  # noqa: E402
from .report import main_table, markdown  # noqa: E402
from .store import Store, cache_key, check_safetensors, load_checkpoint  # noqa: E402
from .threads import available_cpus, configure_threads  # noqa: E402
from .toy import iris_figure  # noqa: E402
from .tune import read_tuned, tune, tuned_path, with_tuned  # noqa: E402
from .usermodel import build_user_model, check_model_fits, load_samples, parse_normalize, with_normalization  # noqa: E402

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- input checks
def _refuse(what: str, value: object, expected: str) -> ConfigError:
    """The one error line of a bad input, ``<what> = <value>: expected <…>`` (exit code 2)."""
    return ConfigError(f"{what} = {value!r}: expected {expected}")


def _nonneg_int(text: str) -> int:
    n = int(text)
    if n < 0:
        raise ValueError(text)
    return n


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _tau(text: str) -> float:
    t = float(text)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(text)
    return t


def _items(flag: str, text: str, parse: Callable[[str], T], expected: str) -> list[T]:
    """A comma-separated flag value as a non-empty list. An empty value or item is refused, never read as "the
    default": an empty --methods used to run all 17 methods, an empty --seeds three seeds."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if not all(parts):
            raise ValueError(text)
        return [parse(p) for p in parts]
    except ValueError:
        raise _refuse(flag, text, expected) from None


def _check_out(out: str) -> None:
    """--out is, or can become, a directory this process may write: a file there (or on its path) used to end in
    a traceback, for `rurk audit --arch` only after the audit had run."""
    path = Path(out)
    for q in (path, *path.parents):
        if q.exists():
            if not q.is_dir():
                raise _refuse("--out", out, "a directory" + (" (it is a file)" if q == path else f" ({q} is a file)"))
            if not os.access(q, os.W_OK | os.X_OK):
                raise _refuse("--out", out, f"a directory you may write to ({q} is not writable)")
            return


def _check_store(out: str) -> None:
    """An existing store database opens and passes SQLite's quick check: a damaged rurk.sqlite used to end in a
    traceback once the command had started."""
    db = Path(out) / "rurk.sqlite"
    if not db.is_file():
        return
    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as con:
            verdict = con.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as e:
        verdict = str(e)
    if verdict != "ok":
        raise _refuse("store database", str(db), f"an SQLite database written by rurk, but: {verdict}; move it away "
                                                 "or choose another --out")


def _check_device(name: str, *, here: bool) -> None:
    """--device names a device type rurk runs on and, when this process does the work (``here``; not with
    `--executor ray`, whose workers have their own devices), one this torch can use: `cuda` on a CPU-only torch
    used to end in a 41-line traceback, `bogus` in exit code 1."""
    if name == "auto":
        return
    import torch

    expected = "auto, cpu, cuda, cuda:N or mps"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise _refuse("--device", name, expected) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise _refuse("--device", name, expected)
    if not here or dev.type == "cpu":
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise _refuse("--device", name, "auto or cpu: this torch sees no MPS device")
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise _refuse("--device", name, f"auto or cpu: this torch ({torch.__version__}) sees no CUDA device")
    if (dev.index or 0) >= n:
        raise _refuse("--device", name, f"one of cuda:0 to cuda:{n - 1}")


def _check_checkpoint(flag: str, path: str) -> None:
    """A safetensors file given on the command line is complete, before any model is trained to audit it against
    (a missing --unlearned used to be refused only after Original and Re-train were trained)."""
    try:
        check_safetensors(path)
    except (FileNotFoundError, ValueError) as e:
        raise _refuse(flag, path, f"a safetensors file, but {str(e).removeprefix(f'{Path(path)}: ')}") from None


def _check_args(args) -> None:
    """Every flag of the command, checked before any work starts (data loaded, a model trained): each bad value
    or contradictory pair ends in one line naming it, exit code 2. List flags are parsed here, in place
    (``args.seeds`` becomes a list of ints, ...)."""
    def given(name: str):
        return getattr(args, name, None)

    if given("seed") is not None and given("seeds") is not None:
        raise ConfigError(f"--seed = {args.seed} with --seeds = {args.seeds!r}: expected one of them (--seeds lists "
                          "every run seed)")
    if given("command") == "audit" and not given("arch"):
        if given("method") and given("unlearned"):
            raise ConfigError(f"--method = {args.method!r} with --unlearned = {args.unlearned!r}: expected one of "
                              "them (both name the audited model)")
        if given("tuned") and not given("method"):
            raise ConfigError(f"--tuned = {args.tuned!r} without --method: expected --method NAME (tuned values "
                              "apply to methods only)")
    if given("robust") and given("no_attacks"):
        raise ConfigError("--robust with --no-attacks: expected one of them (--no-attacks skips the robust curves)")
    if given("out") is not None:
        _check_out(args.out)
    if given("device") is not None:
        _check_device(args.device, here=given("executor") in (None, "local"))
    for name in ("seed", "noise_seed"):
        if given(name) is not None and given(name) < 0:
            raise _refuse(f"--{name.replace('_', '-')}", given(name), "an integer >= 0")
    for name, minimum in (("draws", 1), ("gallery", 0)):
        if given(name) is not None and given(name) < minimum:
            raise _refuse(f"--{name}", given(name), f"an integer >= {minimum}")
    if given("bootstrap") is not None and not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise _refuse("--bootstrap", args.bootstrap, f"an integer from 0 to {MAX_BOOTSTRAP} (resamples)")
    lists = {"seeds": (_nonneg_int, "comma-separated integers >= 0, e.g. 131,42,7"),
             "split_seeds": (_nonneg_int, "comma-separated integers >= 0, e.g. 1,2"),
             "workers": (_positive_int, "comma-separated integers >= 1, e.g. 8 or 1,2,4,8"),
             "methods": (str, "comma-separated methods or variants, e.g. rurk,gd,rurk:lambda_f=0 or all "
                              "(see `rurk methods`)"),
             "taus": (_tau, "comma-separated numbers >= 0 (pixel units), e.g. 0,0.01,0.03"),
             "rows": (str, "comma-separated method names, e.g. original,retrain,rurk"),
             "columns": (str, "comma-separated column prefixes, e.g. Retain,r_pooled")}
    for name, (parse, expected) in lists.items():
        if isinstance(given(name), str):
            setattr(args, name, _items(f"--{name.replace('_', '-')}", given(name), parse, expected))
    for name in ("unlearned", "reference"):
        if given(name) is not None:
            _check_checkpoint(f"--{name}", given(name))
    if given("out") is not None and not given("arch"):
        _check_store(args.out)


def _scenario(args):
    """The scenario with its tuned per-method values (if any), then --data-dir and --set overrides."""
    overrides = parse_overrides(args.set)
    if "method" in overrides:  # `--set method.lr=0.1` is shorthand for `--set methods.<the one method>.lr=0.1`
        named = getattr(args, "method", None) or getattr(args, "methods", None)
        name = named if isinstance(named, str) else named[0] if named and len(named) == 1 else None
        if name in (None, "all") or "," in name:
            raise ConfigError("--set method.KEY=VALUE needs a single method (--method/--methods NAME); use "
                              "methods.NAME.KEY=VALUE")
        overrides.setdefault("methods", {}).setdefault(name, {}).update(overrides.pop("method"))
    if getattr(args, "data_dir", None):
        overrides.setdefault("data", {})["data_dir"] = args.data_dir
    scenario = load_scenario(args.scenario, overrides)
    if getattr(args, "data_dir", None) and scenario.data.dataset in BUNDLED:
        raise _refuse("--data-dir", args.data_dir, f"none: {scenario.name}'s data ({scenario.data.dataset}) is "
                                                   "bundled and read from no directory")
    return with_tuned(scenario, getattr(args, "tuned", None))


def _seeds(args, scenario) -> list[int]:
    """--seeds (parsed by :func:`_check_args`), else --seed, else the scenario's first run seed."""
    if getattr(args, "seeds", None) is not None:
        return list(args.seeds)
    if getattr(args, "seed", None) is not None:
        return [args.seed]
    return list(scenario.seeds.run[:1])


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


class CellFailed(RuntimeError):
    """Some work failed (exit code 1, distinct from usage errors)."""


def cmd_audit(args) -> None:
    """`rurk audit SCENARIO ...` (a method's model or a checkpoint of the scenario's architecture against Re-train)
    or `rurk audit --arch MODULE:FUNCTION --unlearned M --reference A --forget F` (any model, no scenario).

    A scenario audit writes to its own folder, OUT/SCENARIO/audits/seed-S/NAME/ (:func:`audit_dir`), never into a
    run's seed-S/NAME/, whose files the run's report.md links."""
    if args.arch:
        return _audit_user_model(args)

    if args.scenario is None:
        raise ConfigError("audit needs a scenario (e.g. `rurk audit fmnist5 --method rurk`) or --arch MODULE:FUNCTION "
                          "with --unlearned, --reference and --forget")
    for flag in ("forget", "normalize", "retain", "test"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag} is for auditing your own model: use it with --arch MODULE:FUNCTION")
    scenario = _scenario(args)
    spec = _audit_spec(args, scenario)  # every audit setting checked before any training
    robust = _robust_settings(args)
    store = Store(args.out)
    prepared = prepare(scenario, store)
    seed = _seeds(args, scenario)[0]
    refs = reference_models(scenario, prepared, seed, store, device=args.device)

    def model_from(path: str | None, fallback):
        if path is None:
            return fallback
        model = load_run_model(store, refs.keys["original"], scenario, prepared, args.device)
        return load_checkpoint(model, path).eval()  # rurk's checkpoints or a plain safetensors of this architecture

    if args.method:
        m, rec, _ = unlearned_model(args.method, scenario, prepared, refs, seed, store)
        if m is None:
            raise ValueError(f"method {args.method!r} produced no model: {cell_failure(rec)}")
        name = args.method
    else:
        m = model_from(args.unlearned, refs.original)
        name = _checkpoint_name(args.unlearned) if args.unlearned else "original"
    a = model_from(args.reference, refs.retrain)
    d = prepared.data
    sets = None
    if robust is not None:
        sets = {"forget": d.forget, **{k: subsample(getattr(d, k), robust.max_samples, seed, k)
                                       for k in ("retain", "test") if len(getattr(d, k))}}
    _audit_and_write(args, spec, m, a, d.forget, audit_dir(args.out, scenario.name, seed, name), seed,
                     name=name, ref_name="retrain" if args.reference is None else _checkpoint_name(args.reference),
                     ref_label="Re-train" if args.reference is None else None,
                     reference=f"retrain@{seed}" if args.reference is None else str(args.reference),
                     scenario=scenario.name, num_classes=prepared.num_classes, robust=robust, robust_sets=sets)


def audit_dir(out: str | Path, scenario: str, seed: int, name: str) -> Path:
    """Where `rurk audit SCENARIO` writes: OUT/SCENARIO/audits/seed-S/NAME/, beside (never inside) the run's
    seed-S/NAME/ folders. A later standalone audit of the same model replaces the earlier one's files; a run's
    files stay those of the run's own audits."""
    return Path(out) / scenario / "audits" / f"seed-{seed}" / name


def _audit_user_model(args) -> None:
    """`rurk audit --arch`: the user's factory, two plain safetensors files and a forget set; no scenario."""
    if args.scenario is not None:
        raise ConfigError(f"give a scenario ({args.scenario!r}) or --arch, not both")
    needs = [f"--{f}" for f in ("unlearned", "reference", "forget") if not getattr(args, f)]
    if needs:
        raise ConfigError(f"--arch needs {', '.join(needs)} (e.g. --unlearned m.safetensors --reference "
                          "a.safetensors --forget forget.npz)")
    for flag in ("method", "set", "data_dir", "tuned", "seed"):
        if getattr(args, flag, None) not in (None, []):
            raise ConfigError(f"--{flag.replace('_', '-')} needs a scenario; with --arch the audit settings come "
                              "from --probe, --taus, --draws, --bootstrap and --noise-seed")
    if (args.retain or args.test) and not args.robust:
        raise ConfigError("--retain and --test are used by --robust only; add --robust")
    spec = audit_settings(Scenario(), _audit_options(args, RunOptions(), Scenario()))  # an empty scenario's defaults
    robust = _robust_settings(args)
    norm = parse_normalize(args.normalize) if args.normalize else None
    forget = load_samples(args.forget, "--forget")
    sets = {"forget": forget, **{k: load_samples(getattr(args, k), f"--{k}") for k in ("retain", "test")
                                 if getattr(args, k)}}
    device = pick_device(args.device)

    def load(path: str, what: str):
        model = load_checkpoint(build_user_model(args.arch), path).to(device)
        model = with_normalization(model, forget.x.shape[1:], *norm) if norm else model
        for k, data in sets.items():
            n_out = check_model_fits(model, data, f"the {what} model", f"--{k}")
        return model.eval(), n_out

    (m, n_m), (a, n_a) = load(args.unlearned, "unlearned"), load(args.reference, "reference")
    if n_m != n_a:
        raise ValueError(f"the unlearned model has {n_m} outputs but the reference has {n_a}")
    seed = spec.noise_seed if spec.noise_seed is not None else 0
    name, ref_name = _checkpoint_name(args.unlearned), _checkpoint_name(args.reference)
    if ref_name == name:
        name, ref_name = f"unlearned ({name})", f"reference ({ref_name})"
    _audit_and_write(args, spec, m, a, forget, Path(args.out), seed, name=name, ref_name=ref_name,
                     reference=str(args.reference), scenario=None, num_classes=n_m, robust=robust,
                     robust_sets=sets, arch=args.arch, forget_file=str(args.forget))


def _robust_settings(args):
    """`--robust` (with `--robust-eps`): the robust-accuracy settings, or None."""
    if not args.robust:
        if args.robust_eps:
            raise ConfigError("--robust-eps needs --robust")
        return None

    try:
        return RobustSettings(eps=_eps_list(args.robust_eps)) if args.robust_eps else RobustSettings()
    except ValueError as e:
        raise ConfigError(f"--robust-eps: {e}") from None


def _audit_and_write(args, spec, m, a, forget, out: Path, seed: int, *, name: str, ref_name: str, reference: str,
                     scenario: str | None, num_classes: int, robust=None, robust_sets=None,
                     ref_label: str | None = None, **extra) -> None:
    """Audit m against a on the forget set and write, under ``out``: residual-<probe>.json, .csv, .png and .npz,
    leaks-<probe>.png and, with ``robust``, robust.csv and robust.png (m and a side by side); print the table.
    ``ref_label`` names the reference in plot legends (default ``ref_name``)."""
    res = residual_knowledge(m, a, forget.x, forget.y, seed=seed, index=forget.index, spec=spec)
    stem = f"residual-{res.probe}"
    where = f"{scenario}: " if scenario else ""
    res.write_json(out / f"{stem}.json", scenario=scenario, seed=seed, method=name, reference=reference, **extra)
    res.write_csv(out / f"{stem}.csv")
    plot_residual_curves({name: res}, out / f"{stem}.png", reference=ref_label or ref_name,
                         title=f"{where}{name} vs {ref_name} ({res.probe} probe, c = {res.c}, seed {seed})")
    gallery = write_per_sample(res, spec.make_probe(), forget.x, forget.y, forget.index, m, a, out, k=args.gallery,
                               num_classes=num_classes,
                               title=f"{where}{name} vs {ref_name}: {res.probe} probe, tau = {max(res.taus):.4g}")
    print(f"{'tau':>7s} {'r_paper':>8s} {'n_unb':>5s} {'r_pooled':>8s} {'prev':>6s} {'acc_m':>6s} {'acc_a':>6s} {'disagr':>6s}")
    for t in res.per_tau:
        fmt = lambda v: "   –" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{t.tau:7.4f} {fmt(t.r_paper):>8s} {t.n_unbounded:5d} {fmt(t.r_pooled):>8s} {t.prevalence:6.1%} "
              f"{t.acc_m:6.3f} {t.acc_a:6.3f} {fmt(t.disagreement):>6s}")
    print(f"wrote {out}/{stem}.json, .csv, .png, .npz and {gallery.path.name} ({res.timing.seconds:.1f} s, "
          f"{res.timing.forward_passes} forward passes)")
    if robust is not None:
        curves = {n: robust_curves(model, robust_sets, seed, num_classes, robust) for n, model in ((name, m), (ref_name, a))}
        lines = write_robust([(seed, curves)], out, f"{where}{name} vs {ref_name}: robust accuracy under L∞ PGD")
        print("\n".join(line for line in lines if line.startswith(("|", "###"))))
        print(f"wrote {out}/robust.csv, robust.png")


def _eps_list(text: str) -> list[float]:
    """``0,2/255,0.03`` -> [0.0, 0.00784..., 0.03] (``--robust-eps``; ``k/255`` allowed)."""
    def value(item: str) -> float:
        num, _, den = item.partition("/")
        return float(num) / float(den or 1)

    try:
        return [value(t.strip()) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--robust-eps = {text!r}: expected comma-separated numbers, e.g. 0,2/255,4/255") from None


def _audit_spec(args, scenario):
    """The one AuditSpec of `rurk audit`/`run`/`demo`: the scenario's [audit] table with the command's flags."""
    return audit_settings(scenario, _audit_options(args, RunOptions(), scenario))


def _audit_options(args, opts, scenario):
    """``opts`` with the command's audit flags; a flag not given keeps the scenario's [audit] value, including
    its ``noise_seed`` and its ``probe_params`` (the latter only while the probe is the scenario's: they are
    that probe's parameters; --probe-set adds to them)."""
    from dataclasses import replace

    table = scenario.audit
    probe = getattr(args, "probe", None)
    params = dict(table.probe_params) if probe in (None, table.probe) else {}
    params.update(parse_overrides(getattr(args, "probe_set", None)))
    noise_seed = getattr(args, "noise_seed", None)
    return replace(opts, probe=probe, probe_params=params, taus=getattr(args, "taus", None),
                   draws=getattr(args, "draws", None), bootstrap=getattr(args, "bootstrap", None),
                   noise_seed=table.noise_seed if noise_seed is None else noise_seed)


def _checkpoint_name(path: str) -> str:
    """A readable name for an audited checkpoint: its stem, or its folder for the store's model.safetensors."""
    p = Path(path)
    return p.parent.name if p.stem == "model" else p.stem


def _run_options(args, scenario):
    opts = RunOptions(
        methods=args.methods, seeds=args.seeds if args.seeds is not None else (
            [args.seed] if args.seed is not None else None),
        relearn=not args.no_relearn, attacks=not args.no_attacks, robust=args.robust, device=args.device,
        retry_failed=args.retry_failed,
    )
    return _audit_options(args, opts, scenario)


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
                incumbent=args.incumbent)
    print(f"wrote {path}")


def _executor_args(c) -> None:
    """`--executor` and its Ray settings (`rurk run`, `rurk tune`)."""
    c.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process [default]; ray: Ray tasks on this machine's cores/GPUs or a cluster "
                        "(pip install 'rurk[ray]')")
    c.add_argument("--address", default=None,
                   help="with --executor ray: join a running Ray cluster (auto, or ray://HOST:10001); default: start a "
                        "local Ray instance")
    c.add_argument("--cpus-per-task", type=float, default=None, metavar="N",
                   help="with --executor ray: CPUs each cell/trial reserves (and its torch threads) [default: 1]")
    c.add_argument("--gpus-per-task", type=float, default=None, metavar="G",
                   help="with --executor ray: GPUs each cell/trial reserves, fractions allowed (0.25 = four per GPU) "
                        "[default: 0]")
    c.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="with --executor ray: times a task is resubmitted when its worker dies [default: 3]")


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
    if args.png:
        shutil.copyfile(summary_path.parent / "residual.png", args.png)
    print(f"{args.readme}: block {args.block!r} {'is up to date' if not changed else 'updated'}")


def _check_selection(summary: dict, path: Path, rows: list[str] | None, columns: list[str] | None) -> None:
    """`rurk readme --rows/--columns` name rows and columns the summary's table has: an unknown row used to be
    dropped without a word, an unknown column prefix to leave a header-only table (exit 0)."""
    if rows is not None:
        known = list(summary["methods"])
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise _refuse("--rows", ",".join(rows), f"methods of {path} (unknown: {', '.join(unknown)}; known: "
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


AUDIT_EPILOG = """\
Your own model, no scenario: give --arch instead of the scenario.
  rurk audit --arch mypkg.nets:make_net --unlearned m.safetensors --reference a.safetensors \\
             --forget forget.npz --out audit/
--arch MODULE:FUNCTION names a factory (MODULE a dotted import path, searched on PYTHONPATH and in the
working directory, or a path ending in .py) called with no arguments; it must return the nn.Module whose
state_dict the two safetensors files hold (safetensors.torch.save_file(model.state_dict(), path)). The model
takes inputs in [0, 1] and returns logits; if it expects normalised inputs, --normalize MEAN,STD (all channels)
or M1,M2,M3:S1,S2,S3 (per channel) puts (x - mean) / std in front, so the audit still perturbs pixels.
--forget is an .npz (x: N,C,H,W or N,F, float in [0, 1] or uint8; y: int labels; optional index: unique ints,
default 0..n-1) or a directory of class folders of PNG/JPEG images (label = sorted folder position, index =
position in sorted order). Settings: --probe (gaussian), --taus (linspace(0, 8/255, 11)), --draws (100),
--bootstrap (1000), --noise-seed (0). Results go straight into --out: residual-<probe>.json/.csv/.png/.npz,
leaks-<probe>.png and, with --robust, robust.csv/.png (forget set, plus --retain/--test files if given).

With a scenario the same files go to OUT/SCENARIO/audits/seed-S/NAME/ (NAME: the method, the --unlearned
file's name, or original), never into a run's OUT/SCENARIO/seed-S/NAME/, whose files the run's report links.
"""


#: `rurk tune`'s default tuning run seed (rurk.tune.DEFAULT_TUNING_SEED, not imported here: rurk.tune takes a
#: second to import and the parser is built for every command; tests/test_cli_checks.py keeps the two equal).
DEFAULT_TUNING_SEED = 1


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    """The parser's action for ``dest`` (to adjust an option shared by every scenario command)."""
    (action,) = [a for a in parser._actions if a.dest == dest]
    return action


def _audit_parser(c) -> None:
    """The audit subparser's own parts: the scenario positional made optional (`--arch` replaces it), the
    own-model flags, the gallery size and the robust-accuracy switch."""
    pos = _action(c, "scenario")
    pos.nargs, pos.required, pos.default = "?", False, None
    pos.help = "a shipped scenario name or a .toml path; omit it when auditing your own model with --arch"
    c.epilog, c.formatter_class = AUDIT_EPILOG, argparse.RawDescriptionHelpFormatter
    c.add_argument("--arch", default=None, metavar="MODULE:FUNCTION",
                   help="your model's factory, e.g. mypkg.nets:make_net or nets.py:make_net (see below)")
    c.add_argument("--forget", default=None, metavar="FILE.npz|DIR", help="with --arch: the forget set (see below)")
    c.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="with --arch: normalise [0, 1] inputs for the model, e.g. 0.5,0.25 or 0.49,0.48,0.45:0.25,0.24,0.26")
    c.add_argument("--retain", default=None, metavar="FILE.npz|DIR", help="with --arch --robust: retain samples")
    c.add_argument("--test", default=None, metavar="FILE.npz|DIR", help="with --arch --robust: test samples")
    c.add_argument("--gallery", type=int, default=16, metavar="K",
                   help="samples in each group of the leak gallery leaks-<probe>.png [default: 16]")
    c.add_argument("--robust", action="store_true",
                   help="also the accuracy under untargeted and targeted L-inf PGD (10 steps, alpha = eps/4) of both "
                        "models (robust.csv, robust.png); with a scenario on forget, retain and test (at most 500 each)")
    c.add_argument("--robust-eps", default=None, metavar="LIST",
                   help="the eps grid of --robust, e.g. 0,2/255,4/255,8/255 [default]")


def _version() -> str:
    """``rurk --version``: rurk's version and torch's (numbers are bit-identical only at the same torch)."""
    import torch

    return f"rurk {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rurk",
        description="Robust machine unlearning: train Original/Re-train, unlearn, audit residual knowledge.",
        epilog="Add --debug anywhere to see a traceback instead of a one-line error, and --threads N to set torch's "
               "CPU threads (default: RURK_THREADS, else the CPUs this process may use; never more than those).",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def scenario_cmd(name: str, help: str, fn):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("scenario", help="a shipped scenario name (see `rurk scenarios`) or a .toml path")
        c.add_argument("--seed", type=int, default=None, help="run seed (default: the scenario's first run seed)")
        c.add_argument("--out", default="runs", help="run directory (store) [default: runs]")
        c.add_argument("--data-dir", default=None, help="directory holding the dataset files")
        c.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a scenario setting, e.g. --set train.epochs=5 (repeatable)")
        c.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... [default: auto]")
        c.add_argument("--quiet", action="store_true", help="no progress bars")
        c.set_defaults(fn=fn)
        return c

    c = sub.add_parser("scenarios", help="list the shipped scenarios")
    c.set_defaults(fn=cmd_scenarios)
    scenario_cmd("train", "train (or reuse) Original and Re-train and print their accuracies", cmd_train)
    c = sub.add_parser("methods", help="list the unlearning methods with their defaults")
    c.set_defaults(fn=cmd_methods)

    def audit_args(c):
        c.add_argument("--probe", default=None,
                       help="gaussian, uniform-linf, uniform-l2, fgsm, pgd, pgd-recall (default: the scenario's, gaussian)")
        c.add_argument("--probe-set", action="append", metavar="KEY=VALUE",
                       help="a probe parameter, e.g. --probe pgd --probe-set steps=20 (repeatable)")
        c.add_argument("--taus", default=None, help="comma-separated taus in pixel units (default: the scenario's grid)")
        c.add_argument("--draws", type=int, default=None, help="perturbed copies per sample (default: the scenario's, 100)")
        c.add_argument("--bootstrap", type=int, default=None,
                       help=f"bootstrap resamples, 0 to {MAX_BOOTSTRAP} (default: the scenario's, 1000)")
        c.add_argument("--noise-seed", type=int, default=None,
                       help="the audit's noise seed (default: the scenario's audit.noise_seed, else the run seed)")

    c = scenario_cmd("unlearn", "unlearn the forget set from Original with one method; save the checkpoint and "
                                "print accuracies", cmd_unlearn)
    c.add_argument("--method", required=True, help="a method name or variant, e.g. rurk:lambda_f=0 (see `rurk methods`)")
    c.add_argument("--tuned", default=None, help="TOML of tuned method values, or 'none'")

    c = scenario_cmd("audit", "audit residual knowledge of an unlearned model against Re-train", cmd_audit)
    _audit_parser(c)
    c.add_argument("--method", default=None,
                   help="audit this method's cached unlearned model (run it if needed); not with --unlearned")
    c.add_argument("--unlearned", default=None,
                   help="a .safetensors file of the audited model: the scenario's architecture (default: Original), "
                        "or with --arch the factory's")
    c.add_argument("--reference", default=None,
                   help="a .safetensors file of the reference: the scenario's architecture (default: Re-train), "
                        "or with --arch the factory's (required)")
    audit_args(c)
    c.add_argument("--tuned", default=None, help="with --method: TOML of tuned method values, or 'none'")

    def run_args(c):
        c.add_argument("--methods", default=None,
                       help="comma-separated methods or variants, e.g. rurk,rurk:lambda_f=0,gd, or all (default: the "
                            "scenario's run_methods, else every method)")
        audit_args(c)
        c.add_argument("--no-relearn", action="store_true", help="skip the re-learn-time metric")
        c.add_argument("--no-attacks", action="store_true",
                       help="skip the relearning-attack curve (relearn_curve.*); not with --robust")
        c.add_argument("--robust", action="store_true",
                       help="also the robust-accuracy curves under PGD (robust.*; minutes per model on a CPU)")
        c.add_argument("--retry-failed", action="store_true",
                       help="compute again the cells an earlier run recorded as failed or diverged")
        c.add_argument("--tuned", default=None, help="TOML of tuned method values (default: the scenario's), or 'none'")

    c = scenario_cmd("run", "the full experiment: every method x seed, metrics, audits, report", cmd_run)
    c.add_argument("--seeds", default=None,
                   help="comma-separated run seeds (default: --seed, else the scenario's, 131,42,7); not with --seed")
    run_args(c)
    _executor_args(c)
    c.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="K worker processes of one torch thread each on this machine (seeds and rows side by side; "
                        "the numbers equal a --threads 1 run) [default: 1: this process]")

    c = scenario_cmd("plan", "print the cell graph of a `rurk run`, the cost of each kind of cell (measured from the "
                             "store, else estimated) and the wall time on K workers", cmd_plan)
    c.add_argument("--seeds", default=None,
                   help="comma-separated run seeds (default: --seed, else the scenario's, 131,42,7); not with --seed")
    run_args(c)
    c.add_argument("--workers", default="1,2,4,8", metavar="K",
                   help="worker counts to estimate the wall time for, e.g. 8 or 1,2,4,8 [default: 1,2,4,8]")

    c = sub.add_parser("demo", help="the default main job: `rurk run fmnist5` sized for a CPU: three seeds, c = 32, "
                                    "the seeds side by side on the CPUs")
    c.add_argument("--out", default="runs", help="run directory [default: runs]")
    c.add_argument("--data-dir", default=None, help="directory holding the Fashion-MNIST idx files")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a scenario setting")
    c.add_argument("--draws", type=int, default=None, help="perturbed copies per sample [default: 32]")
    c.add_argument("--jobs", type=int, default=None, metavar="K",
                   help="worker processes of one torch thread each [default: min(3 seeds, the CPUs this process may "
                        "use)]; 1 runs everything in this process")
    c.add_argument("--device", default="auto")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--tuned", default=None, help="TOML of tuned method values (default: the scenario's), or 'none'")
    c.set_defaults(fn=cmd_demo, seed=None)

    c = scenario_cmd("tune", "search methods' hyperparameters (Optuna TPE) by the mean Avg. Gap over three tuning "
                             "forget sets, pruning a trial bad on the first; resumable (the study lives in "
                             "OUT/tune.db)", cmd_tune)
    c.add_argument("--methods", "--method", dest="methods", required=True,
                   help="methods to tune, comma-separated, or all (every method with a search space)")
    _action(c, "seed").help = (f"the tuning run seed, never one of the scenario's run seeds [default: "
                               f"{DEFAULT_TUNING_SEED}]")
    c.add_argument("--trials", type=int, default=24, help="finished trials per method the study should hold [default: 24]")
    c.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds per method")
    c.add_argument("--jobs", type=int, default=None,
                   help="trials evaluated at once (worker processes of one torch thread each; with --executor ray, "
                        "Ray tasks) [default: the CPUs this process may use]")
    c.add_argument("--no-prune", dest="prune", action="store_false",
                   help="run every trial on every tuning forget set (default: stop a trial whose gap on the first "
                        "one is worse than the median of earlier trials there)")
    c.add_argument("--split-seeds", default="1,2,3",
                   help="split seeds of the tuning forget sets, never the scenario's [default: 1,2,3]")
    c.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler [default: 0]")
    c.add_argument("--incumbent", action="store_true",
                   help="trial 0 runs the method's current settings (what `rurk run` uses: the scenario's tuned and "
                        "own values over its defaults), so the study shows whether tuning beats them (in the "
                        "provenance)")
    c.add_argument("--write", default=None, help="TOML file to write/update (default: OUT/tuned-SCENARIO.toml)")
    _executor_args(c)
    c.set_defaults(tuned="none")

    c = sub.add_parser("readme", help="write a README results block from a run's summary.json (or --check it)")
    c.add_argument("summary", help="a summary.json, or the run directory holding it (e.g. runs/fmnist5)")
    c.add_argument("--block", required=True, help="the block's name: <!-- BEGIN rurk:NAME --> ... <!-- END rurk:NAME -->")
    c.add_argument("--readme", default="README.md", help="the file holding the block [default: README.md]")
    c.add_argument("--rows", default=None, help="only these methods (comma-separated)")
    c.add_argument("--columns", default=None, help="only columns whose header starts with one of these")
    c.add_argument("--png", default=None, help="also copy the run's residual.png here")
    c.add_argument("--no-claims", action="store_true", help="leave the claims check out of the block")
    c.add_argument("--transfer", action="store_true", help="instead of the results: each tuned method's Avg. Gap on "
                   "its tuning forget sets (the tuned file's provenance) beside its Avg. Gap in this run")
    c.add_argument("--check", action="store_true", help="only compare; exit 1 when the block differs (exactly on the machine that wrote it, else beyond "
                        "the tolerances of rurk.readme)")
    c.set_defaults(fn=cmd_readme)

    c = sub.add_parser("iris-figure", help="the toy 2-D illustration (paper Fig. 1 spirit) as a PNG")
    c.add_argument("--png", default="iris-figure.png")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn=cmd_iris_figure)
    return p


def _pop_threads(argv: list[str]) -> tuple[list[str], str | None]:
    """``--threads N`` / ``--threads=N`` anywhere on the command line (every command takes it)."""
    out, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == "--threads" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith("--threads="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 some work failed (a method, a diverging training run), 2 a usage or input error,
    130 interrupted. Errors are one line; ``--debug`` (anywhere on the command line) shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    argv, threads = _pop_threads(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["RURK_PROGRESS"] = "0"
    try:
        # --threads, else RURK_THREADS / OMP_NUM_THREADS, else the CPUs this process may use; never more than those
        configure_threads(threads, source="--threads", warn=lambda m: print(f"rurk: warning: {m}", file=sys.stderr))
        _check_args(args)
        args.fn(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
    except BrokenPipeError:  # `rurk methods | head`: the reader left; stop quietly, as a shell tool does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, a shell tool's status when its reader leaves
    except sqlite3.DatabaseError as e:  # a store database that breaks after _check_args passed it
        if debug:
            raise
        print(f"rurk: error: store database {Path(getattr(args, 'out', '.')) / 'rurk.sqlite'}: {e}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, ValueError, TypeError, ImportError) as e:
        if debug:
            raise
        print(f"rurk: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # CellFailed, a diverging Original/Re-train, ...
        if debug:
            raise
        print(f"rurk: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rurk: interrupted; finished work is kept in the store, rerun to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
