"""The claims check on hand-made summaries, method variants, and each scenario's tau grid and recipe."""

import math

import pytest

from rurk.report.claims import FAILS, HOLDS, INCONCLUSIVE, ONE_SEED, check_claims, interval
from rurk.config import PAPER_TAUS, ConfigError, list_scenarios, load_scenario
from rurk.run.experiment import RunOptions, method_config, method_names
from rurk.methods.base import parse_variant

TAUS = [0.0, 0.03, 0.3]


def row(kind="finetune", r=None, ci=None, retain=None, test=None, gaps=None, base=None):
    """One summary.json method entry: per-seed r_pooled at TAUS[1], accuracies (points) and Avg. Gaps."""
    n = len(r or retain or gaps or [0])
    done = [g for g in gaps or [] if g is not None]  # a seed whose row failed has no gap
    e = {"kind": kind, "n_seeds": n, "avg_gap": sum(done) / len(done) if done else None,
         "avg_gap_per_seed": {"values": gaps or [None] * n},
         "retain_acc": {"per_seed": retain or [90.0] * n}, "test_acc": {"per_seed": test or [85.0] * n}}
    if base:
        e["base"] = base
    if r is not None:
        e["residual"] = {"taus": TAUS, "r_pooled_per_seed": [[1.0, v, v] for v in r],
                         "r_pooled_ci95_per_seed": [[None, c, c] for c in (ci or [None] * len(r))]}
    return e


def summary(**methods):
    n = len(next(iter(methods.values()))["avg_gap_per_seed"]["values"])
    methods.setdefault("retrain", row("reference", retain=[90.0] * n, test=[85.0] * n, gaps=[0.0] * n))
    return {"seeds": list(range(n)), "methods": methods}


def verdicts(s):
    return {c["id"]: c["verdict"] for c in check_claims(s)}


def test_interval_is_the_student_t_interval_over_seeds():
    m, lo, hi = interval([1.0, 2.0, 3.0])  # sd (ddof 1) = 1, t(0.975, 2) = 4.3027
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5) and m - lo == pytest.approx(hi - m)
    assert interval([1.5]) == (1.5, 1.5, 1.5) and interval([1.5], (1.2, 1.9)) == (1.5, 1.2, 1.9)
    assert interval([None]) is None


def test_three_seeds_holds_and_does_not_hold():
    s = summary(original=row("reference", r=[1.20, 1.25, 1.22], gaps=[6.0, 6.0, 6.0]),
                gd=row(r=[0.95, 0.96, 0.97], gaps=[5.0, 6.0, 5.5]),
                rurk=row(r=[1.00, 1.01, 0.99], retain=[89.0, 90.5, 90.0], test=[84.0, 85.5, 85.0], gaps=[1.0, 1.2, 0.9]),
                scrub=row(gaps=[4.0, 4.5, 3.9]))
    assert verdicts(s) == {"original_r_gt_1": HOLDS, "gd_keeps_r_gt_1": FAILS, "rurk_r_near_1": HOLDS,
                           "rurk_smallest_gap": HOLDS}


def test_spread_that_straddles_the_boundary_is_inconclusive():
    s = summary(original=row("reference", r=[1.3, 0.9, 1.1], gaps=[6.0, 6.0, 6.0]),
                gd=row(r=[1.10, 1.15, 1.12], gaps=[2.0, 1.0, 1.5]),
                rurk=row(r=[1.0, 1.2, 1.1], gaps=[1.0, 2.0, 1.4]))
    v = verdicts(s)
    assert v["original_r_gt_1"] == INCONCLUSIVE and v["rurk_r_near_1"] == INCONCLUSIVE
    assert v["gd_keeps_r_gt_1"] == HOLDS  # every seed above 1, interval above 1
    assert v["rurk_smallest_gap"] == INCONCLUSIVE  # paired differences -1, +1, -0.1


