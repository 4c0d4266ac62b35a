"""Standard unlearning metrics (evaluation.md §1) and their aggregation over seeds (§2).

Every function here is a pure function of (models, data, config, seed): models are never mutated, their
train/eval mode is restored, and every random choice comes from the given seed.

==========================  ===============================================================================
``standard_accuracies``     retain acc, unlearn acc (= 1 − forget acc), test acc -> :class:`Accuracies`
``standard_metrics``        the accuracies and the MIA from one inference pass per set (what a run evaluates)
``true_label_probs``        softmax probability of the true label p_y per sample (the MIA feature; cacheable)
``mia_sample``              sample-unlearning MIA on cached features: % of S_f predicted non-member
``mia_class``               class-unlearning MIA on cached features (S_f split 50/50)
``mia``                     convenience: features + the right MIA variant for one model
``mean_ce`` / ``relearn_time``  re-learn time: epochs of fine-tuning on S_f until L ≤ (1+η)·L(Original, S_f)
``avg_gap``                 mean |m − ref| over retain/unlearn/test/MIA, in percentage points
``aggregate``               mean ± std (ddof = 0) over seeds, with censored re-learn values counted apart
==========================  ===============================================================================

Reports store fractions; only :func:`avg_gap` returns percentage points (as the paper's tables).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.svm import SVC
from torch import nn

from ..config import RelearnConfig
from ..data.tensordata import TensorData
from ..torchutil import model_device, predict
from ..train import (
    BatchStream,
    OptimConfig,
    accuracy,
    cross_entropy_loss,
    logits_accuracy,
    prepare_model,
    run_loop,
)
from .metric_specs import GAP_KEYS

__all__ = [
    "Accuracies",
    "Relearn",
    "standard_accuracies",
    "standard_metrics",
    "true_label_probs",
    "mia_sample",
    "mia_class",
    "mia",
    "mean_ce",
    "relearn_time",
    "avg_gap",
    "aggregate",
    "GAP_KEYS",
    "MIA_SVC_PARAMS",
]

#: The attacker of the paper's MIA (evaluation.md §1).
MIA_SVC_PARAMS = dict(C=3, gamma="auto", kernel="rbf")


# ---------------------------------------------------------------------------------------------- accuracies
@dataclass(frozen=True)
class Accuracies:
    """Fractions in [0, 1] (NaN for an empty set). ``unlearn_acc`` = 1 − accuracy on S_f (forget error)."""

    retain_acc: float
    unlearn_acc: float
    test_acc: float

    def to_json(self) -> dict:
        return asdict(self)


def standard_accuracies(model: nn.Module, retain: TensorData, forget: TensorData, test: TensorData) -> Accuracies:
    """Retain / unlearn / test accuracy of ``model`` (eval mode, batched; one inference pass per set)."""
    return Accuracies(
        retain_acc=accuracy(model, retain),
        unlearn_acc=1.0 - accuracy(model, forget),
        test_acc=accuracy(model, test),
    )


# ---------------------------------------------------------------------------------------------- MIA
def true_label_probs(model: nn.Module, data: TensorData, batch_size: int = 256) -> np.ndarray:
    """Softmax probability of the true label, p_y, for every sample of ``data`` (eval mode, batched), as a
    float64 array of length ``len(data)``. This is the MIA feature; callers may cache it per model."""
    return _outputs(model, data, batch_size)[1]


def _outputs(model: nn.Module, data: TensorData, batch_size: int = 256) -> tuple[float, np.ndarray]:
    """Accuracy (a fraction; NaN when empty) and p_y (float64) of ``model`` on ``data`` from one inference pass:
    the same numbers as :func:`rurk.train.accuracy` and :func:`true_label_probs` computed apart."""
    if len(data) == 0:
        return float("nan"), np.zeros(0, dtype=np.float64)
    logits = predict(model, data.x, batch_size)
    y = data.y.to(logits.device).long()
    acc = logits_accuracy(logits, data.y)
    p = torch.softmax(logits.double(), dim=1).gather(1, y[:, None]).squeeze(1)
    return acc, p.cpu().numpy()


def standard_metrics(model: nn.Module, retain: TensorData, forget: TensorData, test: TensorData, seed: int,
                     class_unlearning: bool = False, max_per_side: int | None = None) -> tuple[Accuracies, float]:
    """:func:`standard_accuracies` and :func:`mia` of one model from a single inference pass per set (the two
    read the same logits: accuracy from their argmax, the MIA feature from their softmax) — identical numbers,
    half the forward passes."""
    (a_r, p_r), (a_f, p_f), (a_t, p_t) = (_outputs(model, d) for d in (retain, forget, test))
    return Accuracies(retain_acc=a_r, unlearn_acc=1.0 - a_f, test_acc=a_t), \
        _mia(p_r, p_f, p_t, seed, class_unlearning, max_per_side)


def _feature(p, what: str) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"MIA: {what} features contain NaN/inf")
    return a


def _attack(members: np.ndarray, nonmembers: np.ndarray, targets: np.ndarray) -> float:
    """Fit the SVC on members (1) vs non-members (0) and return the fraction of ``targets`` predicted 0."""
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.ones(len(members), dtype=np.int64), np.zeros(len(nonmembers), dtype=np.int64)])
    clf = SVC(**MIA_SVC_PARAMS)
    clf.fit(x, y)
    pred = clf.predict(targets[:, None])
    return float(np.mean(pred == 0))


def _per_side(n_a: int, n_b: int, max_per_side: int | None) -> int:
    n = min(n_a, n_b)
    if max_per_side is not None:
        if max_per_side < 1:
            raise ValueError(f"max_per_side must be >= 1 or None, got {max_per_side}")
        n = min(n, int(max_per_side))
    return n


def mia_sample(p_retain, p_test, p_forget, seed: int, max_per_side: int | None = None) -> float:
    """Sample-unlearning MIA (evaluation.md §1) on precomputed p_y features.

    ``SVC(C=3, gamma='auto', kernel='rbf')`` is trained on n seeded random retain samples labelled 1 (member)
    and n seeded random test samples labelled 0 (non-member), n = min(|S_r|, |test|) (capped by
    ``max_per_side``); each side is drawn without replacement from its own generator
    ``numpy.random.default_rng([seed, side])``. Returns the fraction of the forget samples predicted 0
    (non-member), in [0, 1]. The ideal unlearner matches Re-train's value (not 1)."""
    p_r, p_t, p_f = _feature(p_retain, "retain"), _feature(p_test, "test"), _feature(p_forget, "forget")
    if len(p_f) == 0:
        raise ValueError("mia_sample: the forget set is empty")
    n = _per_side(len(p_r), len(p_t), max_per_side)
    if n == 0:
        raise ValueError(f"mia_sample: need retain and test samples, got {len(p_r)} and {len(p_t)}")
    idx_r = np.random.default_rng([int(seed), 0]).choice(len(p_r), size=n, replace=False)
    idx_t = np.random.default_rng([int(seed), 1]).choice(len(p_t), size=n, replace=False)
    return _attack(p_r[idx_r], p_t[idx_t], p_f)


