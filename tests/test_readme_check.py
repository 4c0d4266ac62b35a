"""The README check (rurk.report.readme.compare) and the paired gaps it relies on.

A block is compared exactly on the machine that wrote it and within derived tolerances elsewhere; these tests
build blocks from hand-made three-seed results, move numbers by amounts on either side of the tolerance and
doctor the summary the way a real regression would (SCRUB's retain accuracy 29% instead of 99.8%, a claim
that flips from holds to does not hold)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from rurk.run.experiment import SeedResult
from rurk.report.readme import CAPS, FLOORS, R_FLOOR_SLOPE, Z, _cell, compare, machine_line, parse, render, tolerance
from rurk.report.tables import main_table
from rurk.report.summary import summarise

KEYS = ("retain_acc", "unlearn_acc", "test_acc", "mia")
TAUS = [0.0, 0.03, 0.3]


def audit(r: float) -> dict:
    return {"per_tau": [{"tau": t, "r_pooled": r, "r_paper": r, "prevalence": 0.3, "ties": 0.4, "acc_m": 0.9,
                         "acc_a": 0.8, "disagreement": 0.1, "n_unbounded": 0} for t in TAUS]}


def three_seeds(scrub_retain=(0.998, 0.997, 0.999), gd_r=(1.10, 1.12, 1.11)) -> dict:
    rows = {"original": (1.0, 0.0, 0.88, 0.0), "retrain": (0.995, 0.10, 0.87, 0.18),
            "gd": (0.95, 0.05, 0.85, 0.10), "rurk": (0.985, 0.11, 0.86, 0.19)}
    results = []
    for i, seed in enumerate((131, 42, 7)):
        wobble = 0.002 * (i - 1)  # a little spread over seeds
        metrics = {n: {k: min(1.0, max(0.0, v + wobble)) for k, v in zip(KEYS, vals)} for n, vals in rows.items()}
        metrics["scrub"] = dict(zip(KEYS, (scrub_retain[i], 0.02, 0.87, 0.15)))
        residual = {"original": audit(1.12 + wobble), "gd": audit(gd_r[i]), "rurk": audit(1.0 + wobble),
                    "scrub": audit(1.09)}
        results.append(SeedResult(seed, metrics, residual, {}))
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd", "rurk", "scrub"])
    s["run"] = {"cpu": "Intel Xeon", "machine": {"digest": "f00d"}, "threads": 2, "versions": {"rurk": "0.1.0", "torch": "2.13.0+cpu"},
                "device": "cpu", "audit": {"draws": 32, "probe": "gaussian"}}
    return s


def on(summary: dict, cpu: str, digest: str = "beef") -> dict:
    """The summary as another machine would label it: its readable CPU and its fingerprint's digest."""
    s = copy.deepcopy(summary)
    s["run"]["cpu"], s["run"]["machine"] = cpu, {"digest": digest}
    return s


def block(summary: dict) -> str:
    return render(summary) + "\n"


# ---------------------------------------------------------------------------------------------- paired gaps
def test_gaps_pair_each_method_with_retrain_on_the_same_seeds():
    """gd equals Re-train on seed 1 and failed on seed 2, where Re-train is 20 points lower: paired, its gap is 0
    (unpaired means would give 10 points on retain)."""
    same = dict(zip(KEYS, (0.9, 0.1, 0.8, 0.2)))
    results = [SeedResult(1, {"retrain": same, "gd": same}, {}, {}),
               SeedResult(2, {"retrain": dict(same, retain_acc=0.7), "gd": {"error": "boom"}}, {}, {})]
    s = summarise("hand", "gaussian", results, ["retrain", "gd"])
    gd = s["methods"]["gd"]
    assert gd["avg_gap"] == 0.0 and gd["gap_seeds"] == [1]
    assert [gd[k]["gap"] for k in KEYS] == [0.0] * 4
    assert s["methods"]["retrain"]["retain_acc"]["mean"] == pytest.approx(80.0)  # Re-train's own mean: both seeds
    name = next(r[0] for r in main_table(s)[1] if r[0].startswith("gd"))
    assert name == "gd (failed on 1 of 2 seeds; gaps on seeds 1)"
    retain = dict(zip(main_table(s)[0], next(r for r in main_table(s)[1] if r[0].startswith("gd"))))["Retain"]
    assert retain.endswith("(0.00)")