def test_rurk_that_hurts_retain_accuracy_does_not_hold_even_with_r_near_1():
    s = summary(original=row("reference", r=[1.2, 1.2, 1.21], gaps=[6.0] * 3),
                rurk=row(r=[1.0, 1.0, 1.01], retain=[70.0, 72.0, 71.0], gaps=[8.0, 9.0, 8.5]),
                gd=row(r=[1.2, 1.2, 1.2], gaps=[1.0, 1.5, 1.2]))
    v = verdicts(s)
    assert v["rurk_r_near_1"] == FAILS and v["rurk_smallest_gap"] == FAILS


def test_one_seed_decides_no_claim_but_shows_its_bootstrap_interval():
    s = summary(original=row("reference", r=[1.15], ci=[(1.08, 1.22)], gaps=[6.0]),
                gd=row(r=[1.10], ci=[(0.97, 1.25)], gaps=[5.0]),
                rurk=row(r=[0.99], ci=[(0.93, 1.04)], gaps=[1.0]))
    assert set(verdicts(s).values()) == {ONE_SEED}
    ev = {c["id"]: c["evidence"] for c in check_claims(s)}
    assert "[1.080, 1.220]" in ev["original_r_gt_1"] and "one seed" in ev["original_r_gt_1"]


def test_variants_are_not_competitors_and_missing_methods_are_inconclusive():
    s = summary(original=row("reference", r=[1.2, 1.2, 1.2], gaps=[6.0] * 3),
                rurk=row(r=[1.0, 1.0, 1.0], gaps=[2.0, 2.1, 2.2]),
                **{"rurk:lambda_f=0": row(r=[1.0] * 3, gaps=[0.1, 0.1, 0.1], base="rurk")},
                gd=row(r=[1.2] * 3, gaps=[5.0, 5.5, 6.0]))
    assert verdicts(s)["rurk_smallest_gap"] == HOLDS
    s = summary(original=row("reference", r=[1.2, 1.2, 1.2], gaps=[6.0] * 3))
    v = verdicts(s)
    assert v["gd_keeps_r_gt_1"] == v["rurk_r_near_1"] == v["rurk_smallest_gap"] == INCONCLUSIVE


def test_within_and_above_on_hand_made_intervals_boundaries_included():
    from rurk.report.claims import above, within

    # |x − c| ≤ tol: both ends count as inside (0.5 and 1.5 are exact in binary)
    assert within((1.0, 0.5, 1.5), 0.5, center=1.0) == HOLDS
    assert within((0.0, -3.0, 3.0), 3.0) == HOLDS
    assert within((1.0, 0.4, 1.4), 0.5, center=1.0) == INCONCLUSIVE  # straddles the lower boundary
    assert within((0.2, 0.1, 0.3), 0.5, center=1.0) == FAILS  # entirely below: two-sided
    assert within((1.8, 1.6, 2.0), 0.5, center=1.0) == FAILS
    # x > t: an interval that only touches t shows nothing
    assert above((1.1, 1.0, 1.2), 1.0) == INCONCLUSIVE and above((1.1, 1.01, 1.2), 1.0) == HOLDS
    assert above((0.9, 0.8, 1.0), 1.0) == FAILS and above(None, 1.0) == INCONCLUSIVE


def rurk_near_1(r, retain=None, test=None, retrain_retain=None, retrain_test=None):
    """The verdict of claim 3 for three seeds of RURK (r at τ = 0.03, retain and test points) against Re-train."""
    n = 3
    s = summary(original=row("reference", r=[1.2] * n, gaps=[6.0] * n), gd=row(r=[1.2] * n, gaps=[5.0] * n),
                rurk=row(r=r, retain=retain, test=test, gaps=[1.0] * n),
                retrain=row("reference", retain=retrain_retain or [90.0] * n, test=retrain_test or [85.0] * n,
                            gaps=[0.0] * n))
    return verdicts(s)["rurk_r_near_1"]


