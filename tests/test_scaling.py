"""The power-law fit against known curves: points computed from chosen E, A, alpha, and crossings
solved by hand."""

import numpy as np
import pytest

from ctxlm.errors import CtxlmError
from ctxlm.results.scaling import PowerLawFit, check_fit, crossings, doublings_outside, fit_power_law

SIZES = np.array([25e3, 50e3, 100e3, 250e3, 500e3])


def test_the_fit_recovers_the_research_s_curve_from_its_own_points():
    """E 95.4 and alpha 0.78 (the research's fit), A such that PPL(240k) = 258.3 as it measured."""
    A = (258.3 - 95.4) * 240e3**0.78
    fit = fit_power_law(SIZES, 95.4 + A * SIZES**-0.78)
    assert fit.E == pytest.approx(95.4, rel=0.05) and fit.alpha == pytest.approx(0.78, rel=0.05) and fit.A == pytest.approx(A, rel=0.05)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit(240e3) == pytest.approx(258.3, rel=1e-4)


def test_the_fit_recovers_a_curve_from_noisy_points_within_5_percent_with_intervals_around_it():
    rng = np.random.default_rng(0)
    sizes = np.geomspace(25e3, 4e6, 8)
    ppl = (120.0 + 4e4 * sizes**-0.6) * (1 + 0.002 * rng.standard_normal(len(sizes)))
    fit = fit_power_law(sizes, ppl)
    for got, true, interval in ((fit.E, 120.0, fit.E_interval), (fit.A, 4e4, fit.A_interval), (fit.alpha, 0.6, fit.alpha_interval)):
        assert got == pytest.approx(true, rel=0.05)
        assert interval[0] < got < interval[1]
    assert 0.99 < fit.r2 < 1.0


def test_two_curves_cross_where_the_algebra_says():
    """Same alpha: E1 + A1 n^-a = E2 + A2 n^-a  <=>  n = ((A1 - A2) / (E2 - E1))^(1/a)."""
    first = PowerLawFit(100.0, 1e5, 0.5, (0, 0), (0, 0), (0, 0), 1.0)
    second = PowerLawFit(150.0, 2e4, 0.5, (0, 0), (0, 0), (0, 0), 1.0)
    assert crossings(first, second) == [pytest.approx(((1e5 - 2e4) / 50.0) ** 2, rel=1e-6)]  # 2.56M tokens
    assert crossings(first, PowerLawFit(50.0, 2e4, 0.5, (0, 0), (0, 0), (0, 0), 1.0)) == []  # always above


def test_curves_that_cross_twice_give_both_crossings():
    """190 + 1e4 n^-0.5 against 200 + 1e6 n^-1: with w = n^-0.5 they meet where -10 + 1e4 w - 1e6 w^2 = 0,
    w = (1e4 +- sqrt(1e8 - 4e7)) / 2e6: the first curve is above between about 12.7k and 787k tokens only."""
    first = PowerLawFit(190.0, 1e4, 0.5, (0, 0), (0, 0), (0, 0), 1.0)
    second = PowerLawFit(200.0, 1e6, 1.0, (0, 0), (0, 0), (0, 0), 1.0)
    roots = [(1e4 + sign * (1e8 - 4e7) ** 0.5) / 2e6 for sign in (1, -1)]  # larger w first: the smaller n
    assert crossings(first, second) == [pytest.approx(w**-2, rel=1e-6) for w in roots]


def test_a_fit_needs_four_distinct_sizes():
    with pytest.raises(CtxlmError, match="at least 4 distinct training sizes"):
        fit_power_law([1e4, 1e4, 2e4, 3e4], [300, 300, 250, 200])


def test_a_parameter_on_its_bound_is_held_there_and_gets_no_interval():
    """Points of -50 + 1e5 n^-0.5: the best E >= 0 is 0, so E is held at 0 and A, alpha (and their
    intervals, t with n - 2 degrees of freedom) are those of a plain 2-parameter fit of A n^-alpha."""
    from scipy import optimize, stats

    sizes = np.geomspace(25e3, 4e6, 8)
    ppl = -50.0 + 1e5 * sizes**-0.5
    fit = fit_power_law(sizes, ppl)
    (log_A, alpha), covariance = optimize.curve_fit(lambda log_n, log_A, alpha: np.exp(log_A - alpha * log_n), np.log(sizes), ppl,
                                                    p0=(np.log(1e5), 0.5), maxfev=20_000)
    half = stats.t.ppf(0.975, len(sizes) - 2) * np.sqrt(np.diag(covariance))
    assert fit.at_bound == ("E",) and fit.E == 0.0 and fit.E_interval is None
    assert fit.A == pytest.approx(np.exp(log_A), rel=1e-4) and fit.alpha == pytest.approx(alpha, rel=1e-4)
    assert fit.alpha_interval == pytest.approx((alpha - half[1], alpha + half[1]), rel=1e-3)
    assert fit.A_interval == pytest.approx((np.exp(log_A - half[0]), np.exp(log_A + half[0])), rel=1e-3)


LAW = (100.0, 5e4, 0.5)  # E, A, alpha of the simulated curves below
DOUBLING = 3125 * 2.0 ** np.arange(6)


def law(n):
    E, A, alpha = LAW
    return E + A * n**-alpha


def test_the_held_out_largest_size_falls_in_its_prediction_interval_about_95_times_in_100():
    """300 sets of 6 doubling sizes on a known curve with Gaussian noise (sd 3): the fit of the 5
    smaller predicts the largest; its 95% interval must hold the measurement in 270-297 of them
    (without the curve's own uncertainty it held 256)."""
    rng = np.random.default_rng(0)
    hits = sum(check_fit(DOUBLING, law(DOUBLING) + rng.normal(0, 3, len(DOUBLING))).predictive for _ in range(300))
    assert 270 <= hits <= 297


def test_a_new_measurement_between_the_sizes_falls_in_its_prediction_interval_about_95_times_in_100():
    """As above, a fit of all 6 sizes and a new noisy measurement between the 3rd and 4th: without
    the points' scatter the interval held 250 of 300."""
    rng = np.random.default_rng(1)
    between = 3125 * 2**2.5
    hits = 0
    for _ in range(300):
        low, high = fit_power_law(DOUBLING, law(DOUBLING) + rng.normal(0, 3, len(DOUBLING))).prediction_interval(between)
        hits += low <= law(between) + rng.normal(0, 3) <= high
    assert 270 <= hits <= 297


def test_a_curve_that_bends_at_its_largest_size_is_not_predictive():
    """Five sizes exactly on the curve and the largest 20% under it: the prediction is the curve's
    value there, 25% over the measurement, and its interval (of exact points) misses it."""
    ppl = law(DOUBLING)
    ppl[-1] *= 0.8
    check = check_fit(DOUBLING, ppl)
    assert check.size == DOUBLING[-1] and check.measured == ppl[-1]
    assert check.predicted == pytest.approx(law(DOUBLING[-1]), rel=1e-6)
    assert check.error == pytest.approx(0.25, rel=1e-5) and not check.predictive


def test_doublings_outside_the_measured_sizes_by_hand():
    assert doublings_outside(400_000, 3_125, 100_000) == pytest.approx(2.0)
    assert doublings_outside(1_000, 3_125, 100_000) == pytest.approx(np.log2(3.125))
    assert doublings_outside(50_000, 3_125, 100_000) == 0.0
