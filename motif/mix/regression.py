"""RegMix's mixture -> loss regression, in its dependency-light form: ridge regression on the
shares and their pairwise products (a quadratic surface over the simplex).

RegMix fits LightGBM on 512 proxies. A sweep here has tens of proxies at most (each one a real
training run), where a boosted tree ensemble has too few points to split on and predicts a
piecewise-constant surface whose optimum sits on a split boundary; RegMix itself reports that a
linear model ranks mixtures nearly as well. A quadratic ridge model is smooth, closed-form, needs
only numpy, and its leave-one-out error is exact and cheap (the hat-matrix identity), which also
picks the ridge strength. LightGBM would add a compiled dependency for no gain at this size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = tuple(10.0**e for e in range(-6, 3))


def features(shares: np.ndarray) -> np.ndarray:
    """[1, r_1..r_{n-1}, r_i * r_j (i <= j < n)]: the last share is implied by the others."""
    z = np.atleast_2d(np.asarray(shares, dtype=np.float64))[:, :-1]
    d = z.shape[1]
    cols = [np.ones(len(z))] + [z[:, i] for i in range(d)]
    cols += [z[:, i] * z[:, j] for i in range(d) for j in range(i, d)]
    return np.column_stack(cols)


@dataclass(frozen=True)
class Regression:
    coef: np.ndarray
    alpha: float
    loo_errors: np.ndarray  # predicted - measured for each point, left out of its own fit

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return features(shares) @ self.coef


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and leave-one-out residuals; the intercept is not penalised."""
    penalty = alpha * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    inverse = np.linalg.pinv(x.T @ x + penalty)
    coef = inverse @ x.T @ y
    hat = np.einsum("ij,jk,ik->i", x, inverse, x)
    residual = x @ coef - y
    return coef, residual / np.maximum(1.0 - hat, 1e-9)


def fit_regression(shares: np.ndarray, losses: np.ndarray) -> Regression:
    x = features(shares)
    y = np.asarray(losses, dtype=np.float64)
    best = None
    for alpha in ALPHAS:
        coef, loo = _ridge(x, y, alpha)
        score = float(np.mean(loo**2))
        if best is None or score < best[0]:
            best = (score, coef, alpha, loo)
    _, coef, alpha, loo = best
    return Regression(coef=coef, alpha=alpha, loo_errors=loo)