def test_r_near_1_is_two_sided_with_its_boundary_at_0_05():
    """Over-forgetting marks the forget set as much as residual knowledge: r 0.9 fails like r 1.1. Three equal
    seeds give an interval of width 0, so the boundary 0.05 is tested on either side of it."""
    assert rurk_near_1([1.0, 1.0, 1.0]) == HOLDS
    assert rurk_near_1([0.90, 0.90, 0.90]) == FAILS and rurk_near_1([1.10, 1.10, 1.10]) == FAILS
    assert rurk_near_1([1.049] * 3) == HOLDS and rurk_near_1([0.951] * 3) == HOLDS
    assert rurk_near_1([1.052] * 3) == FAILS and rurk_near_1([0.948] * 3) == FAILS


def test_retain_and_test_within_3_points_of_retrain_paired_seed_by_seed():
    """Re-train's retain accuracy varies from seed to seed (90, 92, 88); RURK tracks it 2.9 points below on every
    seed: the paired differences are all −2.9 (within 3 points, an interval of width 0), while RURK's values
    against Re-train's mean spread from −4.9 to −0.9. 3.2 points below on every seed fails; test accuracy alike."""
    rr, rt = [90.0, 92.0, 88.0], [85.0, 87.0, 83.0]
    r1 = [1.0] * 3
    assert rurk_near_1(r1, retain=[v - 2.9 for v in rr], retrain_retain=rr) == HOLDS
    assert rurk_near_1(r1, retain=[v + 2.9 for v in rr], retrain_retain=rr) == HOLDS
    assert rurk_near_1(r1, retain=[v - 3.2 for v in rr], retrain_retain=rr) == FAILS
    assert rurk_near_1(r1, retain=[v + 3.2 for v in rr], retrain_retain=rr) == FAILS
    assert rurk_near_1(r1, test=[v - 2.9 for v in rt], retrain_test=rt) == HOLDS
    assert rurk_near_1(r1, test=[v - 3.2 for v in rt], retrain_test=rt) == FAILS
    # paired with the wrong seeds, the same numbers would straddle the boundary
    assert rurk_near_1(r1, retain=[v - 2.9 for v in rr][::-1], retrain_retain=rr) == INCONCLUSIVE


def gap_claim(rurk_gaps, **others):
    n = len(rurk_gaps)
    s = summary(original=row("reference", r=[1.2] * n, gaps=[6.0] * n), rurk=row(r=[1.0] * n, gaps=rurk_gaps),
                **{m: row(gaps=g) for m, g in others.items()})
    return next(c for c in check_claims(s) if c["id"] == "rurk_smallest_gap")


def test_a_competitor_that_failed_on_every_seed_is_beaten_only_by_a_rurk_with_gaps():
    """A method with no Avg. Gap on any seed (it failed) is no smaller gap: RURK with gaps beats it and the claim
    rests on the other competitors; when RURK has no gap either, nothing is decided."""
    c = gap_claim([1.0, 1.2, 0.9], gd=[5.0, 6.0, 5.5], scrub=[None] * 3)
    assert c["verdict"] == HOLDS and "scrub failed" in c["evidence"]
    assert gap_claim([1.0, 1.2, 0.9], scrub=[None] * 3)["verdict"] == HOLDS
    assert gap_claim([None] * 3, scrub=[None] * 3)["verdict"] == INCONCLUSIVE
    assert gap_claim([1.0, 1.2, 0.9], gd=[0.5, 0.6, 0.4], scrub=[None] * 3)["verdict"] == FAILS  # gd beats rurk
    # a competitor with a gap on one seed only: one paired difference decides nothing
    assert gap_claim([1.0, 1.2, 0.9], gd=[5.0, None, None])["verdict"] == INCONCLUSIVE


