"""`rurk readme`: the README's results blocks are generated from a run's ``summary.json``, never typed.

A block sits between ``<!-- BEGIN rurk:NAME -->`` and ``<!-- END rurk:NAME -->`` in the README. :func:`render`
writes it from the summary (the main table, the residual-knowledge columns, the claims check, the seeds and the
run's wall time); ``rurk readme SUMMARY --block NAME`` replaces it in place, ``--check`` only compares and fails
when the committed block differs from what the summary gives (CI runs that against a fresh ``rurk demo``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from .claims import claims_markdown
from .report import main_table, markdown


def render(summary: dict, *, rows: list[str] | None = None, columns: list[str] | None = None,
           claims: bool = True) -> str:
    """The block's markdown: the main table (optionally only ``rows``/``columns``, by method name / header
    prefix) and the claims check."""
    header, body = main_table(summary)
    keep_rows = [r for r in body if rows is None or r[0].split(" (")[0] in rows]
    # wall times differ from run to run, so they stay out of a block that CI compares
    idx = [0] + [i for i, h in enumerate(header) if i and h != "wall (s)"
                 and (columns is None or any(h.startswith(c) for c in columns))]
    header, keep_rows = [header[i] for i in idx], [[r[i] for i in idx] for r in keep_rows]
    run = summary.get("run", {})
    seeds = summary.get("seeds", [])
    a = run.get("audit", {})
    lines = [f"Seeds {', '.join(map(str, seeds))} (n = {len(seeds)}); c = {a.get('draws')} perturbed copies per "
             f"sample, `{a.get('probe')}` probe; rurk {run.get('versions', {}).get('rurk')}, "
             f"torch {run.get('versions', {}).get('torch')}, {run.get('device')}.", "",
             markdown(header, keep_rows), ""]
    if claims:
        lines += ["Claims check (generated; rules in `rurk.claims`):", "", claims_markdown(summary["claims"]), ""]
    return "\n".join(lines)


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN rurk:{re.escape(name)} -->\n)(.*?)(<!-- END rurk:{re.escape(name)} -->)", re.S)


def update(readme: str | Path, name: str, text: str, *, check: bool = False) -> tuple[bool, str]:
    """Replace block ``name`` of ``readme`` with ``text`` (or, with ``check``, only compare). Returns
    (changed, unified diff)."""
    path = Path(readme)
    old = path.read_text()
    m = _pattern(name).search(old)
    if m is None:
        raise ValueError(f"{path}: no block <!-- BEGIN rurk:{name} --> ... <!-- END rurk:{name} -->")
    body = text if text.endswith("\n") else text + "\n"
    if m.group(2) == body:
        return False, ""
    diff = "".join(difflib.unified_diff(m.group(2).splitlines(True), body.splitlines(True),
                                        f"README block {name} (committed)", f"block {name} (from the summary)"))
    if not check:
        path.write_text(old[: m.start(2)] + body + old[m.end(2):])
    return True, diff