# ---------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text,want", [
    ("96.37 ± 0.74 (3.15)", (96.37, 0.74)), ("1.120 ± 0.016", (1.12, 0.016)), ("54% (33%)", (54.0, 0.0)), ("37% ± 12% (46%)", (37.0, 12.0)),
    ("7.35", (7.35, 0.0)), ("–", (None, 0.0)), (">30", (math.inf, 0.0)), ("-3.50 ± 0.50 (1 >30)", (-3.5, 0.5)),
])
def test_cells_parse_to_value_and_spread(text, want):
    assert _cell(text) == want


def test_a_block_records_its_machine_and_parses_back():
    s = three_seeds()
    text = block(s)
    assert machine_line(s["run"]) == "Machine: Intel Xeon, 2 torch threads, torch 2.13.0+cpu, device cpu."
    p = parse(text)
    assert p.n == 3 and p.machine.startswith("Machine: Intel Xeon") and set(p.rows) == set(s["methods"])
    assert [c for _, c, _ in p.claims] == [c["claim"] for c in s["claims"]]
    assert p.seeds["gd"][0] == pytest.approx([94.8, 95.0, 95.2])  # per-seed Retain, as the check compares it


def test_tolerance_is_the_floor_or_z_spreads_of_a_difference_of_means():
    assert tolerance("acc", 3, 3, 0.1) == FLOORS["acc"]
    assert tolerance("acc", 3, 3, 5.0) == pytest.approx(Z * math.sqrt(2 / 3) * 5.0)  # the committed spread alone
    assert tolerance("acc", 3, 3, 50.0) == CAPS["acc"]  # however noisy the row, a broken method must fail
    assert tolerance("r", 1, 1, 0.0) == FLOORS["r"]
    assert tolerance("r", 1, 1, 0.0, tau=0.3) == pytest.approx(FLOORS["r"] + 0.3 * R_FLOOR_SLOPE)


# ---------------------------------------------------------------------------------------------- the check
def test_same_machine_is_exact():
    s = three_seeds()
    assert compare(block(s), block(s)).ok and compare(block(s), block(s)).mode == "exact"
    t = copy.deepcopy(s)
    t["methods"]["gd"]["retain_acc"]["mean"] += 0.01  # a change far inside every tolerance
    c = compare(block(s), block(t))
    assert not c.ok and c.mode == "exact" and "95.01" in c.problems[0]


def test_same_model_name_on_another_cpu_generation_is_compared_tolerantly():
    """The CI failure of Reliability IV: 'AMD EPYC' on Zen 1 and on Zen 4 print the same machine line, but their
    fingerprints differ, so an honest run there is compared within tolerance, not exactly."""
    s = three_seeds()
    t = on(s, "Intel Xeon", digest="zen1")  # same readable line, another fingerprint
    t["methods"]["gd"]["retain_acc"]["mean"] += 1.0
    assert parse(block(s)).machine == parse(block(t)).machine
    c = compare(block(s), block(t))
    assert c.ok and c.mode == "tolerant", c.report()
    c = compare(block(s), block(on(s, "Intel Xeon", digest="f00d")))  # the same fingerprint: exact
    assert c.ok and c.mode == "exact"


def test_a_block_without_fingerprint_is_compared_tolerantly():
    """Blocks committed before the fingerprint (or from cells of unknown machines) are never compared exactly."""
    s = three_seeds()
    old = copy.deepcopy(s)
    old["run"].pop("machine")
    assert "rurk:fingerprint" not in block(old) and "<!-- rurk:fingerprint f00d -->" in block(s)
    for committed, fresh in ((old, old), (old, s), (s, old)):
        c = compare(block(committed), block(fresh))
        assert c.ok and c.mode == "tolerant", c.report()