def test_the_smallest_gap_needs_the_whole_paired_interval_on_one_side():
    """Paired differences rurk − gd of −1, +1, −0.1 (mean −0.03): inconclusive, whatever the mean says; all
    below 0: holds; all above: does not hold. Pairing matters: rurk's gaps track gd's seed by seed."""
    assert gap_claim([1.0, 2.0, 1.4], gd=[2.0, 1.0, 1.5])["verdict"] == INCONCLUSIVE
    assert gap_claim([1.0, 3.0, 1.2], gd=[2.0, 2.0, 1.5])["verdict"] == INCONCLUSIVE  # mean −0.1, +1, −0.3
    assert gap_claim([2.0, 1.0, 1.6], gd=[1.0, 2.0, 1.5])["verdict"] == INCONCLUSIVE  # mean +0.03
    assert gap_claim([1.0, 5.0, 9.0], gd=[1.5, 5.4, 9.6])["verdict"] == HOLDS  # −0.5, −0.4, −0.6
    assert gap_claim([1.5, 5.4, 9.6], gd=[1.0, 5.0, 9.0])["verdict"] == FAILS
    assert gap_claim([1.0], gd=[5.0])["verdict"] == ONE_SEED


def test_the_claims_read_the_tau_nearest_0_03_and_a_failed_part_fails_the_claim():
    """r at τ = 0 is 1 for every row in these summaries (row()), at 0.03 and 0.3 the seed's value: reading τ = 0
    would make every r claim 'holds'/'does not hold' the wrong way."""
    s = summary(original=row("reference", r=[1.2] * 3, gaps=[6.0] * 3), gd=row(r=[1.2] * 3, gaps=[5.0] * 3),
                rurk=row(r=[1.0] * 3, retain=[80.0] * 3, gaps=[1.0] * 3))
    v = verdicts(s)
    assert v["original_r_gt_1"] == HOLDS and v["gd_keeps_r_gt_1"] == HOLDS
    assert v["rurk_r_near_1"] == FAILS  # r holds, retain 10 points below Re-train fails: the claim fails
    assert "τ = 0.030" in check_claims(s)[0]["evidence"]


# ---------------------------------------------------------------------------------------------- variants
def test_variant_parsing():
    assert parse_variant("rurk:lambda_f=0:tau=0.1") == ("rurk", {"lambda_f": 0, "tau": 0.1})
    assert parse_variant("gd") == ("gd", {})
    for text, match in (("rurk:lambda_x=0", "unknown setting 'lambda_x'"), ("rurk:lambda_f=abc", "expected a number"),
                        ("nope:lr=1", "unknown method 'nope'"), ("rurk:tau", "not KEY=VALUE"),
                        ("rurk:tau=-1", "tau = -1.0")):
        with pytest.raises(ConfigError, match=match):
            parse_variant(text)


def test_variant_config_applies_on_top_of_the_scenario_and_rows_are_checked_up_front():
    s = load_scenario("digits5", {"methods": {"rurk": {"lr": 0.02, "lambda_f": 0.5}}})
    cfg = method_config(s, "rurk:lambda_f=0:tau=0.1")
    assert (cfg.lr, cfg.lambda_f, cfg.tau) == (0.02, 0.0, 0.1)
    assert method_config(s, "rurk").lambda_f == 0.5
    with pytest.raises(ConfigError, match="twice"):
        method_names(s, RunOptions(methods=["gd", "gd"]))
    from rurk.methods import load_all

    rows = method_names(s, RunOptions(methods=["all", "rurk:lambda_f=0"]))
    assert rows == [*sorted(load_all()), "rurk:lambda_f=0"]  # every method once, then the variant
    assert method_names(s, RunOptions(methods=["gd", "all"]))[0] == "gd" and len(rows) == len(load_all()) + 1
    with pytest.raises(ConfigError, match="lambda_x"):
        method_names(s, RunOptions(methods=["gd", "rurk:lambda_x=1"]))


