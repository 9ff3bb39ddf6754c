"""`motif mix fit`'s computation: the mixing law per language over a sweep's proxies, its error on
proxies left out of the fit, and the mixture a rule picks.

The law is fitted at every step that all proxies scored, not only the last: the choice per step
shows whether the proxies ran long enough for the ranking of mixtures to settle (if the chosen
share still moves at the last points, run longer proxies). The choice is the one at the last step.

Each fit is validated (`motif.mix.validate`): bootstrap intervals for every parameter and for
the chosen Korean share, and a plain flag when the law has no degrees of freedom left or an
exponent sits at its bound.

Two sources (the Korean-share grid): the law in the Korean share x, candidates every 0.01 of x
within the swept range (the choice never extrapolates past the sweep). More sources (Dirichlet
proxies): the law over all shares and RegMix's regression, the one with the smaller
leave-one-out error predicting 100,000 simulated mixtures from the sweep's prior; the chosen
mixture is the mean of the 100 best (RegMix's averaging), each weight rounded to 0.001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motif.config import DataSource
from motif.errors import MotifError
from motif.mix import mixtures
from motif.mix.law import MixingLaw, fit_law, leave_one_out, n_params
from motif.mix.regression import Regression, fit_regression
from motif.mix.results import ProxyResult, read_results
from motif.mix.rules import Choice, Rule, choose, top
from motif.mix.sweep import Sweep, read_manifest
from motif.mix.validate import Validation, validate

SIMULATED = 100_000
AVERAGE_TOP = 100
GRID_STEP = 0.01


@dataclass
class LanguageFit:
    language: str
    law: MixingLaw
    law_loo: np.ndarray | None  # predicted - measured, each proxy left out of its own fit
    regression: Regression | None = None  # Dirichlet sweeps only

    @property
    def model(self) -> str:
        """The predictor used for the choice: the one with the smaller leave-one-out error."""
        if self.regression is None or self.law_loo is None:
            return "law" if self.regression is None else "regression"
        law_mse = float(np.mean(self.law_loo**2))
        return "law" if law_mse <= float(np.mean(self.regression.loo_errors**2)) else "regression"

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return self.law.predict(shares) if self.model == "law" else self.regression.predict(shares)

    @property
    def loo(self) -> np.ndarray | None:
        return self.law_loo if self.model == "law" else self.regression.loo_errors


@dataclass
class StepChoice:
    step: int
    ko_share: float
    weights: dict[str, float]


@dataclass
class FitResult:
    sweep: Sweep
    used: list[ProxyResult]
    missing: list[ProxyResult]
    languages: list[str]
    step: int
    fits: dict[str, LanguageFit]
    candidates: np.ndarray  # mixtures the rule chose among (shares as the fit sees them)
    predicted: dict[str, np.ndarray]  # language -> loss at each candidate
    rule: Rule
    baseline: dict[str, float] | None
    choice: Choice
    shares: list[float]  # the chosen mixture (fit's view)
    weights: dict[str, float]  # the chosen mixture, per source
    chosen_loss: dict[str, float]  # predicted at the chosen mixture
    by_step: list[StepChoice]
    validation: Validation  # bootstrap intervals, and why the choice is unvalidated (if it is)

    @property
    def ko_share(self) -> float:
        return self.weights_ko_share(self.weights)

    def weights_ko_share(self, weights: dict[str, float]) -> float:
        langs = self.sweep.languages
        return float(sum(w for s, w in weights.items() if langs[s] == mixtures.TARGET_LANGUAGE))

    @property
    def at_edge(self) -> bool:
        """The choice sits at the border of the swept range: the optimum may lie beyond it."""
        if self.sweep.mode != "grid":
            return False
        lo, hi = self.candidates[0, 0], self.candidates[-1, 0]
        return self.shares[0] in (lo, hi)


def usable(sweep_dir: Path, sweep: Sweep, allow_missing: bool) -> tuple[list[ProxyResult], list[ProxyResult]]:
    results = read_results(sweep_dir, sweep)
    bad = [r for r in results if r.problem]
    if bad and not allow_missing:
        more = f" (and {len(bad) - 1} more: {', '.join(r.proxy.name for r in bad[1:])})" if len(bad) > 1 else ""
        raise MotifError(
            f"{sweep_dir}: proxy {bad[0].proxy.name} {bad[0].problem}{more}; rerun `motif mix sweep` (finished "
            "proxies are kept) or fit without it with --allow-missing"
        )
    ok = [r for r in results if not r.problem]
    need = max(3, n_params(len(sweep.shares(sweep.proxies[0]))))
    distinct = len({tuple(round(v, 6) for v in r.shares) for r in ok})
    if distinct < need:
        left = f" ({len(bad)} unusable)" if bad else ""
        raise MotifError(
            f"{sweep_dir}: {len(ok)} usable proxies at {distinct} mixtures{left}; the mixing law has {need} "
            f"parameters per language, so the fit needs at least {need} mixtures"
        )
    return ok, bad


def candidates(sweep: Sweep, used: list[ProxyResult]) -> np.ndarray:
    if sweep.mode == "grid":
        xs = [r.shares[0] for r in used]
        lo, hi = min(xs), max(xs)
        inner = np.arange(math.ceil(lo / GRID_STEP - 1e-9), math.floor(hi / GRID_STEP + 1e-9) + 1) * GRID_STEP
        x = np.unique(np.round(np.concatenate([[lo], inner, [hi]]), 6))
        x = x[(x >= lo) & (x <= hi)]
        return np.column_stack([x, 1.0 - x])
    return mixtures.simulate(sweep.centre, SIMULATED, sweep.seed + 1)


def fit_languages(sweep: Sweep, used: list[ProxyResult], step: int, languages: list[str], loo: bool):
    shares = np.asarray([r.shares for r in used])
    fits = {}
    for lang in languages:
        y = np.asarray([r.points[step][lang] for r in used])
        law = fit_law(shares, y)
        reg = fit_regression(shares, y) if sweep.mode == "dirichlet" else None
        fits[lang] = LanguageFit(lang, law, leave_one_out(shares, y) if loo else None, reg)
    return fits


def _decide(sweep: Sweep, rule: Rule, fits, cands: np.ndarray, baseline) -> tuple[Choice, np.ndarray, dict]:
    predicted = {lang: f.predict(cands) for lang, f in fits.items()}
    choice = choose(rule, predicted, baseline)
    if sweep.mode == "grid" or not choice.feasible:
        return choice, cands[choice.index], predicted
    best = top(rule, predicted, baseline, AVERAGE_TOP)
    mean = cands[best].mean(axis=0)
    return choice, np.asarray(mixtures.rounded((np.round(mean, 3) / np.round(mean, 3).sum()).tolist())), predicted


def stage_sources(sweep: Sweep) -> list[DataSource]:
    """The sweep's stage's sources as the manifest records them (name, language, weight)."""
    return [
        DataSource(name=s, language=sweep.languages[s], weight=sweep.stage_weights[s], path="-") for s in sweep.sources
    ]


def source_weights(sweep: Sweep, shares, sources: list[DataSource], where: str) -> dict[str, float]:
    """The chosen mixture as weights of `sources` (the sweep's stage, or the stage file --write edits)."""
    if sweep.mode == "grid":
        w = mixtures.weights_for_share(sources, float(shares[0]), where)
        return dict(zip((s.name for s in sources), w, strict=True))
    chosen = dict(zip(sweep.sources, (float(v) for v in shares), strict=True))
    names = [s.name for s in sources]
    if sorted(names) != sorted(chosen):
        raise MotifError(
            f"{where}: motif.data.sources: the sweep mixed sources {', '.join(sweep.sources)}, this file has "
            f"{', '.join(names)} (a multi-source mixture applies only to the same sources)"
        )
    return {name: chosen[name] for name in names}


def start_losses(sweep: Sweep, used: list[ProxyResult]) -> dict[str, float] | None:
    """The start checkpoint's held-out loss as the proxies measured it before their first step
    (the trainer scores a stage's start); the mean over proxies, which all start from it."""
    if sweep.start_checkpoint is None:
        return None  # from scratch: step 0 is a random initialisation, not a model to keep
    starts = [r.points[0] for r in used if 0 in r.points]
    if not starts:
        return None
    languages = set.intersection(*(set(p) for p in starts))
    return {lang: float(np.mean([p[lang] for p in starts])) for lang in sorted(languages)}


def fit_sweep(
    sweep_dir: Path,
    rule: Rule,
    baseline: dict[str, float] | None,
    allow_missing: bool = False,
    baseline_fn=None,
) -> FitResult:
    """Read, fit and choose. The constrained rule's reference is `baseline` (given), else the
    proxies' step-0 records, else `baseline_fn()` (the start checkpoint scored here)."""
    sweep = read_manifest(sweep_dir)
    used, missing = usable(sweep_dir, sweep, allow_missing)
    measured = set.intersection(*(set(r.final) for r in used))
    if rule.target not in measured:
        have = ", ".join(sorted(measured))
        raise MotifError(f"{sweep_dir}: no held-out loss for {rule.target} in every proxy (have: {have})")
    languages = [rule.target, *sorted(measured - {rule.target})]
    steps = sorted(set.intersection(*(set(r.points) for r in used)))
    step = sweep.steps
    if rule.kind == "constrained" and not all(lang in (baseline or {}) for lang in languages if lang != rule.target):
        scored = start_losses(sweep, used) or (baseline_fn() if baseline_fn else None)
        baseline = {**(scored or {}), **(baseline or {})}
    cands = candidates(sweep, used)
    sources, where = stage_sources(sweep), str(sweep_dir / "sweep.json")
    by_step = []
    for s in steps:
        if s in (0, step):  # step 0 is the start checkpoint, the same model in every proxy
            continue
        langs = [lang for lang in languages if all(lang in r.points[s] for r in used)]
        if rule.target not in langs:
            continue
        choice, shares, _ = _decide(sweep, rule, fit_languages(sweep, used, s, langs, loo=False), cands, baseline)
        by_step.append(StepChoice(s, _ko_share(sweep, shares), source_weights(sweep, shares, sources, where)))
    fits = fit_languages(sweep, used, step, languages, loo=True)
    choice, shares, predicted = _decide(sweep, rule, fits, cands, baseline)
    weights = source_weights(sweep, shares, sources, where)
    by_step.append(StepChoice(step, _ko_share(sweep, shares), weights))
    chosen_loss = {lang: float(f.predict(shares[None, :])[0]) for lang, f in fits.items()}
    losses = {lang: np.asarray([r.points[step][lang] for r in used]) for lang in languages}
    validation = validate(
        np.asarray([r.shares for r in used]),
        losses,
        {lang: f.law for lang, f in fits.items()},
        rule,
        cands if sweep.mode == "grid" else None,  # the chosen share's interval: grid sweeps
        baseline,
    )
    return FitResult(
        sweep=sweep,
        used=used,
        missing=missing,
        languages=languages,
        step=step,
        fits=fits,
        candidates=cands,
        predicted=predicted,
        rule=rule,
        baseline=baseline,
        choice=choice,
        shares=[float(v) for v in shares],
        weights=weights,
        chosen_loss=chosen_loss,
        by_step=by_step,
        validation=validation,
    )


def _ko_share(sweep: Sweep, shares: np.ndarray) -> float:
    if sweep.mode == "grid":
        return float(shares[0])
    pairs = zip(sweep.sources, shares, strict=True)
    return float(sum(w for s, w in pairs if sweep.languages[s] == mixtures.TARGET_LANGUAGE))
