"""The data mixing law (Ye et al., "Data Mixing Laws", ICLR 2025): one language's held-out loss as
a function of the mixture,

    L(r) = c + k * exp(sum_j t_j * r_j)

with r the shares of the mixture (languages or sources), summing to 1. Because they sum to 1, one
t_j is redundant (adding the same constant to every t_j multiplies exp(.) by a factor that k
absorbs), so the last one is fixed at 0. With two shares (Korean x, the rest 1 - x) the law is
`L(x) = c + k * exp(t * x)`: three parameters, hence at least three mixtures; the paper fits it
from five.

For a fixed t the law is linear in (c, k). The fit therefore searches t first (a grid in one
dimension, random starts in more: variable projection), solving (c, k) by linear least squares at
each t, then polishes all parameters together with scipy's least_squares from the best starts.
The search is what makes it robust: a local optimiser started at an arbitrary t often stops in
the flat valley of large |t| where exp(.) is nearly a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# |t| beyond this makes exp(t * share) span more than e^20 over the simplex: a step, not a curve.
T_BOUND = 20.0


@dataclass(frozen=True)
class MixingLaw:
    """A fitted law. `t` has one entry per share but the last, which is fixed at 0."""

    c: float
    k: float
    t: tuple[float, ...]
    rmse: float  # root mean square residual on the points it was fitted to

    @property
    def n_params(self) -> int:
        return 2 + len(self.t)

    def predict(self, shares: np.ndarray) -> np.ndarray:
        """Loss at each row of `shares` ([N, n_shares], rows summing to 1)."""
        z = np.atleast_2d(np.asarray(shares, dtype=np.float64))[:, :-1]
        return self.c + self.k * np.exp(z @ np.asarray(self.t))

    def describe(self, names: list[str] | None = None) -> str:
        """The law as text; `names` label the shares (the last one's exponent is 0)."""
        sign = "+" if self.k >= 0 else "-"
        if len(self.t) == 1 and names is None:
            return f"{self.c:.4f} {sign} {abs(self.k):.4f} * exp({self.t[0]:+.3f} * x)"
        names = names or [f"r{j + 1}" for j in range(len(self.t) + 1)]
        terms = " ".join(f"{t:+.3f} * {name}" for t, name in zip(self.t, names, strict=False))
        return f"{self.c:.4f} {sign} {abs(self.k):.4f} * exp({terms})"


def n_params(n_shares: int) -> int:
    """Parameters of the law over `n_shares` shares: c, k and n_shares - 1 exponents."""
    return n_shares + 1


def _linear_fit(z: np.ndarray, y: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
    """(c, k, sum of squared residuals) for fixed exponents t."""
    design = np.column_stack([np.ones(len(y)), np.exp(z @ t)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(coef[0]), float(coef[1]), float(residual @ residual)


def _starts(dim: int, rng: np.random.Generator) -> list[np.ndarray]:
    if dim == 1:
        return [np.array([t]) for t in np.linspace(-T_BOUND, T_BOUND, 321)]
    return [np.zeros(dim)] + [rng.normal(0.0, 4.0, dim).clip(-T_BOUND, T_BOUND) for _ in range(400)]


def fit_law(shares: np.ndarray, losses: np.ndarray, seed: int = 0) -> MixingLaw:
    """Least-squares fit of the mixing law to losses measured at the rows of `shares`.

    Raises ValueError with fewer points than parameters (the caller turns that into a user error).
    """
    from scipy.optimize import least_squares

    x = np.atleast_2d(np.asarray(shares, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    need = n_params(x.shape[1])
    if len(y) < need:
        raise ValueError(f"{len(y)} mixtures cannot fit a law of {need} parameters (need at least {need})")
    z = x[:, :-1]
    dim = z.shape[1]
    # Work on a unit scale: least_squares' tolerances are absolute.
    scale = float(np.std(y)) or 1.0
    offset = float(np.mean(y))
    ys = (y - offset) / scale
    rng = np.random.default_rng(seed)
    scored = sorted(((_linear_fit(z, ys, t)[2], i, t) for i, t in enumerate(_starts(dim, rng))), key=lambda s: s[:2])

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] + p[1] * np.exp(z @ p[2:]) - ys

    best = None
    for _, _, t0 in scored[:5]:
        c0, k0, _ = _linear_fit(z, ys, t0)
        lower = [-np.inf, -np.inf] + [-T_BOUND] * dim
        upper = [np.inf, np.inf] + [T_BOUND] * dim
        p0 = np.concatenate([[c0, k0], np.clip(t0, -T_BOUND + 1e-9, T_BOUND - 1e-9)])
        result = least_squares(residuals, p0, bounds=(lower, upper), xtol=1e-12, ftol=1e-12, gtol=1e-12)
        cost = float(result.fun @ result.fun)
        if best is None or cost < best[0]:
            best = (cost, result.x)
    cost, p = best
    # Back to the loss scale: L = offset + scale * (c + k e^.) .
    c = offset + scale * float(p[0])
    k = scale * float(p[1])
    rmse = scale * float(np.sqrt(cost / len(y)))
    return MixingLaw(c=c, k=k, t=tuple(float(v) for v in p[2:]), rmse=rmse)


def leave_one_out(shares: np.ndarray, losses: np.ndarray) -> np.ndarray | None:
    """Prediction error (predicted - measured) of each point by a law fitted to the others; None
    when the others are too few to fit the law (fewer than its parameters)."""
    x = np.atleast_2d(np.asarray(shares, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    if len(y) - 1 < n_params(x.shape[1]):
        return None
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        law = fit_law(x[keep], y[keep])
        errors.append(float(law.predict(x[i : i + 1])[0] - y[i]))
    return np.asarray(errors)
