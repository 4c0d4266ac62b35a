"""The residual-knowledge audit: the paper's r_tau with explicit zero-count rules (residual-knowledge.md).

For every forget sample (x, y) and strength tau, ``c`` perturbed copies x' are drawn by a probe
(:mod:`rurk.perturb`) and fed to both the unlearned model m and the reference a (re-trained). Per
(tau, sample) the audit counts

* ``k_m`` = #{j : m(x'_j) = y},  ``k_a`` = #{j : a(x'_j) = y},  ``d`` = #{j : m(x'_j) != a(x'_j)}

and summarises them per tau (:func:`summarise_counts`): ``r_paper`` (mean of k_m/k_a over samples with
k_a > 0; None if there are none) with ``n_used``/``n_both_zero``/``n_unbounded``, ``r_pooled`` = sum k_m /
sum k_a, ``prevalence`` (fraction with k_m > k_a), ``acc_m``, ``acc_a``, ``disagreement`` and a percentile
bootstrap ``ci95`` for each.

Performance (spec §8): no Python loop per sample or draw. Samples are processed in fixed-size *blocks*;
a block's (samples x draws) copies are built with ``repeat_interleave`` and their randomness is drawn
once from the block's own generator (seed = stable hash of (seed, probe name, block index)), then
reused for every tau (common random numbers) and cut into evaluation chunks of ``batch_size`` images.
Because the randomness is tied to blocks, not to chunks, perturbations are bit-identical whatever the
batch size. Both models run on the same chunk under ``torch.inference_mode`` in eval mode; counts stay
on the device until the end. For 4-D inputs to conv nets, kernels and inputs are given channels_last
*strides* for the duration (:func:`rurk.torchutil.in_format`) -- also where a size-1 dimension (one input channel) makes
``.contiguous(memory_format=channels_last)`` a no-op, which left the first conv and its pooling in NCHW. At tau = 0 every copy equals x, so one forward pass per sample gives
k = c * 1[pred = y] (the *tau = 0 shortcut*).


The package, by concern: :mod:`.spec` (the settings), :mod:`.kernel` (the counting kernel and
:func:`residual_knowledge`), :mod:`.stats` (the statistics of the counts), :mod:`.result` (the outcome and its files);
beside them the standard metrics (:mod:`.metrics`, :mod:`.metric_specs`), the attack curves (:mod:`.attacks`), the
per-sample gallery (:mod:`.gallery`), the estimate of Re-train (:mod:`.estimate`) and the audit without Re-train
(:mod:`.free`). Everything a user imports is re-exported here (``from rurk.audit import residual_knowledge``).
"""

from __future__ import annotations

from .kernel import (
    AuditInputs,
    Counts,
    ReferencePredictions,
    check_inputs,
    count_correct,
    residual_knowledge,
    tau_statistics,
)
from .result import AuditResult, Timing
from .spec import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_TAUS,
    AuditSpec,
    audit_spec,
    default_batch_size,
)
from .stats import (
    STAT_FIELDS,
    TauStats,
    bootstrap_indices,
    per_sample_ratio,
    summarise_counts,
)

__all__ = [
    "DEFAULT_TAUS",
    "DEFAULT_BLOCK_SIZE",
    "STAT_FIELDS",
    "AuditInputs",
    "AuditResult",
    "AuditSpec",
    "Counts",
    "ReferencePredictions",
    "audit_spec",
    "check_inputs",
    "count_correct",
    "tau_statistics",
    "TauStats",
    "Timing",
    "bootstrap_indices",
    "default_batch_size",
    "per_sample_ratio",
    "residual_knowledge",
    "summarise_counts",
]