def shift(summary: dict, row: str, key: str, d: float, tau_index: int | None = None) -> None:
    """Move one cell by ``d`` on every seed (its mean and its per-seed values)."""
    e = summary["methods"][row]
    if tau_index is None:
        e[key]["mean"] += d
        e[key]["per_seed"] = [v + d for v in e[key]["per_seed"]]
    else:
        e["residual"][key][tau_index] += d
        for s in e["residual"][key + "_per_seed"]:
            s[tau_index] += d


def test_another_machine_passes_within_tolerance_and_lists_what_moved():
    s = three_seeds()
    t = on(s, "AMD EPYC")
    shift(t, "gd", "retain_acc", FLOORS["acc"] - 0.1)
    shift(t, "rurk", "r_pooled", FLOORS["r"] + 0.03 * R_FLOOR_SLOPE - 0.005, tau_index=1)
    c = compare(block(s), block(t))
    assert c.ok and c.mode == "tolerant", c.report()
    assert any(m.startswith("gd / Retain") for m in c.moved) and any(m.startswith("rurk / r_pooled τ=0.03") for m in c.moved)
    assert any(m.startswith("rurk / worst") for m in c.moved)  # RURK's profile moved with its r at τ = 0.03
    assert len(c.moved) == 3


def test_another_machine_fails_just_beyond_tolerance():
    s = three_seeds()
    t = on(s, "AMD EPYC")
    shift(t, "gd", "retain_acc", FLOORS["acc"] + 0.1)
    c = compare(block(s), block(t))
    assert not c.ok and len(c.problems) == 1 and c.problems[0].startswith("gd / Retain")


def test_a_real_regression_fails_on_any_machine():
    """The doctored summary: SCRUB's retain accuracy 29% instead of 99.8%."""
    s = three_seeds()
    bad = on(three_seeds(scrub_retain=(0.29, 0.29, 0.29)), "AMD EPYC")
    c = compare(block(s), block(bad))
    assert not c.ok and any(p.startswith("scrub / Retain: median 99.8 -> 29") for p in c.problems), c.report()


def test_a_claim_may_move_one_step_but_never_flip():
    s = three_seeds()
    assert {c["id"]: c["verdict"] for c in s["claims"]}["gd_keeps_r_gt_1"] == "holds"
    # GD's r nearer 1 with more spread (within the table's tolerance): holds -> inconclusive is a boundary case
    near = on(three_seeds(gd_r=(1.08, 0.99, 1.13)), "AMD EPYC")
    assert {c["id"]: c["verdict"] for c in near["claims"]}["gd_keeps_r_gt_1"] == "inconclusive"
    c = compare(block(s), block(near))
    assert c.ok and any("GD keeps" in m and "holds -> inconclusive" in m for m in c.moved), c.report()
    # GD's r clearly below 1: the verdict flips (and the number moves beyond its tolerance)
    flip = on(three_seeds(gd_r=(0.90, 0.91, 0.92)), "AMD EPYC")
    c = compare(block(s), block(flip))
    assert not c.ok and any("GD keeps" in p and "holds -> does not hold" in p for p in c.problems)
    # a flip alone is refused even if every number were within tolerance
    t = on(s, "AMD EPYC")
    t["claims"] = copy.deepcopy(s["claims"])
    next(x for x in t["claims"] if x["id"] == "gd_keeps_r_gt_1")["verdict"] = "does not hold"
    assert not compare(block(s), block(t)).ok


