"""Statistics for comparing systems: paired differences, t-intervals, a paired bootstrap, verdicts.

Two kinds of comparison recur in the benchmarks:

* **Arms over seeds.** Each arm (a training recipe) runs once per seed, and the same seed gives every
  arm the same randomness (masks, data order). The seed alone moves a score, so an arm is compared to
  a baseline through the *paired* differences, arm minus baseline on each seed both ran
  (:func:`paired_differences`, :func:`compare_arms`), and the mean of those is read with its Student-t
  interval (:func:`estimate_mean`). Their spread, not the spread of either arm's scores, is the noise a
  difference has to beat.
* **Two systems over queries.** Two systems scored on the same queries (per-query nDCG, say) are
  compared by the mean per-query difference with a paired bootstrap interval
  (:func:`paired_bootstrap_interval`), which assumes nothing about the shape of the differences.

:func:`outcome` reads one candidate's differences to several baselines as a verdict: above all of
them beyond noise (every interval above 0), on the means only, or not.

The t quantile is computed here (:func:`t_quantile`, exact for the integer degrees of freedom that
samples have), so this module needs nothing beyond the standard library and numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from retromem.errors import ConfigError

#: :func:`outcome`: every difference's interval lies above 0
BEYOND_NOISE = "beyond noise"
#: :func:`outcome`: every mean difference is above 0, but some interval reaches 0 or below (or is missing)
ON_MEANS = "on the means"
#: :func:`outcome`: some mean difference is 0 or below, or some difference was not measured
NOT_ABOVE = "not above"


@dataclass(frozen=True)
class MeanEstimate:
    """The mean of a sample with its spread and an interval for the mean.

    ``sd`` is the sample standard deviation and ``interval`` the two-sided interval at ``confidence``
    (``method`` says how it was made: ``"t"`` or ``"bootstrap"``); both are None for fewer than two values.
    """

    values: tuple[float, ...]
    mean: float
    sd: float | None
    interval: tuple[float, float] | None
    confidence: float = 0.95
    method: str = "t"

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_positive(self) -> int:
        """How many values are above 0 (for differences: the seeds or queries on which the candidate won)."""
        return sum(v > 0 for v in self.values)


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds (:func:`compare_arms`)."""

    seeds: tuple
    """The seeds the arm ran with, sorted."""
    score: MeanEstimate
    """Its scores over those seeds, in seed order."""
    versus: dict[str, MeanEstimate] = field(default_factory=dict)
    """Baseline -> the paired differences, this arm minus the baseline on the seeds both ran (seed order).
    Absent for the arm itself and for a baseline that shares no seed with it."""
    paired_seeds: dict[str, tuple] = field(default_factory=dict)
    """Baseline -> the seeds of ``versus[baseline]``."""


