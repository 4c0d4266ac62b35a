"""Every flag of a command, checked before any work starts, and what the commands build from them: the scenario
(with its tuned values and --set overrides), the seeds, the audit's settings and a run's options."""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from ..config import (
    MAX_BOOTSTRAP,
    MAX_DRAWS,
    ConfigError,
    load_scenario,
    parse_overrides,
)
from ..data.loaders import BUNDLED
from ..run.experiment import (
    RunOptions,
    audit_settings,
    check_method_configs,
    check_method_tables,
)
from ..run.tuned import with_tuned
from ..store import check_safetensors

T = TypeVar("T")


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


def _check_writable(path: Path, what: str, *, folder: bool = True) -> None:
    """An existing ``path`` in the store is a folder (or, with ``folder=False``, a file) this process may write: a
    file at OUT/locks, or a read-only OUT/NAME, used to end in a traceback, the latter only when the report was
    written after all the work."""
    if not path.exists() and not path.is_symlink():
        return
    if folder and not path.is_dir():
        raise _refuse(what, str(path), "a directory (it is a file; move it away or choose another --out)")
    if not folder and not path.is_file():
        raise _refuse(what, str(path), "a file (it is a directory; move it away or choose another --out)")
    if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
        raise _refuse(what, str(path), f"a {'directory' if folder else 'file'} you may write to (it is read-only)")


def _check_store(out: str) -> None:
    """The store's own folders and database are what they should be and writable (each written only once work has
    been done), and an existing store database opens and passes SQLite's quick check: a damaged rurk.sqlite used to
    end in a traceback once the command had started."""
    root = Path(out)
    for name in ("locks", "models", "splits"):
        _check_writable(root / name, f"store folder {name}/")
    db = root / "rurk.sqlite"
    _check_writable(db, "store database", folder=False)
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
    if given("draws") is not None and args.draws > MAX_DRAWS:
        raise _refuse("--draws", args.draws, f"an integer from 1 to {MAX_DRAWS} (copies per sample; the audit holds "
                                             "them in memory)")
    if given("bootstrap") is not None and not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise _refuse("--bootstrap", args.bootstrap, f"an integer from 0 to {MAX_BOOTSTRAP} (resamples)")
    lists = {"seeds": (_nonneg_int, "comma-separated integers >= 0, e.g. 131,42,7"),
             "split_seeds": (_nonneg_int, "comma-separated integers >= 0, e.g. 1,2"),
             "workers": (_positive_int, "comma-separated integers >= 1, e.g. 8 or 1,2,4,8"),
             "methods": (str, "comma-separated methods or variants, e.g. rurk,gd,rurk:lambda_f=0 or all "
                              "(see `rurk methods`)"),
             "taus": (_tau, "comma-separated numbers >= 0 (pixel units), e.g. 0,0.01,0.03"),
             "rows": (str, "comma-separated method names, e.g. original,retrain,rurk"),
             "png_rows": (str, "comma-separated method names, e.g. original,retrain,rurk"),
             "columns": (str, "comma-separated column prefixes, e.g. Retain,r_pooled")}
    for name, (parse, expected) in lists.items():
        if isinstance(given(name), str):
            setattr(args, name, _items(f"--{name.replace('_', '-')}", given(name), parse, expected))
    if isinstance(given("reference"), list):  # `rurk audit --reference` may be given once: a file, or none
        if len(args.reference) > 1:
            raise _refuse("--reference", args.reference, "one reference: a .safetensors file, or none to audit without "
                                                         "Re-train (not both)")
        args.reference = args.reference[0]
    if given("reference") == "none":
        for flag in ("robust",):
            if given(flag):
                raise ConfigError(f"--{flag} with --reference none: expected a reference model (--{flag} compares the "
                                  "audited model with it)")
    for name in ("unlearned", "reference", "original"):
        if given(name) is not None and given(name) != "none":
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
    check_method_tables(scenario.methods)  # the scenario's own tables and --set's, before the tuned ones join them
    scenario = with_tuned(scenario, getattr(args, "tuned", None))
    check_method_configs(scenario)  # every [methods.*] table builds its method's config, not only the run's
    if getattr(args, "out", None) is not None:
        _check_writable(Path(args.out) / scenario.name, "the scenario's report folder")
    return scenario


def _seeds(args, scenario) -> list[int]:
    """--seeds (parsed by :func:`_check_args`), else --seed, else the scenario's first run seed."""
    if getattr(args, "seeds", None) is not None:
        return list(args.seeds)
    if getattr(args, "seed", None) is not None:
        return [args.seed]
    return list(scenario.seeds.run[:1])


def _audit_spec(args, scenario):
    """The one AuditSpec of `rurk audit`/`run`/`demo`: the scenario's [audit] table with the command's flags."""
    return audit_settings(scenario, _audit_options(args, RunOptions(), scenario))


def _audit_options(args, opts, scenario):
    """``opts`` with the command's audit flags (None where a flag is not given; --probe-set as ``probe_params``).
    The scenario's [audit] table fills the rest — its ``noise_seed``, and its ``probe_params`` while the probe is
    the table's, --probe-set adding to them — in one place, :func:`rurk.audit.spec.audit_spec`, which
    :func:`rurk.run.experiment.audit_settings` calls for the command line and the library alike."""
    return replace(opts, probe=getattr(args, "probe", None),
                   probe_params=dict(parse_overrides(getattr(args, "probe_set", None))),
                   taus=getattr(args, "taus", None), draws=getattr(args, "draws", None),
                   bootstrap=getattr(args, "bootstrap", None), noise_seed=getattr(args, "noise_seed", None))


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