@pytest.mark.parametrize("change", ["row", "settings", "column"])
def test_structure_must_match_exactly(change):
    s = three_seeds()
    t = on(s, "AMD EPYC")
    if change == "row":
        del t["methods"]["scrub"]
    elif change == "settings":
        t["run"]["audit"]["draws"] = 100
    else:
        for e in t["methods"].values():
            if e.get("residual"):
                e["residual"]["taus"] = [0.0, 0.05, 0.3]
    assert not compare(block(s), block(t)).ok


def test_transfer_table_sets_each_tuned_methods_tuning_gap_beside_this_runs():
    from rurk.report.readme import render_transfer

    summary = {"seeds": [131, 42], "run": {"tuned": "t.toml", "split_seed": 0},
               "methods": {"gd": {"avg_gap": 6.5}, "cr": {"avg_gap": 1.0}}}
    tuned = {"gd": {"values": {}, "provenance": {"split_seeds": [1, 2, 3], "tuning_seed": 1,
                                                 "best": {"avg_gap": 4.0, "gaps": [3.0, 4.0, 5.0]}}},
             "ssd": {"values": {}, "provenance": {}}}  # tuned but not in this run
    text = render_transfer(summary, tuned)
    assert "split seed 0, seeds 131, 42" in text
    assert "| gd | 1, 2, 3; 1 | 3.00 / 4.00 / 5.00 | 4.00 | 6.50 | +2.50 |" in text
    assert "| ssd | ; – | – | – | – | – |" in text and "| cr |" not in text  # only the tuned file's methods


# ---------------------------------------------------------------------------------------------- measured runs
#: The demo's per-seed values from three honest runs on one CPU with different kernels (tests/data/honest_runs.json,
#: its "about" says how): the committed block's machine, AVX2 kernels (an older generation), and the SSE path.
HONEST = json.loads((Path(__file__).parent / "data" / "honest_runs.json").read_text())


def from_run(tag: str, doctor=None, digest: str | None = None) -> dict:
    """The summary of one measured run, optionally doctored (``doctor(rows)`` edits the per-seed values)."""
    run = copy.deepcopy(HONEST[tag])
    rows = run["rows"]
    if doctor:
        doctor(rows)
    results = []
    for i, seed in enumerate((131, 42, 7)):
        metrics, residual = {}, {}
        for name, r in rows.items():
            if r["retain_acc"][i] is None:
                metrics[name] = {"error": "RuntimeError: boom"}
                continue
            metrics[name] = {k: r[k][i] for k in KEYS} | {"relearn_epochs": r["relearn_epochs"][i]}
            if "r_pooled" in r:
                residual[name] = {"per_tau": [
                    {"tau": t, "r_pooled": r["r_pooled"][i][j], "r_paper": r["r_pooled"][i][j],
                     "prevalence": r["prevalence"][i][j], "ties": 0.3, "acc_m": 0.9, "acc_a": 0.9,
                     "disagreement": 0.1, "n_unbounded": 0} for j, t in enumerate(run["taus"])]}
        results.append(SeedResult(seed, metrics, residual, {}))
    s = summarise("fmnist5", "gaussian", results, list(rows))
    s["run"] = {"cpu": "AMD EPYC", "machine": {"digest": digest or tag}, "threads": [1],
                "versions": {"rurk": "0.1.0", "torch": "2.13.0+cpu"}, "device": "cpu",
                "audit": {"draws": 32, "probe": "gaussian"}}
    return s


def scale(row: str, key: str, factor: float = None, add: float = None, seeds=(0, 1, 2)):
    def doctor(rows):
        vals = rows[row][key]
        for i in seeds:
            vals[i] = vals[i] * factor if factor is not None else vals[i] + add
    return doctor


COMMITTED = block(from_run("committed"))


@pytest.mark.parametrize("tag", ["avx2", "sse"])
def test_honest_runs_on_other_kernels_pass(tag):
    """The demo computed with other kernels (another CPU generation's) moves CF-k's retain accuracy by 15 points,
    NegGrad+'s Avg. Gap ×2.7, l1_sparse's by one seed that erases the class — and passes."""
    c = compare(COMMITTED, block(from_run(tag)))
    assert c.ok and c.mode == "tolerant", c.report()
    assert len(c.moved) > 50  # nearly every number moved: the comparison really was tolerant