def mia_class(p_retain, p_forget, seed: int, max_per_side: int | None = None) -> float:
    """Class-unlearning MIA (evaluation.md §1) on precomputed p_y features.

    S_f is split 50/50 by ``numpy.random.default_rng([seed, 2]).permutation`` (half A = the first
    floor(|S_f|/2), half B = the rest; pass the split seed, as the spec says). The SVC is trained on retain
    (1) against half A (0) and the fraction of half B predicted 0 is returned.

    Decision: the training set is balanced as in the sample variant -- n = min(|S_r|, |A|) seeded random
    samples per side (capped by ``max_per_side``), retain drawn with ``default_rng([seed, 0])``. The spec does
    not say; unbalanced classes (e.g. 38,000 vs 2,000) would bias the RBF-SVC towards "member" and make the
    fit quadratic in |S_r|."""
    p_r, p_f = _feature(p_retain, "retain"), _feature(p_forget, "forget")
    if len(p_f) < 2:
        raise ValueError(f"mia_class: need at least 2 forget samples to split 50/50, got {len(p_f)}")
    perm = np.random.default_rng([int(seed), 2]).permutation(len(p_f))
    half = len(p_f) // 2
    a, b = p_f[perm[:half]], p_f[perm[half:]]
    n = _per_side(len(p_r), len(a), max_per_side)
    if n == 0:
        raise ValueError("mia_class: the retain set is empty")
    idx_r = np.random.default_rng([int(seed), 0]).choice(len(p_r), size=n, replace=False)
    idx_a = np.random.default_rng([int(seed), 1]).choice(len(a), size=n, replace=False)
    return _attack(p_r[idx_r], a[idx_a], b)


