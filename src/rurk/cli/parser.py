"""`rurk`'s argument parser. It imports nothing heavy (no torch, scikit-learn or Optuna): `rurk --version`, `--help`
and usage errors answer at once, and a worker process that re-imports the command line starts light. Each
subcommand names the function that runs it as ``"module:function"`` of :mod:`rurk.cli`, imported only then."""

from __future__ import annotations

import argparse
import sys

from .. import __version__

#: `--bootstrap`'s upper bound (rurk.config.MAX_BOOTSTRAP, not imported here: rurk.config imports torch;
#: tests/test_cli_checks.py keeps the two equal).
MAX_BOOTSTRAP = 100_000


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


#: `rurk tune`'s default tuning run seed (rurk.run.study.DEFAULT_TUNING_SEED, not imported here: rurk.run.tune takes a
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
    c.add_argument("--retain", default=None, metavar="FILE.npz|DIR",
                   help="with --arch: retain samples (--robust; without Re-train, they make the estimate better)")
    c.add_argument("--original", default=None, metavar="FILE.safetensors",
                   help="with --arch, without --reference: the model before unlearning, whose accuracy on --calibration "
                        "estimates Re-train's")
    c.add_argument("--calibration", default=None, metavar="FILE.npz|DIR",
                   help="with --arch, without --reference: held-out images of the forget set's classes that no model "
                        "trained on (at least 30 per class)")
    c.add_argument("--test", default=None, metavar="FILE.npz|DIR", help="with --arch --robust: test samples")
    c.add_argument("--gallery", type=int, default=16, metavar="K",
                   help="samples in each group of the leak gallery leaks-<probe>.png [default: 16]")
    c.add_argument("--robust", action="store_true",
                   help="also the accuracy under untargeted and targeted L-inf PGD (10 steps, alpha = eps/4) of both "
                        "models (robust.csv, robust.png); with a scenario on forget, retain and test (at most 500 each)")
    c.add_argument("--robust-eps", default=None, metavar="LIST",
                   help="the eps grid of --robust, e.g. 0,2/255,4/255,8/255 [default]")


def _version() -> str:
    """``rurk --version``: rurk's version and torch's (numbers are bit-identical only at the same torch), read
    from the installed package's metadata: no command line imports torch before it has to."""
    from importlib import metadata

    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"rurk {__version__} (torch {torch}, Python {sys.version.split()[0]})"


def _scenario_cmd(sub, name: str, help: str, fn):
    """A subcommand on one scenario: the scenario, seed, store, data, overrides, device and quiet flags."""
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


def _audit_args(c) -> None:
    """The audit's settings, shared by `audit`, `run` and `plan`."""
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


def _run_args(c) -> None:
    """What a `run` computes, shared by `run` and `plan`."""
    c.add_argument("--methods", default=None,
                   help="comma-separated methods or variants, e.g. rurk,rurk:lambda_f=0,gd, or all (default: the "
                        "scenario's run_methods, else every method)")
    _audit_args(c)
    c.add_argument("--no-relearn", action="store_true", help="skip the re-learn-time metric")
    c.add_argument("--no-attacks", action="store_true",
                   help="skip the relearning-attack curve (relearn_curve.*); not with --robust")
    c.add_argument("--robust", action="store_true",
                   help="also the robust-accuracy curves under PGD (robust.*; minutes per model on a CPU)")
    c.add_argument("--retry-failed", action="store_true",
                   help="compute again the cells an earlier run recorded as failed or diverged")
    c.add_argument("--tuned", default=None, help="TOML of tuned method values (default: the scenario's), or 'none'")


def _add_scenario_commands(sub) -> None:
    """`scenarios`, `train`, `methods`, `unlearn` and `audit`."""
    c = sub.add_parser("scenarios", help="list the shipped scenarios")
    c.set_defaults(fn="commands:cmd_scenarios")
    _scenario_cmd(sub, "train", "train (or reuse) Original and Re-train and print their accuracies", "commands:cmd_train")
    c = sub.add_parser("methods", help="list the unlearning methods with their defaults")
    c.set_defaults(fn="commands:cmd_methods")

    c = _scenario_cmd(sub, "unlearn", "unlearn the forget set from Original with one method; save the checkpoint and "
                                "print accuracies", "commands:cmd_unlearn")
    c.add_argument("--method", required=True, help="a method name or variant, e.g. rurk:lambda_f=0 (see `rurk methods`)")
    c.add_argument("--tuned", default=None, help="TOML of tuned method values, or 'none'")

    c = _scenario_cmd(sub, "audit", "audit residual knowledge of an unlearned model against Re-train", "audit:cmd_audit")
    _audit_parser(c)
    c.add_argument("--method", default=None,
                   help="audit this method's cached unlearned model (run it if needed); not with --unlearned")
    c.add_argument("--unlearned", default=None,
                   help="a .safetensors file of the audited model: the scenario's architecture (default: Original), "
                        "or with --arch the factory's")
    c.add_argument("--reference", action="append", default=None, metavar="FILE.safetensors|none",
                   help="a .safetensors file of the reference: the scenario's architecture (default: Re-train), "
                        "or with --arch the factory's; none: audit without Re-train, against the estimate of its "
                        "accuracy (needs the calibration set: the scenario's, or --original and --calibration)")
    _audit_args(c)
    c.add_argument("--tuned", default=None, help="with --method: TOML of tuned method values, or 'none'")


