"""The data mixing law (Ye et al., "Data Mixing Laws", ICLR 2025): one language's held-out loss as
a function of the mixture,

    L(r) = c + k * exp(sum_j t_j * r_j)

with r the shares of the mixture (languages or sources), summing to 1. Because they sum to 1, one
t_j is redundant (adding the same constant to every t_j multiplies exp(.) by a factor that k
absorbs), so the last one is fixed at 0. With two shares (Korean x, the rest 1 - x) the law is
`L(x) = c + k * exp(t * x)`: three parameters, hence at least three mixtures; the paper fits it
from five.

For a fixed t the law is linear in (c, k). The fit therefore searches t first (variable
projection), solving (c, k) by linear least squares at each t. With two shares t is one number:
(c, k) have a closed form for every t of a fine grid at once, and finer grids refine
the best grid point, an exact minimum in well under a millisecond (the bootstrap refits the law
hundreds of times). With more shares: random starts, then scipy's least_squares polishes all
parameters together from the best of them. The search is what makes it robust: a local optimiser
started at an arbitrary t often stops in the flat valley of large |t| where exp(.) is nearly a step.

A fit is only as good as the points it did not see: `leave_one_out` predicts each mixture from
the others (all repeats of a mixture left out together), and `motif.mix.validate` bootstraps the
fit for confidence intervals and says when a fit has no degrees of freedom left.
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


def at_bound(law: MixingLaw) -> list[str]:
    """Names of the exponents the fit pushed to their bound |t| = T_BOUND (the data did not pin them)."""
    return [f"t{j + 1}" if len(law.t) > 1 else "t" for j, t in enumerate(law.t) if abs(t) >= T_BOUND - 1e-6]


GRID_1D = np.linspace(-T_BOUND, T_BOUND, 401)


def _ssr_1d(z: np.ndarray, y: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, k, sum of squared residuals) of the best (c, k) for each exponent in `ts`, in closed form."""
    e = np.exp(np.outer(ts, z))  # [G, N]
    e_mean = e.mean(axis=1, keepdims=True)
    de = e - e_mean
    var = (de * de).sum(axis=1)
    cov = de @ (y - y.mean())
    k = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    c = y.mean() - k * e_mean[:, 0]
    r = y[None, :] - c[:, None] - k[:, None] * e
    return c, k, (r * r).sum(axis=1)


def _fit_1d(z: np.ndarray, ys: np.ndarray) -> tuple[float, float, float, float]:
    """(c, k, t, ssr) minimising the residuals over t in [-T_BOUND, T_BOUND], on the scaled losses.

    A grid, then finer grids around the best point (each 1/100 the width of the one before): t to
    about 1e-8, every pass one vectorised evaluation.
    """
    ts = GRID_1D
    for _ in range(4):
        c, k, ssr = _ssr_1d(z, ys, ts)
        i = int(np.argmin(ssr))
        step = ts[1] - ts[0]
        best = (float(c[i]), float(k[i]), float(ts[i]), float(ssr[i]))
        ts = np.clip(np.linspace(ts[i] - step, ts[i] + step, 201), -T_BOUND, T_BOUND)
    return best


def fit_law(shares: np.ndarray, losses: np.ndarray, seed: int = 0, near: MixingLaw | None = None) -> MixingLaw:
    """Least-squares fit of the mixing law to losses measured at the rows of `shares`.

    `near`: with more than two shares, polish from that law's exponents only, instead of
    searching (the bootstrap refits laws close to the one fitted to all the points).

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
    if dim == 1:
        c, k, t, cost = _fit_1d(z[:, 0], ys)
        return MixingLaw(
            c=offset + scale * c, k=scale * k, t=(t,), rmse=scale * float(np.sqrt(max(cost, 0.0) / len(y)))
        )
    rng = np.random.default_rng(seed)
    starts = [np.asarray(near.t, dtype=np.float64)] if near is not None else _starts(dim, rng)
    scored = sorted(((_linear_fit(z, ys, t)[2], i, t) for i, t in enumerate(starts)), key=lambda s: s[:2])

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


def groups_of(shares: np.ndarray) -> np.ndarray:
    """One group id per row: rows with the same mixture (repeats with other data seeds) share it."""
    x = np.round(np.atleast_2d(np.asarray(shares, dtype=np.float64)), 6)
    _, ids = np.unique(x, axis=0, return_inverse=True)
    return ids.reshape(-1)


def leave_one_out(shares: np.ndarray, losses: np.ndarray) -> np.ndarray | None:
    """Prediction error (predicted - measured) of each point by a law fitted to the other mixtures
    (every repeat of its mixture left out with it); None when the other mixtures are fewer than
    the law's parameters."""
    x = np.atleast_2d(np.asarray(shares, dtype=np.float64))
    y = np.asarray(losses, dtype=np.float64)
    groups = groups_of(x)
    if len(np.unique(groups)) - 1 < n_params(x.shape[1]):
        return None
    errors = np.empty(len(y))
    for g in np.unique(groups):
        keep = groups != g
        law = fit_law(x[keep], y[keep])
        errors[~keep] = law.predict(x[~keep]) - y[~keep]
    return errors
