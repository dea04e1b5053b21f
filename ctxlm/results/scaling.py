"""Scaling curves: test perplexity against training tokens n, fitted by PPL(n) = E + A·n^(−α).

E is the perplexity the model tends to with unlimited data, A and α how fast it gets there. The
fit runs in (E, ln A, α), which keeps A (often 1e4 to 1e8) well conditioned; the parameters' 95%
intervals come from the fit's covariance and Student's t with n − (free parameters) degrees of freedom.
A parameter that the least-squares optimum pushes onto its bound (E = 0, say) is held there and the
others are refitted without it: a covariance taken at a bound is meaningless, so it gets no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctxlm.errors import CtxlmError


NAMES = ("E", "A", "alpha")
LOWER, UPPER = (0.0, -50.0, 1e-6), (np.inf, 200.0, 5.0)  # of (E, ln A, alpha)


@dataclass(frozen=True)
class PowerLawFit:
    E: float
    A: float
    alpha: float
    E_interval: tuple[float, float] | None  # None: the parameter is at its bound (in at_bound)
    A_interval: tuple[float, float] | None
    alpha_interval: tuple[float, float] | None
    r2: float  # of the perplexities themselves
    at_bound: tuple[str, ...] = ()  # the parameters held at a bound of the fit, by NAMES
    covariance: np.ndarray | None = None  # of the free parameters of (E, ln A, alpha), in that order
    residual_variance: float = 0.0  # the residuals' sum of squares / degrees of freedom
    dof: int = 1  # points - free parameters

    def __call__(self, n: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(n, -self.alpha)

    def prediction_interval(self, n: float) -> tuple[float, float]:
        """The 95% interval of a new measurement at n: the curve's own uncertainty there (the delta
        method through the fit's covariance) plus the scatter of the points about it, Student's t."""
        from scipy import stats

        term = self.A * n ** -self.alpha
        gradient = np.array([1.0, term, -term * math.log(n)])  # d PPL / d (E, ln A, alpha)
        free = [i for i, name in enumerate(NAMES) if name not in self.at_bound]
        variance = float(gradient[free] @ self.covariance @ gradient[free]) + self.residual_variance
        half = float(stats.t.ppf(0.975, self.dof)) * math.sqrt(max(variance, 0.0))
        centre = float(self(n))
        return centre - half, centre + half


@dataclass(frozen=True)
class FitCheck:
    """A fit made without the largest size, against what that size measured."""

    size: float
    measured: float
    predicted: float
    interval: tuple[float, float]  # 95%, of a new measurement (PowerLawFit.prediction_interval)

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.measured) / self.measured

    @property
    def predictive(self) -> bool:
        return self.interval[0] <= self.measured <= self.interval[1]


def check_fit(tokens, ppl) -> FitCheck:
    """Fit every size but the largest and predict the largest: at least 5 distinct sizes."""
    n, y = np.asarray(tokens, dtype=np.float64), np.asarray(ppl, dtype=np.float64)
    largest = n == n.max()
    held_out = fit_power_law(n[~largest], y[~largest])
    size = float(n.max())
    return FitCheck(size, float(y[largest].mean()), float(held_out(size)), held_out.prediction_interval(size))


def doublings_outside(n: float, low: float, high: float) -> float:
    """How many doublings n lies beyond the measured sizes [low, high] (0 inside them)."""
    return math.log2(n / high) if n > high else math.log2(low / n) if n < low else 0.0


def _curve(log_n: np.ndarray, E: float, log_A: float, alpha: float) -> np.ndarray:
    return E + np.exp(log_A - alpha * log_n)


def _on_bound(value: float, i: int) -> bool:
    return bool(np.isclose(value, LOWER[i], rtol=1e-6, atol=1e-6) or np.isclose(value, UPPER[i], rtol=1e-6, atol=1e-6))


def fit_power_law(tokens, ppl) -> PowerLawFit:
    """The least-squares fit of PPL(n) = E + A·n^(−α) to (tokens, ppl): at least 4 points, E >= 0,
    A > 0, 0 < α < 5; parameters on a bound held there (at_bound) and the rest refitted."""
    from scipy import optimize, stats

    n, y = np.asarray(tokens, dtype=np.float64), np.asarray(ppl, dtype=np.float64)
    if len(n) < 4 or len(np.unique(n)) < 4:
        raise CtxlmError(f"a power-law fit needs at least 4 distinct training sizes; got {sorted(set(n.tolist()))}")
    log_n = np.log(n)
    # a start: E a little under the best figure, alpha 0.5, ln A through the largest figure
    E0, alpha0 = 0.9 * y.min(), 0.5
    params = np.array([E0, math.log(max(y.max() - E0, 1e-9)) + alpha0 * log_n[np.argmax(y)], alpha0])
    held: list[int] = []
    while True:
        free = [i for i in range(3) if i not in held]

        def curve(log_n, *values, free=free):
            full = params.copy()
            full[free] = values
            return _curve(log_n, *full)

        values, covariance = optimize.curve_fit(curve, log_n, y, p0=params[free], maxfev=20_000,
                                                bounds=([LOWER[i] for i in free], [UPPER[i] for i in free]))
        params[free] = values
        newly = [i for i in free if _on_bound(params[i], i)]
        if not newly or len(newly) == len(free):
            break
        for i in newly:  # onto the bound itself
            params[i] = LOWER[i] if abs(params[i] - LOWER[i]) < abs(params[i] - UPPER[i]) else UPPER[i]
        held += newly
    residual = y - _curve(log_n, *params)
    r2 = 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())
    dof = max(1, len(n) - len(free))
    t = stats.t.ppf(0.975, dof)
    half = dict(zip(free, t * np.sqrt(np.clip(np.diag(covariance), 0.0, None))))

    def interval(i: int) -> tuple[float, float] | None:
        """Parameter i's 95% interval in its own scale (A's from ln A's); None on a bound."""
        if i not in half or _on_bound(params[i], i):
            return None
        low, high = params[i] - half[i], params[i] + half[i]
        return (math.exp(low), math.exp(high)) if i == 1 else (float(low), float(high))

    intervals = [interval(i) for i in range(3)]
    return PowerLawFit(
        E=float(params[0]), A=math.exp(params[1]), alpha=float(params[2]),
        E_interval=intervals[0], A_interval=intervals[1], alpha_interval=intervals[2], r2=r2,
        at_bound=tuple(NAMES[i] for i in range(3) if intervals[i] is None),
        covariance=_free_covariance(covariance, free, [i for i in range(3) if intervals[i] is not None]),
        residual_variance=float(residual @ residual) / dof, dof=dof,
    )


def _free_covariance(covariance: np.ndarray, fitted: list[int], free: list[int]) -> np.ndarray:
    """The rows and columns of `covariance` (of the `fitted` parameters) that belong to `free`."""
    keep = [fitted.index(i) for i in free]
    return covariance[np.ix_(keep, keep)]


def crossings(first: PowerLawFit, second: PowerLawFit, low: float = 1e3, high: float = 1e13, grid: int = 400) -> list[float]:
    """The training sizes in [low, high] where the two fitted curves meet (the first one's figure
    equals the second's), in order: two power laws can cross twice, so every sign change of their
    gap on a log grid is solved; [] when one stays above the other over the whole range."""
    from scipy import optimize

    gap = lambda log_n: first(math.exp(log_n)) - second(math.exp(log_n))  # noqa: E731
    points = np.linspace(math.log(low), math.log(high), grid)
    values = [gap(x) for x in points]
    return [math.exp(optimize.brentq(gap, a, b)) for a, b, ga, gb in zip(points[:-1], points[1:], values[:-1], values[1:]) if ga * gb < 0]
