"""retromem.eval.stats: paired differences over seeds, t-intervals, the t quantile, outcomes, the paired bootstrap."""

from __future__ import annotations

import statistics

import pytest

from retromem.eval.stats import (
    BEYOND_NOISE,
    NOT_ABOVE,
    ON_MEANS,
    compare_arms,
    estimate_mean,
    outcome,
    paired_bootstrap_interval,
    paired_differences,
    t_interval,
    t_quantile,
)

SEEDS = (42, 43, 44, 45)


def _arms(scores: dict[str, list[float]]) -> dict[str, dict[int, float]]:
    return {arm: dict(zip(SEEDS, values)) for arm, values in scores.items()}


def test_paired_differences_intervals_and_wins():
    arms = compare_arms(_arms({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.61, 0.64, 0.65]}),
                        ("a", "b"))
    c = arms["c"]
    assert c.versus["a"].values == pytest.approx([0.01, 0.02, 0.01])
    assert c.versus["b"].values == pytest.approx([0.03, 0.03, 0.03])
    assert c.versus["a"].n_positive == 3 and c.versus["b"].n_positive == 3
    low, high = c.versus["a"].interval
    # mean 0.01333, sd 0.00577, t(0.975, 2) = 4.303: half-width 0.01434
    assert low == pytest.approx(0.013333 - 0.014343, abs=1e-5) and high == pytest.approx(0.013333 + 0.014343, abs=1e-5)
    assert c.versus["b"].interval == pytest.approx((0.03, 0.03))
    assert "a" not in arms["a"].versus and arms["a"].versus["b"].n_positive == 3
    assert c.seeds == (42, 43, 44) and c.paired_seeds["a"] == (42, 43, 44)
    assert c.score.mean == pytest.approx(1.9 / 3) and c.score.sd == pytest.approx(statistics.stdev([0.61, 0.64, 0.65]))


def test_differences_use_only_the_seeds_both_arms_ran():
    arms = compare_arms({"a": {42: 0.6, 43: 0.7, 45: 0.5}, "c": {45: 0.55, 43: 0.72, 44: 0.9}}, ("a", "b"))
    assert arms["c"].seeds == (43, 44, 45) and arms["c"].score.values == (0.72, 0.9, 0.55)
    assert arms["c"].paired_seeds["a"] == (43, 45)
    assert arms["c"].versus["a"].values == pytest.approx([0.02, 0.05])
    assert "b" not in arms["c"].versus  # a baseline that did not run is skipped
    assert compare_arms({"a": {42: 0.6}, "c": {43: 0.7}}, ("a",))["c"].versus == {}  # no shared seed
    assert paired_differences({"q2": 1.0, "q1": 0.5, "q3": 0.0}, {"q1": 0.25, "q2": 0.5}) == {"q1": 0.25, "q2": 0.5}


def test_t_quantile_matches_the_tables():
    # Student t, two-sided 95% (scipy.stats.t.ppf(0.975, df))
    for df, expected in {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078,
                         4: 2.7764451051977934, 9: 2.262157162798205, 30: 2.0422724563012378}.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-11)
    assert t_quantile(0.995, 5) == pytest.approx(4.032142983555228, rel=1e-11)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764451051977934, rel=1e-11)
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.975, 100_000) == pytest.approx(1.959986, rel=1e-5)  # tends to the normal quantile
    for bad in ((0.0, 3), (1.0, 3), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError):
            t_quantile(*bad)


def test_mean_estimate_and_its_t_interval():
    single = estimate_mean([0.5])
    assert single.mean == 0.5 and single.sd is None and single.interval is None and single.n == 1
    estimate = estimate_mean([0.01, -0.02, 0.04, 0.03], confidence=0.9)
    half = t_quantile(0.95, 3) * statistics.stdev(estimate.values) / 2
    assert estimate.interval == pytest.approx((0.015 - half, 0.015 + half))
    assert estimate.n_positive == 3 and estimate.method == "t" and estimate.confidence == 0.9
    assert t_interval([1.0, 1.0, 1.0]) == (1.0, 1.0) and t_interval([2.0]) is None
    with pytest.raises(ValueError):
        estimate_mean([])
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], confidence=1.0)


def test_outcome_distinguishes_means_from_noise():
    def versus(scores):
        c = compare_arms(_arms(scores), ("a", "b"))["c"]
        return outcome(c.versus.get(base) for base in ("a", "b"))

    assert versus({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.61, 0.64, 0.65]}) == ON_MEANS
    assert versus({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.62, 0.641, 0.659]}) == BEYOND_NOISE
    assert versus({"a": [0.60, 0.62, 0.64], "b": [0.58, 0.61, 0.62], "c": [0.59, 0.63, 0.63]}) == NOT_ABOVE
    # above (a) but below (b), or above (b) but below (a): beating one baseline is not beating both
    assert versus({"a": [0.60, 0.62, 0.64], "b": [0.70, 0.72, 0.74], "c": [0.65, 0.66, 0.67]}) == NOT_ABOVE
    assert versus({"a": [0.70, 0.72, 0.74], "b": [0.60, 0.62, 0.64], "c": [0.65, 0.66, 0.67]}) == NOT_ABOVE
    # a baseline not measured against is not beaten; one seed has no interval, so at most the means
    assert versus({"a": [0.6, 0.6], "c": [0.7, 0.7]}) == NOT_ABOVE
    assert versus({"a": [0.6], "b": [0.5], "c": [0.7]}) == ON_MEANS
    with pytest.raises(ValueError):
        outcome([])


def test_paired_bootstrap_interval_over_queries():
    system = {f"q{i}": 0.5 + 0.01 * (i % 7) for i in range(200)}
    baseline = {f"q{i}": 0.5 + 0.01 * (i % 5) for i in range(200)}
    estimate = paired_bootstrap_interval(system, baseline, resamples=2000, seed=3)
    differences = [system[q] - baseline[q] for q in sorted(system)]
    assert estimate.method == "bootstrap" and estimate.n == 200
    assert estimate.mean == pytest.approx(statistics.fmean(differences))
    low, high = estimate.interval
    assert low < estimate.mean < high
    # close to the t-interval on this many roughly symmetric differences
    t_low, t_high = t_interval(differences)
    assert low == pytest.approx(t_low, abs=0.002) and high == pytest.approx(t_high, abs=0.002)
    assert paired_bootstrap_interval(system, baseline, resamples=2000, seed=3) == estimate  # reproducible
    constant = paired_bootstrap_interval({"q1": 0.7, "q2": 0.8}, {"q1": 0.6, "q2": 0.7, "q3": 0.1})
    assert constant.values == pytest.approx([0.1, 0.1]) and constant.interval == pytest.approx((0.1, 0.1))
    assert paired_bootstrap_interval({"q1": 0.7}, {"q1": 0.6}).interval is None
    with pytest.raises(ValueError):
        paired_bootstrap_interval({"q1": 0.7}, {"q2": 0.6})