def mia(model: nn.Module, retain: TensorData, forget: TensorData, test: TensorData | None, seed: int,
        class_unlearning: bool = False, max_per_side: int | None = None) -> float:
    """The MIA value of ``model``: computes the p_y features and runs :func:`mia_sample`
    (or :func:`mia_class`, which ignores ``test``). Cache :func:`true_label_probs` yourself to avoid
    recomputing features."""
    p_t = None if class_unlearning or test is None else true_label_probs(model, test)
    return _mia(true_label_probs(model, retain), true_label_probs(model, forget), p_t, seed, class_unlearning,
                max_per_side)


def _mia(p_r: np.ndarray, p_f: np.ndarray, p_t: np.ndarray | None, seed: int, class_unlearning: bool,
         max_per_side: int | None) -> float:
    """The right MIA variant on the p_y features (``p_t``, the test features, unused for class unlearning)."""
    if class_unlearning:
        return mia_class(p_r, p_f, seed, max_per_side)
    if p_t is None:
        raise ValueError("mia: sample unlearning needs a test set")
    return mia_sample(p_r, p_t, p_f, seed, max_per_side)


# ---------------------------------------------------------------------------------------------- re-learn time
def mean_ce(model: nn.Module, data: TensorData, batch_size: int = 256) -> float:
    """Mean cross-entropy of ``model`` on ``data`` in eval mode (mode restored; batched)."""
    if len(data) == 0:
        return float("nan")
    logits = predict(model, data.x, batch_size)
    return float(F.cross_entropy(logits, data.y.to(logits.device).long()))


