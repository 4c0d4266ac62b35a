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
- Otherwise (another CPU generation, other kernels, another thread count) every cell is compared within a
  tolerance and each number that moved is listed. The block carries each cell's per-seed values (an HTML
  comment, :func:`seeds_line`); the check compares their **medians** — one seed that erases the class on one
  machine and not on another moves a 3-seed mean by 20 points, not the median — and the tolerance is
  ``max(floor, min(Z · √(1/n₁ + 1/n₂) · sd, cap))`` with ``sd`` the **committed** block's seed spread (a fresh
  run cannot widen its own tolerance), ``Z`` = 4, per-column floors (:data:`FLOORS`, the smallest difference
  treated as noise) and caps (:data:`CAPS`, so that a broken method fails even in the noisiest row). Besides:
  Avg. Gap may not change by more than ×:data:`GAP_RATIO`; r at τ ≤ 0.03 may not cross 1 and land more than
  :data:`CROSS` beyond it; a row that failed on a seed fails the check. Rows, columns, seeds, c and probe must
  match exactly. A claim's verdict may move one step into or out of *inconclusive* (a boundary case) only when
  its evidence moved and its intervals still overlap the committed ones; never holds ↔ does not hold. The
  constants were measured on honest runs with other kernels (docs/design.md "The README check"). Blocks without
  per-seed values (older) are compared on their means.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .claims import claims_markdown
from .tables import _fmt, main_table, markdown, worst_r


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
             machine_line(run), *fingerprint_line(run), "", markdown(header, keep_rows), "",
             seeds_line(summary, header, [r[0].split(" (")[0] for r in keep_rows]), ""]
    if claims:
        lines += ["Claims check (generated; rules in `rurk.report.claims`):", "", claims_markdown(summary["claims"]), ""]
    return "\n".join(lines)


def render_transfer(summary: dict, tuned: dict) -> str:
    """How well each tuned method transfers: its Avg. Gap on the tuning forget sets (the best trial of ``rurk
    tune``, from the tuned file's provenance) beside its Avg. Gap in this run (another forget set and other seeds).
    ``tuned`` is :func:`rurk.run.tuned.read_tuned`'s ``{method: {"values", "provenance"}}``."""
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
    fingerprint of the run's cells (:func:`rurk.report.summary.machine_of`); none when a cell does not name its machine."""
    digest = (run.get("machine") or {}).get("digest")
    return [f"<!-- rurk:fingerprint {digest} -->"] if digest else []


SEEDS = re.compile(r"<!-- rurk:seeds (\{.*\}) -->")


def seed_values(entry: dict, column: str, taus: list[float]) -> list[float | None] | None:
    """The per-seed values behind one cell of the main table (None for a seed whose cell failed), or None where the
    summary keeps no per-seed values for the column (re-learn time, prevalence)."""
    from ..audit.metric_specs import PCT_METRICS

    spec = next((m for m in PCT_METRICS if m.label == column), None)
    if spec is not None:
        return (entry.get(spec.key) or {}).get("per_seed")
    if column.startswith("Avg. Gap"):
        return (entry.get("avg_gap_per_seed") or {}).get("values")
    if column.startswith("worst"):
        return worst_r(entry.get("residual") or {}, taus) or None
    if column.startswith("class test acc"):
        c, tau = entry.get("collateral") or {}, _column_tau(column)
        if not c.get("test_per_seed") or tau not in c.get("taus", []):
            return None
        return [s[c["taus"].index(tau)] for s in c["test_per_seed"]]
    if column.startswith("Re-learn"):
        per_seed = (entry.get("relearn_epochs") or {}).get("per_seed")
        return None if not per_seed or None in per_seed else per_seed  # censored (>30) seeds: compared as shown
    tau, res = _column_tau(column), entry.get("residual") or {}
    field, scale = ("r_pooled_per_seed", 1.0) if column.startswith("r_pooled") else \
        ("prevalence_per_seed", 100.0) if column.startswith("prevalence") else (None, 1.0)
    per_seed = res.get(field) if field else None
    if tau is not None and per_seed and taus:
        i = min(range(len(taus)), key=lambda j: abs(taus[j] - tau))
        return [None if s[i] is None else scale * s[i] for s in per_seed]
    return None


def seeds_line(summary: dict, header: list[str], rows: list[str]) -> str:
    """``<!-- rurk:seeds {...} -->`` (invisible in the rendered README): each row's per-seed values of each column
    (rounded as shown), which the tolerant check compares seed by seed (:func:`compare`)."""
    taus = next((e["residual"]["taus"] for e in summary["methods"].values() if (e.get("residual") or {}).get("taus")),
                [])
    out = {}
    for name in rows:
        e = summary["methods"][name]
        cols = [seed_values(e, col, taus) for col in header[1:]]
        out[name] = [None if v is None else [None if x is None else round(float(x), 3) for x in v] for v in cols]
    return f"<!-- rurk:seeds {json.dumps(out, separators=(',', ':'))} -->"


