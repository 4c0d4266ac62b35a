"""Tuned values: the TOML files `rurk tune` writes (values and the study as provenance) and `rurk run` reads."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from ..config import ConfigError, Scenario, from_dict, read_toml
from ..methods.base import get_method
from .experiment import check_method_tables, scenario_with


def read_tuned(path: Path) -> dict:
    """{method: {"values": {...}, "provenance": {...}}} of a tuned TOML file, provenance decoded."""
    raw = read_toml(path, "tuned file")
    prov = raw.get("provenance", {})
    return {m: {"values": v, "provenance": json.loads(prov[m]) if m in prov else {}} for m, v in raw.get("methods", {}).items()}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _write(path: Path, scenario: str, entries: dict) -> None:
    lines = [f"# Tuned method settings for {scenario}, written by `rurk tune` (Optuna TPE; objective: mean Avg. Gap",
             "# to Re-train over tuning forget sets and a seed that are never reported; [provenance] holds the",
             "# sampler and seed, spaces, every trial, the best trial and the parameter importances).", ""]
    for m, e in sorted(entries.items()):
        lines.append(f"[methods.{m}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in e["values"].items()]
        lines.append("")
    lines.append("[provenance]  # JSON per method")
    for m, e in sorted(entries.items()):
        lines.append(f"{m} = {json.dumps(json.dumps(e['provenance'], sort_keys=True))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def tuned_path(name: str | Path) -> Path:
    """A tuned TOML by path, or shipped in the package (``rurk/tuned/NAME``)."""
    p = Path(name)
    if p.exists():
        return p
    shipped = Path(str(resources.files("rurk") / "tuned")) / p.name
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"tuned settings {str(name)!r} not found (looked at {p} and {shipped})")


def with_tuned(scenario: Scenario, name: str | Path | None = None) -> Scenario:
    """The scenario as `rurk run` uses it: the tuned values of ``name`` (default: the scenario's own ``tuned``
    file; ``"none"`` or unset: none) merged under its own [methods] table."""
    name = name or scenario.tuned
    return scenario if not name or name == "none" else scenario_with(scenario, load_tuned(name))


def load_tuned(name: str | Path) -> dict:
    """{method: {field: value}} from a tuned TOML file; validated against each method's config."""
    path = tuned_path(name)
    methods = read_toml(path, "tuned file").get("methods", {})
    if not isinstance(methods, dict):
        raise ConfigError(f"tuned file {path}: methods = {methods!r}: expected tables [methods.NAME]")
    check_method_tables(methods, f"tuned file {path}")
    for m, values in methods.items():
        spec = get_method(m)
        from_dict(spec.config_cls, values, prefix=f"{path.name}: methods.{m}")
    return methods