@dataclass(frozen=True)
class Relearn:
    """Re-learn time. ``epochs`` = steps / steps_per_epoch (fractional), None when censored (stored as
    ``null`` with ``censored: true``; shown as ">max_epochs"). ``steps`` = optimiser steps taken until the
    threshold was first met (all steps run when censored). ``diverged``: the fine-tuning loss became
    non-finite before the threshold was met (then censored)."""

    epochs: float | None
    censored: bool
    steps: int
    steps_per_epoch: int
    threshold: float
    initial_loss: float
    final_loss: float
    max_epochs: int
    diverged: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def relearn_time(
    model: nn.Module,
    forget: TensorData,
    original_forget_loss: float,
    seed: int,
    cfg: RelearnConfig | None = None,
    *,
    loader_seed: int = 7,
) -> Relearn:
    """Re-learn time of ``model`` on ``forget`` (evaluation.md §1; paper: η = 0.05, cap 30 epochs; the settings
    are a :class:`rurk.config.RelearnConfig`, a scenario's ``[relearn]`` table).

    A deep copy of ``model`` (all parameters trainable) is fine-tuned on S_f in train mode with SGD
    (``lr``, ``momentum``, ``weight_decay``), batches of ``batch_size`` shuffled with ``loader_seed``,
    through :func:`rurk.train.run_loop`. ``original_forget_loss`` is L(Original, S_f) = :func:`mean_ce`
    of Original of the same seed; the threshold is L* = (1 + η)·L(Original, S_f). L(copy, S_f) (mean CE,
    eval mode) is checked before any step and after every optimiser step; the first step count k at
    which L ≤ L* gives ``epochs = k / steps_per_epoch`` (0 when already below). Not reached within
    ``max_epochs`` epochs -> ``epochs=None, censored=True``. ``seed`` seeds torch's global RNG (e.g. for
    dropout) inside a forked RNG state, so the caller's RNG is untouched. ``model`` is not modified."""
    cfg = cfg or RelearnConfig()
    lr, momentum, weight_decay, batch_size = cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size
    max_epochs, eta = cfg.max_epochs, cfg.eta
    if len(forget) == 0:
        raise ValueError("relearn_time: the forget set is empty")
    if not math.isfinite(original_forget_loss) or original_forget_loss < 0:
        raise ValueError(f"relearn_time: original_forget_loss must be finite and >= 0, got {original_forget_loss}")
    if max_epochs < 0 or eta < 0:
        raise ValueError(f"relearn_time: need max_epochs >= 0 and eta >= 0, got {max_epochs}, {eta}")
    threshold = (1.0 + eta) * float(original_forget_loss)
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(True)
    prepare_model(work)
    device = model_device(work)
    stream = BatchStream(forget, batch_size, loader_seed, device=device)
    spe = len(stream)
    initial = mean_ce(work, forget)
    reached: list[int] = [0] if initial <= threshold else []

    def stop(m: nn.Module, step: int) -> bool:
        if mean_ce(m, forget) <= threshold:
            reached.append(step)
            return True
        return False

    diverged, final = False, initial
    if not reached and max_epochs > 0:
        cfg = OptimConfig(optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay,
                          epochs=int(max_epochs), batch_size=int(batch_size))
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            rec = run_loop(work, lambda e: stream.epoch(), spe, cross_entropy_loss(), cfg, stop=stop,
                           desc="relearn", progress=False)
        diverged = rec.diverged and not reached
        final = mean_ce(work, forget)
        total_steps = rec.steps
    else:
        total_steps = 0
    if reached:
        k = reached[0]
        return Relearn(k / spe, False, k, spe, threshold, initial, final, int(max_epochs), False)
    return Relearn(None, True, total_steps, spe, threshold, initial, final, int(max_epochs), diverged)


# ---------------------------------------------------------------------------------------------- aggregation
def avg_gap(metrics: dict[str, float], reference: dict[str, float], keys: Sequence[str] = GAP_KEYS) -> float:
    """Avg. Gap in percentage points: mean over ``keys`` of |metrics[k] − reference[k]| × 100, where both
    dicts hold fractions (reference = Re-train; apply it to the seed means for the paper's number)."""
    keys = tuple(keys)
    if not keys:
        raise ValueError("avg_gap: no keys")
    missing = [k for k in keys if k not in metrics or k not in reference]
    if missing:
        raise KeyError(f"avg_gap: missing {missing} (metrics has {sorted(metrics)}, reference has {sorted(reference)})")
    return float(np.mean([abs(float(metrics[k]) - float(reference[k])) * 100.0 for k in keys]))


def aggregate(values: Sequence[float | None]) -> dict:
    """Mean ± std (ddof = 0, as the paper prints: {3, 3, 4} -> 3.33 ± 0.47) over seeds.

    ``None`` marks a censored value (re-learn time > cap). Decision: ``mean``/``std`` are over the
    uncensored values only, ``n`` is the number of values given (seeds) and ``censored`` how many of
    them were censored, so a table can print e.g. "3.50 ± 0.50 (1/3 >30)". With no uncensored value,
    ``mean`` and ``std`` are None."""
    vals = list(values)
    used = np.array([float(v) for v in vals if v is not None], dtype=np.float64)
    censored = len(vals) - len(used)
    if len(used) == 0:
        return {"mean": None, "std": None, "n": len(vals), "censored": censored}
    return {"mean": float(used.mean()), "std": float(used.std(ddof=0)), "n": len(vals), "censored": censored}