# ---------------------------------------------------------------------------------------------- the check
#: z of the tolerance on a difference of two means (decision: 4 keeps a false alarm over a ~200-cell block rare).
Z = 4.0
#: The smallest difference treated as noise, per column kind (points; epochs; ratio). Measured: see
#: docs/design.md "The README check" (honest runs on other CPUs and dispatch paths, cells without a seed spread).
FLOORS = {"acc": 3.0, "forget": 3.0, "gap": 4.5, "epochs": 2.0, "r": 0.04, "prev": 50.0}
#: The largest tolerance any cell gets, however noisy its row (decision, measured: docs/design.md "The README
#: check"): above the largest honest move seen between machines, below what a broken method moves — retain or
#: test −30 points, Avg. Gap ×3, r across 1.
CAPS = {"acc": 20.0, "forget": 40.0, "gap": 25.0, "epochs": 8.0, "r": 0.3, "prev": 60.0}
#: Avg. Gap may not grow or shrink by more than this factor (when it moves by more than GAP_RATIO_MIN points),
#: whatever its tolerance: a calibrated method that misses its target on one more seed moved ×2.7 (+4 points)
#: between two honest runs, a broken one moves more.
GAP_RATIO, GAP_RATIO_MIN = 3.0, 1.0
#: An r column at τ ≤ this may not cross 1 and land more than :data:`CROSS` beyond it (residual knowledge turned
#: into over-forgetting or back), whatever its tolerance; larger τ are noisier (an honest run moved GD's r at
#: τ = 0.3 from 1.148 to 0.912).
CROSS_TAU, CROSS = 0.03, 0.1
#: r's floor grows by this per unit τ (see :func:`floor`)
R_FLOOR_SLOPE = 0.5
#: r's cap grows by this per unit τ (see :func:`cap`)
R_CAP_SLOPE = 1.5
VERDICTS = ("holds", "inconclusive", "does not hold")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_INTERVAL = re.compile(r"\[(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\]")


def _kind(column: str) -> str:
    if column.startswith(("r_pooled", "r_paper", "worst")):
        return "r"
    if column.startswith("prevalence"):
        return "prev"
    if column.startswith("Avg. Gap"):
        return "gap"
    if column.startswith("Re-learn"):
        return "epochs"
    if column.startswith(("Unlearn", "MIA")):
        return "forget"  # bimodal in noisy rows: one seed that erases the class moves a 3-seed mean by 30 points
    return "acc"


def _column_tau(column: str) -> float | None:
    m = re.search(r"τ[=≤](\d+(?:\.\d+)?)", column)  # "worst |r−1| τ≤0.3" spans up to its τ
    return float(m.group(1)) if m else None


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
    """A block taken apart: its first line, machine line and fingerprint, n, table and claims."""

    head: str = ""
    machine: str = ""
    fingerprint: str | None = None
    n: int = 1
    header: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)
    claims: list[tuple[str, str, str]] = field(default_factory=list)  # (verdict, claim text, evidence)
    seeds: dict[str, list] = field(default_factory=dict)  # row -> per column: its per-seed values (or None)


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
        elif SEEDS.fullmatch(line.strip()):
            p.seeds = json.loads(SEEDS.fullmatch(line.strip()).group(1))
        elif line.startswith("| ") and not p.header:
            p.header = [c.strip() for c in line.strip("| ").split(" | ")]
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip("| ").split(" | ")]
            p.rows[cells[0].split(" (")[0]] = cells
        elif line.startswith("- **"):
            m = re.match(r"- \*\*(.+?)\*\* — (.+?): (.*)$", line)
            if m:
                p.claims.append((m.group(1), m.group(2), m.group(3)))
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
            _compare_row(name, ra, b.rows[name], a.header, (a.n, b.n), (a.seeds.get(name), b.seeds.get(name)),
                         problems, moved)
    _compare_claims(a.claims, b.claims, problems, moved)
    return Check(not problems, "tolerant", problems, moved)


def floor(kind: str, tau: float | None = None) -> float:
    """The column's floor; r's grows with τ (noisier copies: honest runs moved stable rows' r at τ = 0.3 by up to
    0.07), ``FLOORS["r"] + R_FLOOR_SLOPE · τ``."""
    return FLOORS[kind] + (R_FLOOR_SLOPE * tau if kind == "r" and tau else 0.0)


def cap(kind: str, tau: float | None = None) -> float:
    """The column's cap; r's grows with τ like its floor (an honest run moved CF-k's median r at τ = 0.3 by 0.54:
    at large τ a noisy row's r spans most of [0, 1.3]), ``CAPS["r"] + R_CAP_SLOPE · τ``."""
    return CAPS[kind] + (R_CAP_SLOPE * tau if kind == "r" and tau else 0.0)


