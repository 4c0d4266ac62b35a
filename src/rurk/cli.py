"""The ``rurk`` command line: parses arguments, loads a scenario, calls one function per subcommand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import ConfigError, load_scenario, parse_overrides


def _scenario(args):
    overrides = parse_overrides(args.set)
    if getattr(args, "data_dir", None):
        overrides.setdefault("data", {})["data_dir"] = args.data_dir
    return load_scenario(args.scenario, overrides)


def _seeds(args, scenario) -> list[int]:
    if getattr(args, "seeds", None):
        try:
            return [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 131,42,7") from None
    if getattr(args, "seed", None) is not None:
        return [args.seed]
    return list(scenario.seeds.run[:1])


def cmd_scenarios(args) -> None:
    from .config import list_scenarios

    for name, desc in list_scenarios().items():
        print(f"{name:16s} {desc}")


def cmd_train(args) -> None:
    from .pipeline import prepare, reference_models
    from .store import Store

    scenario = _scenario(args)
    store = Store(args.out)
    prepared = prepare(scenario, store)
    print(f"{scenario.name}: |S_r|={len(prepared.data.retain)} |S_f|={len(prepared.data.forget)} "
          f"|test|={len(prepared.data.test)} classes={list(prepared.split.classes)} split={prepared.split.digest()[:12]}")
    for seed in _seeds(args, scenario):
        refs = reference_models(scenario, prepared, seed, store, device=args.device, progress=not args.quiet)
        print(f"seed {seed}: {'model':9s} {'retain':>7s} {'forget':>7s} {'test':>7s}   checkpoint")
        for kind, acc in refs.accuracies.items():
            print(f"seed {seed}: {kind:9s} {acc['retain']:7.2%} {acc['forget']:7.2%} {acc['test']:7.2%}   "
                  f"{store.model_dir(refs.keys[kind])}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rurk",
        description="Robust machine unlearning: train Original/Re-train, unlearn, audit residual knowledge.",
    )
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ["RURK_PROGRESS"] = "0"
    try:
        args.fn(args)
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"rurk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rurk: interrupted; finished work is kept in the store, rerun to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
