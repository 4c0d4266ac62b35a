"""`rurk readme`: the README's results blocks are generated from a run's ``summary.json``, never typed.

A block sits between ``<!-- BEGIN rurk:NAME -->`` and ``<!-- END rurk:NAME -->`` in the README. :func:`render`
writes it from the summary (the main table, the residual-knowledge columns, the claims check, the seeds and the
machine it was computed on); ``rurk readme SUMMARY --block NAME`` replaces it in place, ``--check`` only compares
(CI runs that against a fresh ``rurk demo``).

**The check is honest on any CPU** (:func:`compare`). Training is chaotic: different vector instructions round
differently and 60 epochs amplify it, so numbers are bit-identical only on the same machine in the sense of
:mod:`rurk.machine` (CPU vendor/family/model/stepping and SIMD flags, torch's dispatch, the torch and numpy builds,
thread count, device) — one CPU model *name* covers several generations. Each block therefore records a readable
*machine line* and, in an HTML comment, the digest of the whole fingerprint of the cells it was computed from.

- Same fingerprint: the block must be **identical** (any difference is a change of the code's numbers).
- Otherwise every number is compared within a tolerance derived from the run-to-run spread, and each number
  that moved is reported with its tolerance. A cell that shows ``mean ± std`` over n seeds gets
  ``max(FLOOR, Z · √(1/n₁ + 1/n₂) · max(std₁, std₂))`` — the spread of a difference of two n-seed means, from
  the larger of the two blocks' own seed spreads, at ``Z`` = 4 — and a cell without a spread gets its column's
  floor. The floors (:data:`FLOORS`) are the smallest differences we treat as noise; see
  docs/design.md "The README check" for how they were measured. Rows, columns, seeds, c and probe must match
  exactly. A claim's verdict may move one step (holds ↔ inconclusive ↔ does not hold) — a boundary case — but
  never from holds to does not hold or back.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .claims import claims_markdown
from .report import _fmt, main_table, markdown


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
             f"sample, `{a.get('probe')}` probe; rurk {run.get('versions', {}).get('rurk')}.",
             machine_line(run), *fingerprint_line(run), "", markdown(header, keep_rows), ""]
    if claims:
        lines += ["Claims check (generated; rules in `rurk.claims`):", "", claims_markdown(summary["claims"]), ""]
    return "\n".join(lines)


def render_transfer(summary: dict, tuned: dict) -> str:
    """How well each tuned method transfers: its Avg. Gap on the tuning forget sets (the best trial of ``rurk
    tune``, from the tuned file's provenance) beside its Avg. Gap in this run (another forget set and other seeds).
    ``tuned`` is :func:`rurk.tune.read_tuned`'s ``{method: {"values", "provenance"}}``."""
    header = ["method", "tuned on (split seeds; seed)", "Avg. Gap per tuning forget set", "Avg. Gap there (mean)",
              "Avg. Gap here", "here − there"]
    body = []
    for m in sorted(tuned):
        prov, entry = tuned[m]["provenance"], summary["methods"].get(m)
        best = prov.get("best") or {}
        there, here = best.get("avg_gap"), (entry or {}).get("avg_gap")
        body.append([m, f"{', '.join(map(str, prov.get('split_seeds', [])))}; {prov.get('tuning_seed', '–')}",
                     " / ".join(f"{g:.2f}" for g in best.get("gaps") or []) or "–",
                     _fmt(there), _fmt(here), "–" if None in (here, there) else f"{here - there:+.2f}"])
    seeds = summary.get("seeds", [])
    return "\n".join([f"Tuned file `{summary.get('run', {}).get('tuned')}` against this run: split seed "
                      f"{summary.get('run', {}).get('split_seed', '?')}, seeds {', '.join(map(str, seeds))}.", "",
                      markdown(header, body), ""])


def machine_line(run: dict) -> str:
    """``Machine: CPU, N torch threads, torch V, device D.`` — the readable form of what a block's numbers are
    bit-identical on (the whole fingerprint is :func:`fingerprint_line`'s)."""
    threads = run.get("threads")
    if isinstance(threads, (list, tuple)):
        threads = "/".join(map(str, threads))
    return (f"Machine: {run.get('cpu') or 'unknown CPU'}, {threads if threads is not None else '?'} torch threads, "
            f"torch {run.get('versions', {}).get('torch')}, device {run.get('device')}.")


FINGERPRINT = re.compile(r"<!-- rurk:fingerprint (\w+) -->")


def fingerprint_line(run: dict) -> list[str]:
    """``<!-- rurk:fingerprint DIGEST -->`` (invisible in the rendered README): the digest of the whole machine
    fingerprint of the run's cells (:func:`rurk.report.machine_of`); none when a cell does not name its machine."""
    digest = (run.get("machine") or {}).get("digest")
    return [f"<!-- rurk:fingerprint {digest} -->"] if digest else []


# ---------------------------------------------------------------------------------------------- the check
#: z of the tolerance on a difference of two means (decision: 4 keeps a false alarm over a ~200-cell block rare).
Z = 4.0
#: The smallest difference treated as noise, per column kind (points; epochs; ratio). Measured: see
#: docs/design.md "The README check" (between thread counts and CPUs, cells without a seed spread).
FLOORS = {"pct": 3.0, "gap": 2.5, "epochs": 2.0, "r": 0.04, "prev": 12.0}
VERDICTS = ("holds", "inconclusive", "does not hold")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def _kind(column: str) -> str:
    if column.startswith("r_pooled") or column.startswith("r_paper"):
        return "r"
    if column.startswith("prevalence"):
        return "prev"
    if column.startswith("Avg. Gap"):
        return "gap"
    if column.startswith("Re-learn"):
        return "epochs"
    return "pct"


def _cell(text: str) -> tuple[float | None, float]:
    """(value, spread) of a table cell: ``mean ± std (gap)`` -> (mean, std); ``54% (33%)`` -> (54, 0); ``–`` ->
    (None, 0). ``>30`` (censored re-learn) -> (inf, 0)."""
    text = text.strip()
    if text.startswith(">"):
        return math.inf, 0.0
    nums = _NUM.findall(text)
    if not nums:
        return None, 0.0
    spread = float(nums[1]) if "±" in text and len(nums) > 1 else 0.0
    return float(nums[0]), spread


@dataclass
class Parsed:
    """A block taken apart: its first line, machine line, n, table and claims."""

    head: str = ""
    machine: str = ""
    fingerprint: str | None = None
    n: int = 1
    header: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)
    claims: list[tuple[str, str]] = field(default_factory=list)  # (verdict, claim text)