def tolerance(kind: str, n_a: int, n_b: int, sd_a: float, tau: float | None = None) -> float:
    """The largest |difference| of one cell treated as noise: Z standard errors of a difference of two n-seed
    statistics with the *committed* block's seed spread ``sd_a`` (a fresh run's own spread must not widen its
    tolerance), at least the column's floor and at most its cap."""
    return max(floor(kind, tau), min(Z * math.sqrt(1 / n_a + 1 / n_b) * sd_a, cap(kind, tau)))


def _stat(cell: str, seeds: list | None) -> tuple[float | None, float, str]:
    """(value, committed spread, what the value is) of one cell: the median of its per-seed values where the block
    carries them — one seed that erases the class on one CPU and not on another moves a 3-seed mean by 20 points
    but not the median — else the shown mean."""
    value, spread = _cell(cell)
    vals = [v for v in seeds or [] if v is not None]
    if vals and value is not None and not math.isinf(value):
        return float(statistics.median(vals)), float(statistics.pstdev(vals)), "median"
    return value, spread, "mean"


def _compare_row(name, ra, rb, header, ns, seeds, problems, moved) -> None:
    if ra[0] != rb[0]:
        failed = "failed" in rb[0] and "failed" not in ra[0]  # a seed that fails is never noise
        (problems if failed else moved).append(f"{name}: row marks {ra[0]!r} -> {rb[0]!r}")
    sa_cols, sb_cols = (s or [None] * (len(header) - 1) for s in seeds)
    for col, ca, cb, seeds_a, seeds_b in zip(header[1:], ra[1:], rb[1:], sa_cols, sb_cols):
        if seeds_a and seeds_b and None in seeds_b and None not in seeds_a:
            problems.append(f"{name} / {col}: a seed has no value (failed) where the committed block has all")
            continue
        both = seeds_a is not None and seeds_b is not None
        (va, sa, what), (vb, _, _) = _stat(ca, seeds_a if both else None), _stat(cb, seeds_b if both else None)
        if va is None or vb is None or math.isinf(va) or math.isinf(vb):
            if (va is None) != (vb is None) or (va is not None and math.isinf(va) != math.isinf(vb)):
                problems.append(f"{name} / {col}: {ca!r} vs {cb!r}")
            continue
        kind, tau = _kind(col), _column_tau(col)
        d, tol = vb - va, tolerance(kind, *ns, sa, tau)
        if kind == "r" and tau is not None and tau <= CROSS_TAU and (va - 1) * (vb - 1) < 0 and abs(vb - 1) > CROSS:
            problems.append(f"{name} / {col}: {what} {va:g} -> {vb:g} (crosses 1 by more than {CROSS:g})")
        elif kind == "gap" and abs(d) > GAP_RATIO_MIN and (min(va, vb) <= 0 or max(va, vb) / min(va, vb) > GAP_RATIO):
            problems.append(f"{name} / {col}: {what} {va:g} -> {vb:g} (more than ×{GAP_RATIO:g})")
        elif abs(d) > tol:
            problems.append(f"{name} / {col}: {what} {va:g} -> {vb:g} (moved {d:+.3g}, tolerance {tol:.3g})")
        elif d:
            moved.append(f"{name} / {col}: {what} {va:g} -> {vb:g} ({d:+.3g}, tolerance {tol:.3g})")


def _intervals(evidence: str) -> list[tuple[float, float]]:
    return [(float(lo), float(hi)) for lo, hi in _INTERVAL.findall(evidence)]


def _compare_claims(ca, cb, problems, moved) -> None:
    """A verdict may move one step into or out of *inconclusive* (a boundary case on another CPU) when its evidence
    moved and every interval of it still overlaps its committed counterpart; never holds <-> does not hold, never
    without its evidence moving (a verdict is a function of its evidence), never to disjoint intervals."""
    if [c for _, c, _ in ca] != [c for _, c, _ in cb]:
        problems.append(f"claims differ: {[c for _, c, _ in ca]} vs {[c for _, c, _ in cb]}")
        return
    for (va, text, ea), (vb, _, eb) in zip(ca, cb):
        if va == vb:
            continue
        base_a, base_b = va.split(" (")[0], vb.split(" (")[0]
        step = abs(VERDICTS.index(base_a) - VERDICTS.index(base_b)) if {base_a, base_b} <= set(VERDICTS) else 2
        ia, ib = _intervals(ea), _intervals(eb)
        overlap = len(ia) == len(ib) and all(lo1 <= hi2 and lo2 <= hi1 for (lo1, hi1), (lo2, hi2) in zip(ia, ib))
        if step == 1 and ea != eb and overlap:
            moved.append(f"claim {text!r}: {va} -> {vb}")
        else:
            why = ("two steps" if step != 1 else "its evidence did not move" if ea == eb
                   else "its intervals no longer overlap the committed ones")
            problems.append(f"claim {text!r}: {va} -> {vb} ({why})")


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