def _add_run_commands(sub) -> None:
    """`run`, `plan` and `demo`."""
    c = _scenario_cmd(sub, "run", "the full experiment: every method x seed, metrics, audits, report", "commands:cmd_run")
    c.add_argument("--seeds", default=None,
                   help="comma-separated run seeds (default: --seed, else the scenario's, 131,42,7); not with --seed")
    _run_args(c)
    _executor_args(c)
    c.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="K worker processes of one torch thread each on this machine (seeds and rows side by side; "
                        "the numbers equal a --threads 1 run) [default: 1: this process]")

    c = _scenario_cmd(sub, "plan", "print the cell graph of a `rurk run`, the cost of each kind of cell (measured from the "
                             "store, else estimated) and the wall time on K workers", "commands:cmd_plan")
    c.add_argument("--seeds", default=None,
                   help="comma-separated run seeds (default: --seed, else the scenario's, 131,42,7); not with --seed")
    _run_args(c)
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
    c.set_defaults(fn="commands:cmd_demo", seed=None)


def _add_tune(sub) -> None:
    """`tune`."""
    c = _scenario_cmd(sub, "tune", "search methods' hyperparameters (Optuna TPE) by the mean Avg. Gap over three tuning "
                             "forget sets, pruning a trial bad on the first; resumable (the study lives in "
                             "OUT/tune.db)", "commands:cmd_tune")
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
    c.add_argument("--objective", choices=("gap", "profile"), default="gap",
                   help="what a trial is scored by: gap = the mean Avg. Gap to Re-train; profile = Avg. Gap + 20 x the "
                        "mean |r_pooled - 1| at tau 0.03, 0.1, 0.2, 0.3 (residual knowledge at every tau) [default: gap]")
    c.add_argument("--write", default=None, help="TOML file to write/update (default: OUT/tuned-SCENARIO.toml)")
    _executor_args(c)
    c.set_defaults(tuned="none")


def _add_report_commands(sub) -> None:
    """`readme` and `iris-figure`."""
    c = sub.add_parser("readme", help="write a README results block from a run's summary.json (or --check it)")
    c.add_argument("summary", help="a summary.json, or the run directory holding it (e.g. runs/fmnist5)")
    c.add_argument("--block", required=True, help="the block's name: <!-- BEGIN rurk:NAME --> ... <!-- END rurk:NAME -->")
    c.add_argument("--readme", default="README.md", help="the file holding the block [default: README.md]")
    c.add_argument("--rows", default=None, help="only these methods (comma-separated)")
    c.add_argument("--columns", default=None, help="only columns whose header starts with one of these")
    c.add_argument("--png", default=None, help="also copy the run's residual.png here")
    c.add_argument("--png-rows", default=None, metavar="LIST",
                   help="with --png: draw r_tau of only these rows (comma-separated) instead of copying residual.png")
    c.add_argument("--no-claims", action="store_true", help="leave the claims check out of the block")
    c.add_argument("--transfer", action="store_true", help="instead of the results: each tuned method's Avg. Gap on "
                   "its tuning forget sets (the tuned file's provenance) beside its Avg. Gap in this run")
    c.add_argument("--check", action="store_true", help="only compare; exit 1 when the block differs (exactly on the machine that wrote it, else beyond "
                        "the tolerances of rurk.report.readme)")
    c.set_defaults(fn="commands:cmd_readme")

    c = sub.add_parser("iris-figure", help="the toy 2-D illustration (paper Fig. 1 spirit) as a PNG")
    c.add_argument("--png", default="iris-figure.png")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn="commands:cmd_iris_figure")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rurk",
        description="Robust machine unlearning: train Original/Re-train, unlearn, audit residual knowledge.",
        epilog="Add --debug anywhere to see a traceback instead of a one-line error, and --threads N to set torch's "
               "CPU threads (default: RURK_THREADS, else the CPUs this process may use; never more than those).",
    )
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for add in (_add_scenario_commands, _add_run_commands, _add_tune, _add_report_commands):
        add(sub)
    return p