def parse(block: str) -> Parsed:
    p = Parsed()
    for line in block.splitlines():
        if line.startswith("Seeds "):
            p.head = line
            m = re.search(r"\(n = (\d+)\)", line)
            p.n = int(m.group(1)) if m else 1
        elif line.startswith("Machine: "):
            p.machine = line
        elif FINGERPRINT.fullmatch(line.strip()):
            p.fingerprint = FINGERPRINT.fullmatch(line.strip()).group(1)
        elif line.startswith("| ") and not p.header:
            p.header = [c.strip() for c in line.strip("| ").split(" | ")]
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip("| ").split(" | ")]
            p.rows[cells[0].split(" (")[0]] = cells
        elif line.startswith("- **"):
            m = re.match(r"- \*\*(.+?)\*\* — (.+?): ", line)
            if m:
                p.claims.append((m.group(1), m.group(2)))
    return p


@dataclass
class Check:
    """The outcome of comparing a committed block with a fresh one."""

    ok: bool
    mode: str  # "exact" (same fingerprint) or "tolerant"
    problems: list[str]  # what fails the check
    moved: list[str]  # numbers that moved within tolerance, verdicts that moved one step

    def report(self) -> str:
        lines = [f"{'OK' if self.ok else 'FAILED'} ({self.mode} comparison)"]
        lines += [f"  beyond tolerance: {p}" for p in self.problems]
        lines += [f"  moved within tolerance: {m}" for m in self.moved]
        return "\n".join(lines)