def test_the_same_run_under_another_fingerprint_passes_with_nothing_moved():
    c = compare(COMMITTED, block(from_run("committed", digest="zen1")))
    assert c.ok and c.mode == "tolerant" and c.moved == []


def gap_times(summary: dict, row: str, factor: float) -> dict:
    """The summary with every seed's Avg. Gap of ``row`` × ``factor``."""
    e = summary["methods"][row]
    e["avg_gap"] *= factor
    e["avg_gap_per_seed"] = {k: [x * factor for x in v] if k == "values" else v * factor
                             for k, v in e["avg_gap_per_seed"].items()}
    return summary


@pytest.mark.parametrize("doctor,row,why", [
    (scale("scrub", "retain_acc", add=-0.30), "scrub", "Retain"),  # a stable row breaks
    (scale("cfk", "retain_acc", add=-0.30), "cfk", "Retain"),  # a noisy row breaks
    (scale("l1_sparse", "retain_acc", add=-0.30), "l1_sparse", "Retain"),
])
def test_a_broken_method_fails_on_any_row(doctor, row, why):
    """The committed run, doctored, under another machine's fingerprint (so compared tolerantly)."""
    c = compare(COMMITTED, block(from_run("committed", doctor, digest="zen1")))
    assert not c.ok and any(p.startswith(f"{row} / {why}") for p in c.problems), c.report()


@pytest.mark.parametrize("row,factor", [("cfk", 3.0), ("l1_sparse", 3.0), ("scrub", 3.0), ("rurk", 4.5),
                                        ("neggrad_plus", 1 / 3.5)])
def test_avg_gap_times_three_fails_on_any_row(row, factor):
    c = compare(COMMITTED, block(gap_times(from_run("committed", digest="zen1"), row, factor)))
    assert not c.ok and any(p.startswith(f"{row} / Avg. Gap") for p in c.problems), c.report()


@pytest.mark.parametrize("row", ["l1_sparse", "cfk", "rurk"])
def test_r_crossing_one_fails_on_any_row(row):
    """Residual knowledge turned into over-forgetting (or back) at τ = 0.03 by more than 0.1, on every seed."""
    def doctor(rows):
        rows[row]["r_pooled"] = [[2 - v if j <= 1 else v for j, v in enumerate(s)] for s in rows[row]["r_pooled"]]
        rows[row]["r_pooled"] = [[min(v, 0.85) if v < 1 else max(v, 1.15) if j <= 1 else v
                                  for j, v in enumerate(s)] for s in rows[row]["r_pooled"]]
    c = compare(COMMITTED, block(from_run("committed", doctor, digest="zen1")))
    assert not c.ok and any(p.startswith(f"{row} / r_pooled τ=0.03") for p in c.problems), c.report()


def test_a_seed_that_fails_fails_the_check():
    def doctor(rows):
        for key in KEYS:
            rows["rurk"][key][1] = None
        rows["rurk"].pop("r_pooled"), rows["rurk"].pop("prevalence")
        rows["rurk"]["r_pooled"] = [s for s in HONEST["avx2"]["rows"]["rurk"]["r_pooled"]]
        rows["rurk"]["prevalence"] = [s for s in HONEST["avx2"]["rows"]["rurk"]["prevalence"]]
    c = compare(COMMITTED, block(from_run("avx2", doctor)))
    assert not c.ok and any(p.startswith("rurk: row marks") for p in c.problems), c.report()