def test_variant_rows_run_under_their_own_name_and_cache_key(tmp_path):
    from rurk.cli import main
    from rurk.store import Store

    args = ["run", "digits5", "--methods", "rurk,rurk:lambda_a=0,rurk:lambda_f=0:tau=0.1,rurk:preset=paper", "--seeds", "131",
            "--taus", "0,0.1", "--draws", "2", "--no-relearn", "--out", str(tmp_path), "--set", "train.epochs=3",
            "--set", "methods.rurk.epochs=1", "--quiet", "--device", "cpu"]
    assert main(args) == 0
    import json

    summary = json.loads((tmp_path / "digits5" / "summary.json").read_text())
    assert {"rurk", "rurk:lambda_a=0", "rurk:lambda_f=0:tau=0.1", "rurk:preset=paper"} <= set(summary["methods"])
    assert summary["methods"]["rurk:lambda_a=0"]["base"] == "rurk"
    recs = {r["key"]: r["metrics"]["config"] for r in Store(tmp_path).records("unlearned")}
    assert len(recs) == 4
    assert sorted((c["lambda_f"], c["lambda_a"], c["tau"], c["calibrate"]) for c in recs.values()) == sorted(
        [(0.08, 0.08, 0.1, True), (0.08, 0.0, 0.1, True), (0.0, 0.08, 0.1, True), (0.03, 0.03, 0.03, False)])
    assert "| rurk:lambda_f=0:tau=0.1 |" in (tmp_path / "digits5" / "report.md").read_text()
    assert main(args[:3] + ["rurk:bogus=1"] + args[4:]) == 2  # refused before any work


# ---------------------------------------------------------------------------------------------- scenarios
FMNIST_TAUS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("name", sorted(list_scenarios()))
def test_each_scenario_has_its_tau_grid(name):
    s = load_scenario(name)
    if name.startswith("fmnist5"):
        assert s.audit.taus == FMNIST_TAUS
    else:  # the paper's linspace(0, 8/255, 11)
        assert s.audit.taus == list(PAPER_TAUS) and len(PAPER_TAUS) == 11
        assert PAPER_TAUS[0] == 0.0 and PAPER_TAUS[-1] == 8 / 255 and PAPER_TAUS[3] == pytest.approx(0.3 * 8 / 255)


def test_fmnist5_recipe_is_sgd_and_the_adam_recipe_stays_reachable():
    for name in ("fmnist5", "fmnist5-class"):
        t = load_scenario(name).train
        assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.schedule, t.batch_size, t.epochs, t.augment) == (
            "sgd", 0.05, 0.9, 5e-4, "cosine", 128, 60, "none")
    adam = load_scenario("fmnist5-adam")
    assert (adam.train.optimizer, adam.train.lr, adam.train.epochs) == ("adam", 0.001, 100)
    assert adam.data == load_scenario("fmnist5").data and adam.forget == load_scenario("fmnist5").forget


# ---------------------------------------------------------------------------------------------- README blocks
def test_readme_block_is_written_from_the_summary_and_checked(tmp_path, capsys):
    import json

    from rurk.cli import main

    out = tmp_path / "runs"
    assert main(["run", "digits5", "--methods", "gd", "--seeds", "131", "--taus", "0,0.1", "--draws", "2",
                 "--no-relearn", "--out", str(out), "--set", "train.epochs=2", "--set", "methods.gd.epochs=1",
                 "--quiet", "--device", "cpu"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN rurk:demo -->\nstale numbers\n<!-- END rurk:demo -->\noutro\n")
    summary = out / "digits5"
    assert main(["readme", str(summary), "--block", "demo", "--readme", str(readme), "--check"]) == 1
    assert main(["readme", str(summary), "--block", "demo", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- BEGIN rurk:demo -->\n") and text.endswith("<!-- END rurk:demo -->\noutro\n")
    assert "stale numbers" not in text and "| gd |" in text and "wall (s)" not in text
    gd = json.loads((summary / "summary.json").read_text())["methods"]["gd"]
    assert f"{gd['avg_gap']:.2f}" in text and "Claims check" in text
    assert main(["readme", str(summary), "--block", "demo", "--readme", str(readme), "--check"]) == 0
    assert main(["readme", str(summary), "--block", "other", "--readme", str(readme)]) == 2
