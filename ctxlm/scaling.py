"""Scaling curves: test perplexity against training tokens n, fitted by PPL(n) = E + A·n^(−α).

E is the perplexity the model tends to with unlimited data, A and α how fast it gets there. The
fit runs in (E, ln A, α), which keeps A (often 1e4 to 1e8) well conditioned; the parameters' 95%
intervals come from the fit's covariance and Student's t with n − 3 degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ctxlm.errors import CtxlmError


@dataclass(frozen=True)
class PowerLawFit:
    E: float
    A: float
    alpha: float
    E_interval: tuple[float, float]
    A_interval: tuple[float, float]
    alpha_interval: tuple[float, float]
    r2: float  # of the perplexities themselves

    def __call__(self, n: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A * np.power(n, -self.alpha)


def _curve(log_n: np.ndarray, E: float, log_A: float, alpha: float) -> np.ndarray:
    return E + np.exp(log_A - alpha * log_n)


def fit_power_law(tokens, ppl) -> PowerLawFit:
    """The least-squares fit of PPL(n) = E + A·n^(−α) to (tokens, ppl): at least 4 points, E >= 0,
    A > 0, 0 < α < 5."""
    from scipy import optimize, stats

    n, y = np.asarray(tokens, dtype=np.float64), np.asarray(ppl, dtype=np.float64)
    if len(n) < 4 or len(np.unique(n)) < 4:
        raise CtxlmError(f"a power-law fit needs at least 4 distinct training sizes; got {sorted(set(n.tolist()))}")
    log_n = np.log(n)
    # a start: E a little under the best figure, alpha 0.5, ln A through the largest figure
    E0, alpha0 = 0.9 * y.min(), 0.5
    start = (E0, math.log(max(y.max() - E0, 1e-9)) + alpha0 * log_n[np.argmax(y)], alpha0)
    params, covariance = optimize.curve_fit(_curve, log_n, y, p0=start, bounds=([0.0, -50.0, 1e-6], [np.inf, 200.0, 5.0]), maxfev=20_000)
    E, log_A, alpha = params
    residual = y - _curve(log_n, *params)
    r2 = 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())
    t = stats.t.ppf(0.975, max(1, len(n) - 3))
    half = t * np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return PowerLawFit(
        E=float(E), A=float(math.exp(log_A)), alpha=float(alpha),
        E_interval=(float(E - half[0]), float(E + half[0])),
        A_interval=(float(math.exp(log_A - half[1])), float(math.exp(log_A + half[1]))),
        alpha_interval=(float(alpha - half[2]), float(alpha + half[2])), r2=r2,
    )


def crossings(first: PowerLawFit, second: PowerLawFit, low: float = 1e3, high: float = 1e13, grid: int = 400) -> list[float]:
    """The training sizes in [low, high] where the two fitted curves meet (the first one's figure
    equals the second's), in order: two power laws can cross twice, so every sign change of their
    gap on a log grid is solved; [] when one stays above the other over the whole range."""
    from scipy import optimize

    gap = lambda log_n: first(math.exp(log_n)) - second(math.exp(log_n))  # noqa: E731
    points = np.linspace(math.log(low), math.log(high), grid)
    values = [gap(x) for x in points]
    return [math.exp(optimize.brentq(gap, a, b)) for a, b, ga, gb in zip(points[:-1], points[1:], values[:-1], values[1:]) if ga * gb < 0]