def test_a_verdict_may_not_move_without_its_evidence():
    """A verdict is a function of its evidence: moved alone (inconclusive -> does not hold), it fails."""
    fresh = from_run("avx2")
    committed = from_run("committed")
    claim = next(x for x in fresh["claims"] if x["id"] == "rurk_r_near_1")
    claim["verdict"] = "does not hold"
    claim["evidence"] = next(x for x in committed["claims"] if x["id"] == "rurk_r_near_1")["evidence"]
    c = compare(COMMITTED, block(fresh))
    assert not c.ok and any("did not move" in p for p in c.problems), c.report()


# ---------------------------------------------------------------------------------------------- hand-made cells
#: the columns of the hand-made blocks below, one of each kind the check tells apart
COLUMNS = ["Retain (%)", "Unlearn (%)", "Avg. Gap", "r_pooled τ=0.03", "r_pooled τ=0.3", "Re-learn (epochs)"]


def hand_block(cells: dict, seeds: dict | None = None, fingerprint: str | None = "A",
               claims: tuple[str, ...] = ()) -> str:
    """A block as ``render`` writes it, by hand: one row per entry of ``cells`` (column -> cell text, '–' where
    not given), optional per-seed values (column -> list) and claim lines."""
    lines = ["Seeds 1, 2, 3 (n = 3); c = 32 perturbed copies per sample, `gaussian` probe; rurk 0.1.0.",
             "Machine: Intel Xeon, 1 torch threads, torch 2.13.0+cpu, device cpu."]
    if fingerprint:
        lines.append(f"<!-- rurk:fingerprint {fingerprint} -->")
    lines += ["", "| method | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, row in cells.items():
        lines.append("| " + " | ".join([name, *(row.get(c, "–") for c in COLUMNS)]) + " |")
    per_seed = {name: [(seeds or {}).get(name, {}).get(c) for c in COLUMNS] for name in cells}
    lines += ["", f"<!-- rurk:seeds {json.dumps(per_seed, separators=(',', ':'))} -->", ""]
    if claims:
        lines += ["Claims check (generated; rules in `rurk.report.claims`):", "", *claims, ""]
    return "\n".join(lines)


def moves(column: str, before, after) -> bool:
    """Whether one cell of ``column`` may move from ``before`` to ``after`` on another machine: each a cell's
    text, or a list of per-seed values (the cell then shows their mean, the check compares their medians)."""
    def side(v):
        if isinstance(v, list):
            return {column: f"{sum(v) / len(v):.2f} ± 0.00"}, {column: v}
        return {column: v}, {}
    (ca, sa), (cb, sb) = side(before), side(after)
    c = compare(hand_block({"m": ca}, {"m": sa}), hand_block({"m": cb}, {"m": sb}, fingerprint="B"))
    assert c.mode == "tolerant"
    return c.ok


def test_the_floors_of_cells_without_spread():
    """No seed spread: the tolerance is the column's floor — 3 points of accuracy, 4.5 of Avg. Gap, r 0.04 plus
    0.5 per unit τ (0.055 at τ = 0.03, 0.19 at τ = 0.3), 2 epochs of re-learn time."""
    assert moves("Retain (%)", "90.00", "92.90") and not moves("Retain (%)", "90.00", "93.10")
    assert moves("Avg. Gap", "10.00", "14.40") and not moves("Avg. Gap", "10.00", "14.60")
    assert moves("r_pooled τ=0.03", "1.100", "1.154") and not moves("r_pooled τ=0.03", "1.100", "1.157")
    assert moves("r_pooled τ=0.3", "0.800", "0.980") and not moves("r_pooled τ=0.3", "0.800", "1.000")
    assert moves("Re-learn (epochs)", "10", "11.9") and not moves("Re-learn (epochs)", "10", "12.1")


def test_z_standard_errors_of_the_committed_seeds_spread():
    """Committed seeds 57, 60, 63: median 60, population sd √6, so the tolerance is 4 · √(2/3) · √6 = 8 points
    exactly. The fresh run's own spread never widens it (a spread-out fresh run with median 68 still fails)."""
    assert moves("Retain (%)", [57.0, 60.0, 63.0], [64.9, 67.9, 70.9])
    assert not moves("Retain (%)", [57.0, 60.0, 63.0], [65.1, 68.1, 71.1])
    assert not moves("Retain (%)", [60.0, 60.0, 60.0], [40.0, 68.0, 96.0])  # committed sd 0: the 3-point floor
    assert tolerance("acc", 3, 5, 2.0) == pytest.approx(4 * math.sqrt(1 / 3 + 1 / 5) * 2.0)  # n₁ ≠ n₂


def test_medians_not_means_of_the_seeds():
    """One seed of three that drops by 30 points moves the mean by 10 and the median by nothing."""
    assert moves("Retain (%)", [60.0, 60.0, 60.0], [60.0, 60.0, 30.0])
    assert not moves("Retain (%)", [60.0, 60.0, 60.0], [30.0, 30.0, 60.0])


def test_the_caps_of_noisy_rows():
    """Seeds spread so wide that Z standard errors exceed every cap: accuracy 20 points, Unlearn 40 (bimodal
    forget columns), Avg. Gap 25, r 0.3 plus 1.5 per unit τ (0.75 at τ = 0.3)."""
    wide = [20.0, 60.0, 100.0]
    assert moves("Retain (%)", wide, [39.5, 79.5, 119.5]) and not moves("Retain (%)", wide, [40.5, 80.5, 120.5])
    assert moves("Unlearn (%)", wide, [59.0, 99.0, 139.0]) and not moves("Unlearn (%)", wide, [61.0, 101.0, 141.0])
    gaps = [0.0, 50.0, 100.0]
    assert moves("Avg. Gap", gaps, [24.5, 74.5, 124.5]) and not moves("Avg. Gap", gaps, [25.5, 75.5, 125.5])
    r = [0.0, 1.0, 2.0]
    assert moves("r_pooled τ=0.3", r, [0.74, 1.74, 2.74]) and not moves("r_pooled τ=0.3", r, [0.76, 1.76, 2.76])


def test_avg_gap_may_not_move_by_more_than_three_times_once_it_moves_a_point():
    assert not moves("Avg. Gap", "2.00", "6.10") and moves("Avg. Gap", "2.00", "5.90")  # within the floor, ×3.05
    assert moves("Avg. Gap", "1.50", "4.50")  # exactly ×3
    assert not moves("Avg. Gap", "0.50", "1.60")  # ×3.2 and 1.1 points
    assert moves("Avg. Gap", "0.30", "1.20")  # ×4 but 0.9 points: noise on a tiny gap
    assert not moves("Avg. Gap", "0.00", "1.50") and not moves("Avg. Gap", "1.50", "0.00")  # to or from nothing


def test_r_at_tau_0_03_may_not_cross_1_by_more_than_0_1():
    """Committed seeds 0.90, 1.02, 1.14 (median 1.02, tolerance 0.32): the median may move to 0.91 (crosses 1,
    lands 0.09 beyond) but not to 0.89 (0.11 beyond), though both moves are within the tolerance; at τ = 0.3 the
    rule does not apply."""
    seeds = [0.90, 1.02, 1.14]
    assert moves("r_pooled τ=0.03", seeds, [0.79, 0.91, 1.03])
    assert not moves("r_pooled τ=0.03", seeds, [0.77, 0.89, 1.01])
    assert moves("r_pooled τ=0.3", seeds, [0.77, 0.89, 1.01])


def test_dash_and_censored_cells_may_not_change_kind():
    """'–' (no value) and '>30' (re-learning never got back within 30 epochs) are states, not numbers: a cell may
    not move into or out of them."""
    assert moves("Avg. Gap", "–", "–") and moves("Re-learn (epochs)", ">30", ">30")
    for before, after in (("–", "5.00"), ("5.00", "–")):
        assert not moves("Avg. Gap", before, after)
    for before, after in ((">30", "29"), ("29", ">30"), (">30", "12"), ("12", ">30"), ("–", ">30")):
        assert not moves("Re-learn (epochs)", before, after), (before, after)


def test_a_row_or_a_seed_that_starts_failing_fails_the_check():
    ok = {"Retain (%)": "90.00"}
    c = compare(hand_block({"m": ok}), hand_block({"m (failed on 1 of 3 seeds)": ok}, fingerprint="B"))
    assert not c.ok and any("row marks" in p for p in c.problems), c.report()
    c = compare(hand_block({"m (failed on 1 of 3 seeds)": ok}), hand_block({"m": ok}, fingerprint="B"))
    assert c.ok and any("row marks" in m for m in c.moved)  # recovering is a move, not a failure
    c = compare(hand_block({"m": ok}, {"m": {"Retain (%)": [90.0, 90.0, 90.0]}}),
                hand_block({"m": ok}, {"m": {"Retain (%)": [90.0, None, 90.0]}}, fingerprint="B"))
    assert not c.ok and any("a seed has no value" in p for p in c.problems), c.report()


CLAIM = "GD keeps residual knowledge (r_pooled > 1)"


def claim_moves(before: str, after: str) -> bool:
    row = {"m": {"Retain (%)": "90.00"}}
    return compare(hand_block(row, claims=(f"- **{before.split(':')[0]}** — {CLAIM}: {before.split(':', 1)[1]}",)),
                   hand_block(row, fingerprint="B",
                              claims=(f"- **{after.split(':')[0]}** — {CLAIM}: {after.split(':', 1)[1]}",))).ok


def test_a_verdict_moves_one_step_with_its_evidence_and_overlapping_intervals_only():
    assert claim_moves("holds:r 1.10 [1.02, 1.18]", "inconclusive:r 1.08 [0.99, 1.17]")
    assert claim_moves("inconclusive:r 1.08 [0.99, 1.17]", "holds:r 1.10 [1.02, 1.18]")
    assert not claim_moves("holds:r 1.10 [1.02, 1.18]", "does not hold:r 0.90 [0.85, 0.95]")  # two steps
    assert not claim_moves("holds:r 1.10 [1.02, 1.18]", "does not hold:r 1.00 [0.99, 1.01]")  # two steps, overlapping
    assert not claim_moves("holds:r 1.10 [1.02, 1.18]", "inconclusive:r 1.10 [1.02, 1.18]")  # evidence unmoved
    assert not claim_moves("holds:r 1.30 [1.25, 1.35]", "inconclusive:r 1.08 [0.99, 1.17]")  # disjoint intervals


def test_the_same_fingerprint_demands_the_identical_block_claims_and_seeds_included():
    row = {"m": {"Retain (%)": "90.00"}}
    base = hand_block(row, {"m": {"Retain (%)": [90.0, 90.0, 90.0]}}, claims=(f"- **holds** — {CLAIM}: r 1.10",))
    for other in (hand_block(row, {"m": {"Retain (%)": [90.0, 90.0, 90.0]}}, claims=(f"- **holds** — {CLAIM}: r 1.11",)),
                  hand_block(row, {"m": {"Retain (%)": [89.0, 90.0, 91.0]}}, claims=(f"- **holds** — {CLAIM}: r 1.10",))):
        c = compare(base, other)
        assert not c.ok and c.mode == "exact", c.report()
    # without a fingerprint on either side nothing says "same machine": compared within tolerance
    plain = hand_block(row, fingerprint=None)
    assert compare(plain, plain).mode == "tolerant"


def test_r_that_starts_exactly_at_1_has_no_side_to_cross_from():
    """A committed median of exactly 1 (neither residual knowledge nor over-forgetting) moving to 0.88 is judged
    like a move from 0.99 to 0.88 — by the tolerance of the row (0.32 here) — not as a crossing."""
    for start in ([0.88, 0.99, 1.10], [0.89, 1.00, 1.11]):
        assert moves("r_pooled τ=0.03", start, [0.77, 0.88, 0.99]), start
