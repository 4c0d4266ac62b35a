#!/usr/bin/env python
"""A small mutation tester for rurk's newest science code (no mutmut or cosmic-ray needed).

Each mutant is a hand-written, exact text replacement in one module — ``(id, file, old, new, tests, behaviour)`` —
that must match exactly once (anything else fails loudly before any test runs). One mutant at a time is applied,
its test files are run with ``pytest -x -q`` (a timeout per mutant), it is recorded as killed (a test failed or
did not even collect), timed out (counted as killed) or survived, and the file is restored — always, on Ctrl-C
and SIGTERM too. At the end a Markdown table and the score per module are printed (``--out FILE`` writes them).

Isolation (decision): by default the mutants are applied to a scratch copy of the working tree (tracked and
untracked, not ignored, files) that is put first on ``PYTHONPATH``, never to the checkout itself — the checkout is
shared with other work (a tuning run that spawns processes would import a mutant). ``--in-place`` mutates the
checkout. Bytecode is neither read from nor written to ``__pycache__`` (``PYTHONDONTWRITEBYTECODE`` and a fresh
``PYTHONPYCACHEPREFIX`` per run): a mutant of the same size written within the same second as the original
would otherwise be served from a stale ``.pyc``.

    .venv/bin/python scripts/mutate.py                    # baseline, then every mutant
    .venv/bin/python scripts/mutate.py --list             # the mutants, no run
    .venv/bin/python scripts/mutate.py --only claims-one-sided,readme-z
    .venv/bin/python scripts/mutate.py --module readme --out runs/mutation.md

docs/mutation.md has the last measured table and every survivor with why it is equivalent or acceptable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # test files or node ids, relative to the repository root
    behaviour: str

    @property
    def module(self) -> str:
        return MODULES.get(self.file, self.file)


#: the modules scored, by file (tune.py and study.py are scored together)
MODULES = {
    "src/rurk/methods/_calibrate.py": "methods/_calibrate.py",
    "src/rurk/methods/_forget.py": "methods/_forget.py",
    "src/rurk/audit/estimate.py": "audit/estimate.py",
    "src/rurk/report/claims.py": "report/claims.py",
    "src/rurk/report/readme.py": "report/readme.py",
    "src/rurk/run/tune.py": "run/tune.py + run/study.py",
    "src/rurk/run/study.py": "run/tune.py + run/study.py",
    "src/rurk/audit/kernel.py": "audit/kernel.py + audit/inputs.py",
    "src/rurk/audit/inputs.py": "audit/kernel.py + audit/inputs.py",
}

CAL, FGT = "src/rurk/methods/_calibrate.py", "src/rurk/methods/_forget.py"
EST, CLM, RDM = "src/rurk/audit/estimate.py", "src/rurk/report/claims.py", "src/rurk/report/readme.py"
TUN, STU, KER = "src/rurk/run/tune.py", "src/rurk/run/study.py", "src/rurk/audit/kernel.py"
INP = "src/rurk/audit/inputs.py"
T_CAL = ("tests/test_calibrate.py",)
T_EST = ("tests/test_audit_free.py", "tests/test_calibrate.py")
T_CLM = ("tests/test_claims.py",)
T_RDM = ("tests/test_readme_check.py",)
T_TUN = ("tests/test_tune_fast.py", "tests/test_tune.py")
T_KER = ("tests/test_audit.py",)
T_FGT = ("tests/test_methods_gradient.py", "tests/test_methods_beyond.py")


def M(id, file, old, new, tests, behaviour):  # noqa: N802 - reads as a table
    return Mutant(id, file, old, new, tuple(tests), behaviour)


MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ methods/_calibrate.py: calibrated stopping
    M("calib-cache-no-seed", CAL, "str(model_device(original)), _fingerprint(self.calib), repr(espec))",
      "str(model_device(original)), _fingerprint(self.calib), repr({**espec.__dict__, 'seed': None}))", T_CAL,
      "Original's calibration-count cache key (_CALIB_COUNTS) without the seed"),
    M("calib-cache-no-model", CAL, "key = (_fingerprint_model(original), str(model_device(original)),",
      "key = ('original', str(model_device(original)),", T_CAL,
      "calibration-count cache key without Original's weights"),
    M("calib-cache-no-set", CAL, "str(model_device(original)), _fingerprint(self.calib), repr(espec))",
      "str(model_device(original)), len(self.calib), repr(espec))", T_CAL,
      "calibration-count cache key without the calibration set's content"),
    M("calib-adversarial-copies-cached", CAL, "if not isinstance(self.probe, AdversarialProbe):", "if True:", T_CAL,
      "adversarial calibration copies served from a cache (crafted once, not on the current model)"),
    M("calib-tie-later", CAL, "if self._best is None or dist < self._best[0]:",
      "if self._best is None or dist <= self._best[0]:", T_CAL,
      "rewind: a later check at the same distance replaces the earlier one"),
    M("calib-stop-strict", CAL, "if acc <= self.target and step > 0:", "if acc < self.target and step > 0:", T_CAL,
      "stop only strictly below the target (not at it)"),
    M("calib-stop-step0", CAL, "if acc <= self.target and step > 0:", "if acc <= self.target:", T_CAL,
      "the check before the first step may stop training"),
    M("calib-every", CAL, "if step % self.spec.every:", "if (step + 1) % self.spec.every:", T_CAL,
      "checks at the wrong steps"),
    M("calib-trace-every", CAL, "if len(self.trajectory) % self.spec.trace_every == 0:",
      "if len(self.trajectory) % self.spec.trace_every == 1:", T_CAL,
      "retain/test trace not at the first check"),
    M("calib-tau0-refused", CAL, "if not (math.isfinite(value) and value >= 0):",
      "if not (math.isfinite(value) and value > 0):", T_CAL,
      "calib_tau = 0 (the clean rule), alpha = 0 or proxy = 0 refused"),
    M("calib-record-unweighted", CAL, 'sum(p["original_calib_acc"][0] * p["n_calib"] for p in parts.values()) / w',
      'sum(p["original_calib_acc"][0] for p in parts.values()) / len(parts)', T_CAL,
      "recorded original_calib_acc: class mean instead of the pooled accuracy"),
    # ------------------------------------------------------------------ methods/_forget.py
    M("forget-stream-seed", FGT, 'seed = derive_seed(loader_seed, "forget")', "seed = loader_seed", T_FGT,
      "RL/SalUn/RURK/NegGrad+'s forget stream seeded like the retain stream"),
    # ------------------------------------------------------------------ audit/estimate.py
    M("est-proxy-sees-forget", EST, "clf = fit_proxy(retain)", "clf = fit_proxy(TensorData.concat(retain, forget))",
      T_EST, "difficulty proxy trained on retain + the forget set (sees what Re-train never sees)"),
    M("est-proxy-sees-calib", EST, "clf = fit_proxy(retain)", "clf = fit_proxy(TensorData.concat(retain, calib))",
      T_EST, "difficulty proxy trained on retain + the calibration set"),
    M("est-shift-sign", EST, "float(f_right[f_y == k].float().mean() - c_right[c_y == k].float().mean())",
      "float(c_right[c_y == k].float().mean() - f_right[f_y == k].float().mean())", T_EST,
      "difficulty shift's sign flipped (calibration − forget)"),
    M("est-shift-cache-no-calib", EST, "key = _fingerprint(retain, forget, calib)", "key = _fingerprint(retain, forget)",
      T_EST, "difficulty-shift cache (_SHIFTS and its file) keyed without the calibration set"),
    M("est-shift-cache-no-retain", EST, "key = _fingerprint(retain, forget, calib)", "key = _fingerprint(forget, calib)",
      T_EST, "difficulty-shift cache keyed without the retain set"),
    M("est-fingerprint-no-labels", EST, "for d in sets for t in (d.x, d.y))", "for d in sets for t in (d.x,))", T_EST,
      "data fingerprint (both caches' keys) ignores the labels"),
    M("est-model-fingerprint-params-only", EST,
      'for name, t in model.state_dict().items())', 'for name, t in model.named_parameters())', T_EST,
      "model fingerprint (calibration-count cache key) ignores buffers (BatchNorm statistics)"),
    M("est-kappa-exponent", EST, "((n_r + int(f_counts[k])) / n_r) ** spec.alpha",
      "((n_r + int(f_counts[k])) / n_r) ** (2 * spec.alpha)", T_EST, "learning-curve exponent doubled"),
    M("est-kappa-whole-forget-set", EST, "((n_r + int(f_counts[k])) / n_r) ** spec.alpha",
      "((n_r + len(f_y)) / n_r) ** spec.alpha", T_EST,
      "κ_k from the whole forget set's size instead of the class's"),
    M("est-multiplicative", EST, "return np.clip(acc - (kappa - 1.0) * err0 + shift, 0.0, 1.0)",
      "return np.clip(1.0 - kappa * (1.0 - acc) + shift, 0.0, 1.0)", T_EST,
      "the old multiplicative form 1 − κ·err_O(τ) instead of acc_O(τ) − (κ − 1)·err_O(0)"),
    M("est-no-clip", EST, "return np.clip(acc - (kappa - 1.0) * err0 + shift, 0.0, 1.0)",
      "return acc - (kappa - 1.0) * err0 + shift", T_EST, "the class estimate not clipped to [0, 1]"),
    M("est-class-weights-uniform", EST, '"weight": float(f_counts[k] / len(f_y))', '"weight": 1.0 / len(classes)',
      T_EST, "classes weighted equally instead of by the forget set's classes"),
    M("est-proxy-slope-ignored", EST,
      "acc_k[k] = _class_estimate(counts[:, sel], spec, kappa, spec.proxy * shift.get(k, 0.0)",
      "acc_k[k] = _class_estimate(counts[:, sel], spec, kappa, shift.get(k, 0.0)", T_EST,
      "the shift added without its slope (proxy)"),
    M("est-interval-min", EST, "np.where(np.isnan(v_half), np.nan, np.maximum(boot, v_half))",
      "np.where(np.isnan(v_half), np.nan, np.minimum(boot, v_half))", T_EST,
      "interval: the narrower of bootstrap and validated error"),
    M("est-small-not-widened", EST, "* (2.0 if small else 1.0)", "* 1.0", T_EST,
      "few calibration images do not widen the interval"),
    M("est-min-calib-boundary", EST, "if n_c < MIN_CALIB:", "if n_c <= MIN_CALIB:", T_EST,
      "exactly MIN_CALIB calibration images warn"),
    M("est-bootstrap-no-correction", EST, "out += w * np.clip(mean[1:].T - (kappa - 1.0) * (1.0 - mean[0])[:, None] + shift",
      "out += w * np.clip(mean[1:].T + shift", T_EST,
      "bootstrap resamples without the learning-curve correction (off-centre interval)"),
    M("est-validated-edge", EST, "if tau > grid[-1] + 1e-12:", "if tau >= grid[-1]:", T_EST,
      "no validated interval at the largest validated τ itself"),
    M("est-verdict-max-tau", EST, "if self.taus[i] > VERDICT_MAX_TAU + 1e-12:", "if self.taus[i] >= VERDICT_MAX_TAU:",
      T_EST, "no verdict at τ = VERDICT_MAX_TAU itself"),
    M("est-validated-z", EST, "return 1.96 * float(np.interp(", "return 1.645 * float(np.interp(", T_EST,
      "validated half-width at 90% instead of 95%"),
    # ------------------------------------------------------------------ report/claims.py
    M("claims-one-sided", CLM, "lo, hi = center - tol, center + tol", "lo, hi = -math.inf, center + tol", T_CLM,
      "|x − c| ≤ tol made one-sided (r far below 1, or retain far below Re-train, holds)"),
    M("claims-r-one-sided", CLM, "v = both(within(iv, R_TOL, center=1.0),",
      "v = both(within(iv and (iv[0], max(iv[1], 1.0), max(iv[2], 1.0)), R_TOL, center=1.0),", T_CLM,
      "|r − 1| ≤ 0.05 made one-sided (over-forgetting, r < 1, accepted)"),
    M("claims-r-tol", CLM, "R_TOL = 0.05", "R_TOL = 0.06", T_CLM, "the 0.05 boundary of |r − 1| moved"),
    M("claims-acc-tol", CLM, "ACC_TOL = 3.0", "ACC_TOL = 3.5", T_CLM, "the 3-point retain/test boundary moved"),
    M("claims-within-open", CLM, "if lo <= iv[1] and iv[2] <= hi:", "if lo < iv[1] and iv[2] < hi:", T_CLM,
      "a value exactly on the boundary no longer inside"),
    M("claims-above-ge", CLM, "return HOLDS if iv[1] > t else", "return HOLDS if iv[1] >= t else", T_CLM,
      "r > 1 holds with the interval's low end at 1"),
    M("claims-failed-beating", CLM, "verdicts.append(HOLDS if rurk_ok else INCONCLUSIVE)",
      "verdicts.append(FAILS if rurk_ok else INCONCLUSIVE)", T_CLM,
      "a competitor that failed on every seed counted as beating RURK"),
    M("claims-failed-beaten-always", CLM, "verdicts.append(HOLDS if rurk_ok else INCONCLUSIVE)",
      "verdicts.append(HOLDS)", T_CLM,
      "a competitor that failed on every seed counted as beaten even when RURK has no gap either"),
    M("claims-failed-ignored", CLM, "verdicts.append(HOLDS if rurk_ok else INCONCLUSIVE)",
      "verdicts.append(INCONCLUSIVE)", T_CLM,
      "a competitor that failed on every seed leaves the claim inconclusive"),
    M("claims-unpaired-mean", CLM, "return interval([x - y for x, y in zip(va, vb) if x is not None and y is not None])",
      "return interval([x - float(np.mean([v for v in vb if v is not None])) for x, y in zip(va, vb) "
      "if x is not None and y is not None])", T_CLM,
      "retain/test differences taken unpaired (each seed against Re-train's mean)"),
    M("claims-unpaired-shuffled", CLM,
      "return interval([x - y for x, y in zip(va, vb) if x is not None and y is not None])",
      "return interval([x - y for x, y in zip(va, vb[::-1]) if x is not None and y is not None])", T_CLM,
      "retain/test differences paired with the wrong seeds"),
    M("claims-gap-unpaired", CLM, "diffs = [x - y for x, y in zip(ga, gb) if x is not None and y is not None]",
      "diffs = [x - y for x, y in zip(ga, gb[::-1]) if x is not None and y is not None]", T_CLM,
      "Avg. Gap differences paired with the wrong seeds"),
    M("claims-gap-holds-mean", CLM, "HOLDS if iv[2] < 0 else", "HOLDS if iv[0] < 0 else", T_CLM,
      "smallest gap holds on the mean difference, not the whole interval"),
    M("claims-gap-fails-mean", CLM, "FAILS if iv[1] > 0", "FAILS if iv[0] > 0", T_CLM,
      "smallest gap fails on the mean difference, not the whole interval"),
    M("claims-gap-one-seed", CLM, "verdicts.append(INCONCLUSIVE if len(diffs) < 2", "verdicts.append(INCONCLUSIVE if len(diffs) < 1",
      T_CLM, "one paired seed decides the smallest-gap claim"),
    M("claims-variants-compete", CLM, 'and e.get("base", m) == m]', "]", T_CLM,
      "command-line variants counted as competitors"),
    M("claims-both-inconclusive", CLM, "return FAILS if FAILS in verdicts else INCONCLUSIVE", "return INCONCLUSIVE", T_CLM,
      "a failed part leaves the claim inconclusive"),
    M("claims-tau-first", CLM, "return int(np.argmin([abs(t - tau) for t in taus]))",
      "return int(np.argmin([t - tau for t in taus]))", T_CLM, "the claims read the first τ, not the nearest to 0.03"),
    M("claims-t-quantile", CLM, "stats.t.ppf(0.975, len(vals) - 1)", "stats.norm.ppf(0.975)", T_CLM,
      "normal instead of Student-t quantile"),
    # ------------------------------------------------------------------ report/readme.py: the tolerant check
    M("readme-floor-gap", RDM, '"gap": 4.5, "epochs": 2.0, "r": 0.04', '"gap": 5.5, "epochs": 2.0, "r": 0.04', T_RDM,
      "Avg. Gap floor changed"),
    M("readme-floor-r", RDM, '"gap": 4.5, "epochs": 2.0, "r": 0.04', '"gap": 4.5, "epochs": 2.0, "r": 0.05', T_RDM,
      "r floor changed"),
    M("readme-floor-acc", RDM, 'FLOORS = {"acc": 3.0,', 'FLOORS = {"acc": 4.0,', T_RDM, "accuracy floor changed"),
    M("readme-z", RDM, "Z = 4.0", "Z = 5.0", T_RDM, "Z changed (4 → 5)"),
    M("readme-z-down", RDM, "Z = 4.0", "Z = 3.0", T_RDM, "Z changed (4 → 3)"),
    M("readme-cap-acc", RDM, 'CAPS = {"acc": 20.0,', 'CAPS = {"acc": 30.0,', T_RDM, "accuracy cap changed"),
    M("readme-cap-r", RDM, '"epochs": 8.0, "r": 0.3,', '"epochs": 8.0, "r": 0.4,', T_RDM, "r cap changed"),
    M("readme-cap-gap", RDM, '"gap": 25.0,', '"gap": 35.0,', T_RDM, "Avg. Gap cap changed"),
    M("readme-no-cap", RDM, "min(Z * math.sqrt(1 / n_a + 1 / n_b) * sd_a, cap(kind, tau))",
      "Z * math.sqrt(1 / n_a + 1 / n_b) * sd_a", T_RDM, "no cap at all"),
    M("readme-r-floor-slope", RDM, "R_FLOOR_SLOPE = 0.5", "R_FLOOR_SLOPE = 1.0", T_RDM, "r floor's growth with τ"),
    M("readme-r-cap-slope", RDM, "R_CAP_SLOPE = 1.5", "R_CAP_SLOPE = 0.5", T_RDM, "r cap's growth with τ"),
    M("readme-se-n", RDM, "math.sqrt(1 / n_a + 1 / n_b)", "math.sqrt(2 / n_a)", T_RDM,
      "standard error of a difference from the committed n alone"),
    M("readme-mean-not-median", RDM, "return float(statistics.median(vals)),", "return float(statistics.mean(vals)),",
      T_RDM, "per-seed values compared by their mean, not their median"),
    M("readme-sd-sample", RDM, "float(statistics.pstdev(vals))", "float(statistics.stdev(vals))", T_RDM,
      "committed spread with ddof 1 instead of the population sd"),
    M("readme-fresh-spread", RDM, "(va, sa, what), (vb, _, _) = _stat(", "(va, _, what), (vb, sa, _) = _stat(", T_RDM,
      "the fresh run's spread widens its own tolerance"),
    M("readme-gap-ratio", RDM, "GAP_RATIO, GAP_RATIO_MIN = 3.0, 1.0", "GAP_RATIO, GAP_RATIO_MIN = 4.0, 1.0", T_RDM,
      "Avg. Gap ratio ×3 → ×4"),
    M("readme-gap-ratio-min", RDM, "GAP_RATIO, GAP_RATIO_MIN = 3.0, 1.0", "GAP_RATIO, GAP_RATIO_MIN = 3.0, 3.0", T_RDM,
      "Avg. Gap ratio rule needs a move of 3 points, not 1"),
    M("readme-gap-ratio-zero", RDM, "(min(va, vb) <= 0 or max(va, vb)", "(min(va, vb) < 0 or max(va, vb)", T_RDM,
      "an Avg. Gap moving to or from 0 escapes the ratio rule"),
    M("readme-gap-ratio-ge", RDM, "max(va, vb) / min(va, vb) > GAP_RATIO", "max(va, vb) / min(va, vb) >= GAP_RATIO",
      T_RDM, "exactly ×3 fails"),
    M("readme-cross-product", RDM, "(va - 1) * (vb - 1) < 0 and", "(va - 1) * (vb - 1) <= 0 and", T_RDM,
      "r that lands on 1 or leaves 1 counts as crossing"),
    M("readme-cross-distance", RDM, "and abs(vb - 1) > CROSS:", "and abs(vb - va) > CROSS:", T_RDM,
      "crossing judged by the move, not by how far beyond 1 it lands"),
    M("readme-cross-tau", RDM, "tau <= CROSS_TAU and", "tau < CROSS_TAU and", T_RDM, "r crossing rule off at τ = 0.03"),
    M("readme-cross-size", RDM, "CROSS_TAU, CROSS = 0.03, 0.1", "CROSS_TAU, CROSS = 0.03, 0.2", T_RDM,
      "crossing margin 0.1 → 0.2"),
    M("readme-dash-accepted", RDM, "if (va is None) != (vb is None) or (", "if (", T_RDM,
      "a '–' cell that becomes a number (or back) accepted"),
    M("readme-censored-accepted", RDM,
      " or (va is not None and math.isinf(va) != math.isinf(vb)):", ":", T_RDM,
      "a '>30' cell that becomes a number (or back) accepted"),
    M("readme-censored-parsed", RDM, 'if text.startswith(">"):', 'if text.startswith(">>"):', T_RDM,
      "'>30' read as 30"),
    M("readme-failed-row-ok", RDM, 'failed = "failed" in rb[0] and "failed" not in ra[0]', "failed = False", T_RDM,
      "a row that starts failing is only 'moved'"),
    M("readme-failed-seed-ok", RDM, "if seeds_a and seeds_b and None in seeds_b and None not in seeds_a:", "if False:",
      T_RDM, "a seed without a value (failed) passes on the others' median"),
    M("readme-verdict-two-steps", RDM, "if step == 1 and ea != eb and overlap:", "if step >= 1 and ea != eb and overlap:",
      T_RDM, "holds ↔ does not hold accepted"),
    M("readme-verdict-no-evidence", RDM, "if step == 1 and ea != eb and overlap:", "if step == 1 and overlap:", T_RDM,
      "a verdict may move without its evidence"),
    M("readme-verdict-disjoint", RDM, "all(lo1 <= hi2 and lo2 <= hi1 for", "all(lo1 <= hi2 or lo2 <= hi1 for", T_RDM,
      "a verdict may move to disjoint intervals"),
    M("readme-exact-without-fingerprint", RDM, "if a.fingerprint and a.fingerprint == b.fingerprint:",
      "if a.fingerprint == b.fingerprint:", T_RDM, "two blocks without fingerprints compared exactly"),
    M("readme-exact-tables-only", RDM, "if committed == fresh:", "if parse(committed).rows == parse(fresh).rows:", T_RDM,
      "same fingerprint: only the table must be identical (claims, seeds may change)"),
    M("readme-forget-kind", RDM, 'return "forget"  # bimodal', 'return "acc"  # bimodal', T_RDM,
      "Unlearn/MIA columns get the accuracy cap"),
    # ------------------------------------------------------------------ run/tune.py + run/study.py
    M("tune-name-no-split-seeds", TUN, '"seed": seed, "split_seeds": list(split_seeds), "sampler_seed": sampler_seed,',
      '"seed": seed, "sampler_seed": sampler_seed,', T_TUN, "study identity without the split seeds"),
    M("tune-name-no-seed", TUN, '"seed": seed, "split_seeds": list(split_seeds), "sampler_seed": sampler_seed,',
      '"split_seeds": list(split_seeds), "sampler_seed": sampler_seed,', T_TUN, "study identity without the tuning seed"),
    M("tune-name-no-sampler-seed", TUN, '"seed": seed, "split_seeds": list(split_seeds), "sampler_seed": sampler_seed,',
      '"seed": seed, "split_seeds": list(split_seeds),', T_TUN, "study identity without the sampler seed"),
    M("tune-name-no-incumbent", TUN, 'ident["incumbent"] = incumbent', "pass", T_TUN,
      "study identity without the incumbent"),
    M("tune-name-no-pruner", TUN, 'ident["pruner"] = _pruner_name() if prune else None', 'ident["pruner"] = None', T_TUN,
      "study identity without the pruner"),
    M("tune-name-no-forget", TUN, 'if k not in ("methods", "tuned", "description", "relearn", "audit")}',
      'if k not in ("methods", "tuned", "description", "relearn", "audit", "forget")}', T_TUN,
      "study identity without the scenario's forget settings"),
    M("tune-name-no-objective", TUN, 'ident["objective"] = objective', "pass", T_TUN,
      "study identity without the objective"),
    M("tune-prune-second-split", TUN, "if i == 0 and n > 1 and report is not None:\n            report(gaps[0])",
      "if i == 1 and n > 2 and report is not None:\n            report(gaps[1])", T_TUN,
      "pruning decided after the second forget set instead of the first"),
    M("tune-prune-after-all", TUN, "if i == 0 and n > 1 and report is not None:", "if i == n - 1 and report is not None:",
      T_TUN, "pruning decided after the last forget set (no work saved)"),
    M("tune-mean-max", TUN, "return float(sum(gaps) / len(gaps)), gaps", "return float(max(gaps)), gaps", T_TUN,
      "objective: the worst forget set instead of the mean"),
    M("tune-profile-max", TUN, "gap += PROFILE_WEIGHT * float(abs(r - 1).mean())",
      "gap += PROFILE_WEIGHT * float(abs(r - 1).max())", T_TUN, "profile objective: the worst τ instead of the mean"),
    M("tune-profile-cache-first-split", TUN, "if i not in self._retrain_acc:\n                self._retrain_acc[i]",
      "if not self._retrain_acc:\n                self._retrain_acc[i]", T_TUN,
      "profile objective: Re-train's accuracy of the first forget set reused for the others"),
    M("tune-worker-key-no-objective", TUN, "key = (method, repr(base), objective)", "key = (method, repr(base))", T_TUN,
      "a worker's cached objective reused for another objective"),
    M("tune-reported-split-allowed", TUN, "if scenario.seeds.split in split_seeds:", "if False:", T_TUN,
      "tuning allowed on the scenario's reported split seed"),
    M("tune-reported-seed-allowed", TUN, "if seed in scenario.seeds.run:", "if False:", T_TUN,
      "tuning allowed at a reported run seed"),
    M("tune-best-max", TUN, 'best = min(complete, key=lambda r: (r["avg_gap"], r["number"]))',
      'best = max(complete, key=lambda r: (r["avg_gap"], r["number"]))', T_TUN, "the worst trial written as the best"),
    M("study-sampler-seed-per-trial", STU, 'derive_seed(self.sampler_seed, "tpe", n)',
      'derive_seed(self.sampler_seed, "tpe", 0)', T_TUN, "every trial asked with the same sampler seed"),
    M("study-incumbent-every-run", STU, "if n == 0 and self.incumbent is not None:",
      "if self.incumbent is not None and not self.study.get_trials(deepcopy=False):", T_TUN,
      "incumbent not enqueued when the study holds only a discarded trial"),
    M("study-incumbent-trial-1", STU, "if n == 0 and self.incumbent is not None:",
      "if n == 1 and self.incumbent is not None:", T_TUN, "the incumbent is trial 1, not trial 0"),
    M("study-pruner-warmup", STU, "n_warmup_steps=0)", "n_warmup_steps=1)", T_TUN,
      "pruner warm-up past the only reported step (never prunes)"),
    M("study-pruner-startup", STU, "PRUNER_STARTUP_TRIALS = 4", "PRUNER_STARTUP_TRIALS = 2", T_TUN,
      "pruner's start-up trials 4 → 2"),
    M("study-report-step", STU, "trial.report(first, 0)", "trial.report(first, 1)", T_TUN,
      "first forget set reported as step 1"),
    M("study-direction", STU, 'direction="minimize"', 'direction="maximize"', T_TUN, "study maximises the gap"),
    # ------------------------------------------------------------------ audit/kernel.py: the counting kernel
    M("kernel-chunks-floor", KER, "k = max(1, -(-n // size))", "k = max(1, n // size)", T_KER,
      "chunks may exceed the batch size"),
    M("kernel-tau0-no-c", KER, "k_m[t] = c * (pm0 == y)", "k_m[t] = (pm0 == y)", T_KER,
      "τ = 0 shortcut counts one copy instead of c"),
    M("kernel-group-view", KER, "kt[t, r0:r1] = h.view(-1, c).sum(1)", "kt[t, r0:r1] = h.view(c, -1).sum(0)", T_KER,
      "copies summed across samples instead of per sample"),
    M("kernel-one-block-noise", KER, "block_generator(seed, pr.name, b, dev)", "block_generator(seed, pr.name, 0, dev)",
      T_KER, "every noise block draws the same noise"),
    M("kernel-per-group", KER, "per_group = max(1, bs // (block_size * c))", "per_group = max(1, bs // block_size)",
      T_KER, "more blocks grouped per pass (bigger groups, chunked)"),
    M("kernel-self-fwd", KER, "            fwd //= 2\n", "            fwd //= 1\n", T_KER,
      "one model against itself counted as two passes"),
    M("kernel-clipped-low-only", KER, "clipped[t] += ((v < 0) | (v > 1)).sum()", "clipped[t] += (v < 0).sum()", T_KER,
      "clip fraction counts only the lower bound"),
    M("kernel-clip-fraction-no-draws", KER, "/ (n * spec.draws * n_features)", "/ (n * n_features)", T_KER,
      "clip fraction not divided by the copies"),
    M("kernel-nan-not-counted", KER, "self.bad[key] += top.shape[0] - torch.isfinite(top).sum()", "self.bad[key] += 0",
      ("tests/test_audit.py", "tests/test_reliability.py"), "non-finite logits counted as predictions"),
    M("kernel-shared-no-seed", KER, "shared.bind((id(a), seed, tuple(taus),", "shared.bind((id(a), tuple(taus),", T_KER,
      "shared reference predictions bound without the noise seed"),
    M("kernel-max-forget-unseeded", INP, 'derive_seed(int(seed), "max_forget")', 'derive_seed(0, "max_forget")', T_KER,
      "max_forget subset the same for every seed"),
    M("kernel-both-on-m", KER, "return pr.apply(m, xs, ys, tau, dr).x, pr.apply(a, xs, ys, tau, dr).x",
      "return pr.apply(m, xs, ys, tau, dr).x, pr.apply(m, xs, ys, tau, dr).x", T_KER,
      "craft_on='both' crafts the reference's copies on the audited model"),
    M("kernel-tau0-shortcut-ignored", KER, "if t == 0.0 and spec.tau0_shortcut]", "if t == 0.0]", T_KER,
      "τ = 0 shortcut taken even when switched off"),
]


# ---------------------------------------------------------------------------------------------- running
def check_mutants(mutants: list[Mutant], root: Path) -> None:
    """Every mutant's old text occurs exactly once in its file, its new text differs, ids are unique and its test
    paths exist — else the whole run is refused naming each problem."""
    problems = []
    for mid, n in Counter(m.id for m in mutants).items():
        if n > 1:
            problems.append(f"{mid}: id used {n} times")
    for m in mutants:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.id}: no file {m.file}")
            continue
        n = path.read_text().count(m.old)
        if n != 1:
            problems.append(f"{m.id}: its old text occurs {n} times in {m.file} (expected exactly once): {m.old!r}")
        if m.old == m.new:
            problems.append(f"{m.id}: old and new text are the same")
        for t in m.tests:
            if not (root / t.split("::")[0]).is_file():
                problems.append(f"{m.id}: no test file {t}")
    if problems:
        raise SystemExit("mutate.py: refused:\n  " + "\n  ".join(problems))


def scratch_copy(dest: Path) -> Path:
    """The working tree's files (tracked, and untracked ones git does not ignore) copied to ``dest``."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_tests(root: Path, tests: tuple[str, ...], timeout: float, stop_first: bool = True) -> tuple[str, float, str]:
    """``pytest [-x] -q`` on ``tests`` in ``root``: ("pass" | "fail" | "timeout", seconds, output tail)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONDONTWRITEBYTECODE="1", RURK_PROGRESS="0")
    with tempfile.TemporaryDirectory(prefix="mutate-pyc-") as pyc:
        env["PYTHONPYCACHEPREFIX"] = pyc
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-x"] if stop_first else []), *tests]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return "timeout", time.perf_counter() - t0, ""
        except BaseException:
            _kill(proc)
            raise
    secs = time.perf_counter() - t0
    tail = "\n".join(out.strip().splitlines()[-15:])
    if proc.returncode == 0:
        return "pass", secs, tail
    if proc.returncode in (1, 2):  # a test failed / collection failed (a mutant that does not even import)
        return "fail", secs, tail
    raise SystemExit(f"mutate.py: pytest exited {proc.returncode} on {' '.join(tests)} (usage error or no tests):\n{tail}")


def _kill(proc: subprocess.Popen) -> None:
    """End the pytest process group this script started (by its id), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def check_isolation(root: Path) -> None:
    """The test runs import rurk from ``root`` (the scratch copy), never from the checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import rurk; print(rurk.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"mutate.py: rurk imports from {where}, not from the scratch copy {root}: refused")


def run_mutant(m: Mutant, root: Path, timeout: float) -> tuple[str, float]:
    """Apply ``m`` in ``root``, run its tests, restore the file (always); ("killed" | "timeout" | "survived", s)."""
    path = root / m.file
    original = path.read_bytes()
    stat = path.stat()
    text = original.decode()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutate.py: {m.id}: old text no longer occurs exactly once in {m.file}")
    try:
        path.write_text(text.replace(m.old, m.new, 1))
        outcome, secs, _ = run_tests(root, m.tests, timeout)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return {"fail": "killed", "timeout": "timeout", "pass": "survived"}[outcome], secs


def table(results: list[tuple[Mutant, str, float]]) -> str:
    lines = ["| mutant | module | behaviour | result | s |", "|---|---|---|---|---|"]
    for m, result, secs in results:
        lines.append(f"| `{m.id}` | {m.module} | {m.behaviour.replace('|', '/')} | "
                     f"{'**survived**' if result == 'survived' else result} | {secs:.0f} |")
    return "\n".join(lines)


def scores(results: list[tuple[Mutant, str, float]]) -> str:
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m, result, _ in results:
        per[m.module][1] += 1
        per[m.module][0] += result != "survived"
    lines = ["| module | killed | mutants | score |", "|---|---|---|---|"]
    for mod in sorted(per):
        k, n = per[mod]
        lines.append(f"| {mod} | {k} | {n} | {100 * k / n:.0f}% |")
    k, n = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    lines.append(f"| **total** | {k} | {n} | **{100 * k / n:.0f}%** |")
    survivors = [m.id for m, r, _ in results if r == "survived"]
    lines += ["", "Survivors: " + (", ".join(f"`{s}`" for s in survivors) if survivors else "none")]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--module", help="only mutants whose module contains this text (e.g. readme, tune)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant's test run [300]")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    ap.add_argument("--in-place", action="store_true", help="mutate the checkout itself, not a scratch copy")
    ap.add_argument("--out", help="also write the table and scores to this Markdown file")
    args = ap.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        ids = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(ids) - {m.id for m in MUTANTS})
        if unknown:
            raise SystemExit(f"mutate.py: --only: unknown mutant ids {unknown}")
        mutants = [m for m in MUTANTS if m.id in ids]
    if args.module:
        mutants = [m for m in mutants if args.module in m.module]
    check_mutants(MUTANTS, ROOT)  # all of them, so that a stale mutant is noticed on any run
    if args.list:
        for m in mutants:
            print(f"{m.id:40s} {m.module:28s} {m.behaviour}")
        print(f"{len(mutants)} mutants")
        return 0

    def on_term(signum, frame):  # SIGTERM as Ctrl-C: the finally blocks restore the file
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    scratch = None if args.in_place else tempfile.mkdtemp(prefix="rurk-mutate-")
    root = ROOT if scratch is None else scratch_copy(Path(scratch))
    results: list[tuple[Mutant, str, float]] = []
    try:
        if scratch is not None:
            check_isolation(root)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            print(f"baseline: {' '.join(tests)}", flush=True)
            outcome, secs, tail = run_tests(root, tests, args.timeout * 4, stop_first=False)
            if outcome != "pass":
                raise SystemExit(f"mutate.py: the unmutated tests do not pass ({outcome}, {secs:.0f} s); "
                                 f"no mutant is meaningful until they do:\n{tail}")
            print(f"baseline passes ({secs:.0f} s)", flush=True)
        for i, m in enumerate(mutants, 1):
            result, secs = run_mutant(m, root, args.timeout)
            results.append((m, result, secs))
            print(f"[{i}/{len(mutants)}] {m.id}: {result} ({secs:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every mutated file is restored; the results so far:", file=sys.stderr)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    report = table(results) + "\n\n" + scores(results) if results else "no mutant was run"
    print("\n" + report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")
    return 0 if len(results) == len(mutants) else 130


if __name__ == "__main__":
    sys.exit(main())