def estimate_mean(values: Iterable[float], confidence: float = 0.95) -> MeanEstimate:
    """Mean, sample standard deviation and Student-t interval of the mean of ``values``."""
    values = tuple(float(v) for v in values)
    if not values:
        raise ConfigError("estimate_mean needs at least one value")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return MeanEstimate(values, statistics.fmean(values), sd, t_interval(values, confidence), confidence, "t")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The two-sided Student-t interval at ``confidence`` of the mean of ``values`` (None for fewer than two).

    It assumes the values are independent draws from a roughly normal distribution: for paired
    differences over seeds, each seed's difference is one draw.
    """
    _check_confidence(confidence)
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` (a positive integer) degrees of freedom.

    ``t_quantile(0.975, 2)`` is 4.3027; as ``df`` grows it tends to the normal quantile (1.96). Found by
    bisection on the closed-form distribution function for integer ``df`` (Abramowitz and Stegun 26.7.3
    and 26.7.4), to about 1e-12 relative (fewer digits for ``p`` within 1e-3 of 0.5, lost in ``2p - 1``).
    """
    if not 0.0 < p < 1.0:
        raise ConfigError(f"p must lie strictly between 0 and 1, got {p}")
    if int(df) != df or df < 1:
        raise ConfigError(f"df must be a positive integer, got {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    target = abs(2.0 * p - 1.0)  # P(|T| < t) at the quantile
    low, high = 0.0, 1.0
    while _t_central_probability(high, df) < target:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if _t_central_probability(middle, df) < target:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    quantile = (low + high) / 2.0
    return quantile if p > 0.5 else -quantile


def paired_differences(scores: Mapping[Hashable, float], baseline: Mapping[Hashable, float]) -> dict:
    """``scores[k] - baseline[k]`` for every key both have (seeds, or query ids), in sorted key order."""
    return {key: scores[key] - baseline[key] for key in sorted(k for k in scores if k in baseline)}


def compare_arms(scores_by_arm: Mapping[str, Mapping[Hashable, float]], baselines: Iterable[str],
                 confidence: float = 0.95) -> dict[str, ArmSummary]:
    """Each arm's mean score over its seeds, and its paired differences to each baseline arm.

    ``scores_by_arm`` maps arm -> seed -> score (an arm may miss seeds; differences use the seeds both
    ran). Arms keep the order they are given in; a baseline missing from ``scores_by_arm`` is skipped.
    """
    baselines = tuple(baselines)
    summaries = {}
    for arm, scores in scores_by_arm.items():
        seeds = tuple(sorted(scores))
        summary = ArmSummary(seeds, estimate_mean((scores[s] for s in seeds), confidence))
        for base in baselines:
            paired = paired_differences(scores, scores_by_arm.get(base, {}))
            if base != arm and paired:
                summary.versus[base] = estimate_mean(paired.values(), confidence)
                summary.paired_seeds[base] = tuple(paired)
        summaries[arm] = summary
    return summaries


def outcome(differences: Iterable[MeanEstimate | None]) -> str:
    """Whether a candidate is above every baseline, from its differences to each (candidate minus baseline).

    :data:`BEYOND_NOISE` when every difference's interval lies above 0, :data:`ON_MEANS` when every mean
    difference is above 0 but not every interval is (an interval is missing for a single seed), and
    :data:`NOT_ABOVE` otherwise; a None (a baseline not measured against) counts as not above.
    """
    differences = list(differences)
    if not differences:
        raise ConfigError("outcome needs the differences to at least one baseline")
    if any(d is None or not d.mean > 0 for d in differences):
        return NOT_ABOVE
    if all(d.interval is not None and d.interval[0] > 0 for d in differences):
        return BEYOND_NOISE
    return ON_MEANS


def paired_bootstrap_interval(scores: Mapping[Hashable, float], baseline: Mapping[Hashable, float],
                              confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> MeanEstimate:
    """Mean of the paired differences ``scores - baseline`` over shared keys, with a paired bootstrap interval.

    Meant for two systems scored on the same queries: the queries are resampled with replacement
    ``resamples`` times, keeping each query's two scores together, and the interval is the percentile
    interval of the resampled mean differences at ``confidence``. ``seed`` makes it reproducible.
    The interval is None for fewer than two shared keys.
    """
    import numpy as np

    _check_confidence(confidence)
    if resamples < 1:
        raise ConfigError(f"resamples must be at least 1, got {resamples}")
    paired = paired_differences(scores, baseline)
    if not paired:
        raise ConfigError("paired_bootstrap_interval needs at least one key that both score")
    values = tuple(float(v) for v in paired.values())
    sd = statistics.stdev(values) if len(values) > 1 else None
    if len(values) < 2:
        return MeanEstimate(values, values[0], None, None, confidence, "bootstrap")
    diffs = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // len(diffs))  # resamples drawn at a time, to bound memory on large query sets
    means = np.concatenate([diffs[rng.integers(0, len(diffs), size=(min(chunk, resamples - start), len(diffs)))]
                            .mean(axis=1) for start in range(0, resamples, chunk)])
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return MeanEstimate(values, statistics.fmean(values), sd, (float(low), float(high)), confidence, "bootstrap")


def _t_central_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` >= 1 and ``t`` >= 0 (Abramowitz and Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2.4/(3.5) cos^4 + ... up to cos^(df-3)))
        total, term = 1.0 if df > 1 else 0.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + sin * math.cos(theta) * total)
    total, term = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ... up to cos^(df-2))
    for k in range(1, df // 2):
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return sin * total


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie strictly between 0 and 1, got {confidence}")
