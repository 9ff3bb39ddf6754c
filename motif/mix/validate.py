"""How far to trust a fitted mixing law and the mixture it picks: bootstrap intervals and plain flags.

Why it is built this way:

* **Intervals by the bootstrap.** The proxies are resampled and everything downstream is redone:
  each language's law refitted, the rule applied again to the new curves. The spread of the
  refitted parameters and of the chosen Korean share is the uncertainty the proxies' noise
  leaves in them; the interval is the central 95% of the resampled values (percentile
  bootstrap). When the sweep repeats mixtures with other data seeds (`motif mix sweep
  --repeats`), the resampling draws seeds within each mixture (their residuals around the
  mixture's mean, scaled for the few repeats): the design stays the swept one and only the
  run-to-run noise varies, which is what the choice must beat. Without repeats it draws
  whole proxies with replacement (a draw with fewer distinct mixtures than the law has parameters
  cannot be fitted and is drawn again).
* **Said plainly when it is not trustworthy.** A law of p parameters through p or p + 1 mixtures
  has nothing left to test it on (leave-one-out refits would interpolate too), and an exponent at
  its bound |t| = 20 means the points did not determine it. Either marks the choice
  *unvalidated*, with the reason, in the table, the JSON and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from motif.mix.law import MixingLaw, at_bound, fit_law, groups_of, n_params
from motif.mix.rules import Rule, choose

RESAMPLES = 200
LEVEL = 0.95
MAX_REDRAWS = 50  # per resample, for draws with too few distinct mixtures to fit


@dataclass
class Validation:
    mixtures: int  # distinct mixtures among the proxies used
    n_params: int  # of each language's law
    over: str  # "proxies" | "seeds": what the bootstrap resampled
    resamples: int  # resamples that could be fitted
    params: dict[str, dict[str, list[float]]]  # language -> {"c": [lo, hi], "k": [lo, hi], "t": [lo, hi] or per t_j}
    ratio: list[float] | None  # interval of the chosen Korean share (grid sweeps)
    at_bound: dict[str, list[str]]  # language -> exponents at their bound
    reasons: list[str] = field(default_factory=list)  # why the choice is unvalidated (empty: validated)

    @property
    def validated(self) -> bool:
        return not self.reasons


def resample(
    groups: np.ndarray, losses: dict[str, np.ndarray], over: str, rng: np.random.Generator, need: int
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """One bootstrap resample: (row indices, whose mixtures the refit uses; language -> losses).

    Over seeds, each mixture keeps its repeats' count; their losses are the mixture's mean plus
    residuals drawn with replacement, scaled by sqrt(n / (n - 1)) so that n repeats do not
    understate their own spread. Over proxies, whole proxies are drawn (None if no draw had
    `need` distinct mixtures).
    """
    n = len(groups)
    if over == "seeds":
        rows, out = [], {lang: [] for lang in losses}
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            drawn = rng.choice(members, size=len(members))
            scale = np.sqrt(len(members) / (len(members) - 1)) if len(members) > 1 else 0.0
            rows.append(members)
            for lang, y in losses.items():
                mean = float(np.mean(y[members]))
                out[lang].append(mean + scale * (y[drawn] - mean))
        return np.concatenate(rows), {lang: np.concatenate(v) for lang, v in out.items()}
    for _ in range(MAX_REDRAWS):
        idx = rng.integers(0, n, size=n)
        if len(np.unique(groups[idx])) >= need:
            return idx, {lang: y[idx] for lang, y in losses.items()}
    return None


def _interval(values: list[float]) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(np.asarray(values), [tail, 100 - tail])
    return [float(lo), float(hi)]


def validate(
    shares: np.ndarray,
    losses: dict[str, np.ndarray],
    laws: dict[str, MixingLaw],
    rule: Rule | None = None,
    candidates: np.ndarray | None = None,
    baseline: dict[str, float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Validation:
    """Bootstrap intervals and flags for the laws fitted to `losses` (language -> loss per row of `shares`).

    With a `rule` and `candidates` (a Korean-share grid: rows (x, 1 - x)), the chosen share is
    recomputed on every resample for its interval too.
    """
    x = np.atleast_2d(np.asarray(shares, dtype=np.float64))
    losses = {lang: np.asarray(y, dtype=np.float64) for lang, y in losses.items()}
    groups = groups_of(x)
    mixtures = len(np.unique(groups))
    p = n_params(x.shape[1])
    over = "seeds" if np.bincount(groups).max() > 1 else "proxies"
    rng = np.random.default_rng(seed)
    samples: dict[str, list[tuple[float, ...]]] = {lang: [] for lang in losses}
    ratios: list[float] = []
    done = 0
    for _ in range(resamples):
        drawn = resample(groups, losses, over, rng, p)
        if drawn is None:
            continue
        idx, ys = drawn
        try:
            refit = {lang: fit_law(x[idx], y, near=laws[lang]) for lang, y in ys.items()}
        except ValueError:
            continue
        done += 1
        for lang, law in refit.items():
            samples[lang].append((law.c, law.k, *law.t))
        if rule is not None and candidates is not None:
            choice = choose(rule, {lang: law.predict(candidates) for lang, law in refit.items()}, baseline)
            ratios.append(float(candidates[choice.index, 0]))
    params: dict[str, dict[str, list[float]]] = {}
    for lang, rows in samples.items():
        if not rows:
            continue
        cols = np.asarray(rows)
        names = ["c", "k"] + (["t"] if cols.shape[1] == 3 else [f"t{j + 1}" for j in range(cols.shape[1] - 2)])
        params[lang] = {name: _interval(cols[:, i].tolist()) for i, name in enumerate(names)}
    bound = {lang: at_bound(law) for lang, law in laws.items()}
    reasons = []
    if mixtures <= p + 1:
        reasons.append(
            f"{mixtures} mixtures for a {p}-parameter law: no degrees of freedom left to test it "
            f"(a validated fit needs at least {p + 2} mixtures)"
        )
    for lang, names in bound.items():
        for name in names:
            value = laws[lang].t[0 if name == "t" else int(name[1:]) - 1]
            reasons.append(f"{lang}: {name} at its bound ({value:+g}): the points do not determine it")
    if done == 0:
        reasons.append("no bootstrap resample could be fitted")
    return Validation(
        mixtures=mixtures,
        n_params=p,
        over=over,
        resamples=done,
        params=params,
        ratio=_interval(ratios) if ratios else None,
        at_bound=bound,
        reasons=reasons,
    )