def compare(committed: str, fresh: str) -> Check:
    """Compare a committed block with one rendered from a fresh summary (see the module docstring)."""
    a, b = parse(committed), parse(fresh)
    if a.fingerprint and a.fingerprint == b.fingerprint:
        if committed == fresh:
            return Check(True, "exact", [], [])
        diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), "committed", "fresh", lineterm="")
        return Check(False, "exact", ["same machine, so the block must be identical:\n" + "\n".join(diff)], [])
    problems, moved = [], []
    if not a.fingerprint:
        moved.append("the committed block has no machine fingerprint (written by an older rurk, or from cells that do "
                     "not name their machine): compared within tolerance")
    strip = lambda h: re.sub(r"; rurk \S+\.$", "", h)  # noqa: E731 — the rurk version may differ
    if strip(a.head) != strip(b.head):
        problems.append(f"run settings differ: {a.head!r} vs {b.head!r}")
    if a.header != b.header:
        problems.append(f"columns differ: {a.header} vs {b.header}")
    if set(a.rows) != set(b.rows):
        problems.append(f"rows differ: only committed {sorted(set(a.rows) - set(b.rows))}, "
                        f"only fresh {sorted(set(b.rows) - set(a.rows))}")
    if not problems:
        for name, ra in a.rows.items():
            _compare_row(name, ra, b.rows[name], a.header, a.n, b.n, problems, moved)
    _compare_claims(a.claims, b.claims, problems, moved)
    return Check(not problems, "tolerant", problems, moved)


def tolerance(kind: str, n_a: int, n_b: int, sd_a: float, sd_b: float) -> float:
    """The largest |difference| of one cell treated as noise (see the module docstring)."""
    return max(FLOORS[kind], Z * math.sqrt(1 / n_a + 1 / n_b) * max(sd_a, sd_b))


def _compare_row(name, ra, rb, header, n_a, n_b, problems, moved) -> None:
    if ra[0] != rb[0]:
        moved.append(f"{name}: row marks {ra[0]!r} -> {rb[0]!r}")
    for col, ca, cb in zip(header[1:], ra[1:], rb[1:]):
        (va, sa), (vb, sb) = _cell(ca), _cell(cb)
        if va is None or vb is None or math.isinf(va) or math.isinf(vb):
            if (va is None) != (vb is None) or (va is not None and math.isinf(va) != math.isinf(vb)):
                problems.append(f"{name} / {col}: {ca!r} vs {cb!r}")
            continue
        kind = _kind(col)
        d, tol = vb - va, tolerance(kind, n_a, n_b, sa, sb)
        if abs(d) > tol:
            problems.append(f"{name} / {col}: {va:g} -> {vb:g} (moved {d:+.3g}, tolerance {tol:.3g})")
        elif d:
            moved.append(f"{name} / {col}: {va:g} -> {vb:g} ({d:+.3g}, tolerance {tol:.3g})")


def _compare_claims(ca, cb, problems, moved) -> None:
    if [c for _, c in ca] != [c for _, c in cb]:
        problems.append(f"claims differ: {[c for _, c in ca]} vs {[c for _, c in cb]}")
        return
    for (va, text), (vb, _) in zip(ca, cb):
        if va == vb:
            continue
        step = abs(VERDICTS.index(va.split(" (")[0]) - VERDICTS.index(vb.split(" (")[0])) \
            if va.split(" (")[0] in VERDICTS and vb.split(" (")[0] in VERDICTS else 2
        (moved if step == 1 else problems).append(f"claim {text!r}: {va} -> {vb}")


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN rurk:{re.escape(name)} -->\n)(.*?)(<!-- END rurk:{re.escape(name)} -->)", re.S)


def read_block(readme: str | Path, name: str) -> str:
    """The committed text of block ``name`` (an error naming the file when it has none)."""
    path = Path(readme)
    m = _pattern(name).search(path.read_text())
    if m is None:
        raise ValueError(f"{path}: no block <!-- BEGIN rurk:{name} --> ... <!-- END rurk:{name} -->")
    return m.group(2)


def update(readme: str | Path, name: str, text: str) -> bool:
    """Replace block ``name`` of ``readme`` with ``text``. Returns whether it changed."""
    path = Path(readme)
    old, body = path.read_text(), text if text.endswith("\n") else text + "\n"
    m = _pattern(name).search(old)
    if m is None:
        raise ValueError(f"{path}: no block <!-- BEGIN rurk:{name} --> ... <!-- END rurk:{name} -->")
    if m.group(2) == body:
        return False
    path.write_text(old[: m.start(2)] + body + old[m.end(2):])
    return True
