"""The mixing-law fit gives back the law that generated noisy losses, and its optimum.

Stated tolerance (docs/data-mix.md): five proxies at Korean shares 0.1..0.9 with Gaussian noise of
0.002 bits per byte recover c and k within 0.03 and t within 0.25, over every one of 25 noise
draws; the chosen share is within 0.02 of the true law's optimum.
"""

from __future__ import annotations

import numpy as np
import pytest

from motif.mix import mixtures
from motif.mix.law import fit_law, leave_one_out
from motif.mix.regression import fit_regression
from motif.mix.rules import Rule, choose, pareto_front

SHARES = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
GRID = np.column_stack([SHARES, 1 - SHARES])
KO = (0.8, 1.2, -3.0)  # Korean loss falls with the Korean share
EN = (0.9, 0.15, 2.5)  # English loss rises with it


def _law(params, x):
    c, k, t = params
    return c + k * np.exp(t * x)


@pytest.mark.parametrize("truth", [KO, EN], ids=["ko", "en"])
def test_fit_recovers_the_parameters_within_the_stated_tolerance(truth):
    for seed in range(25):
        rng = np.random.default_rng(seed)
        y = _law(truth, SHARES) + rng.normal(0.0, 0.002, len(SHARES))
        law = fit_law(GRID, y)
        assert abs(law.c - truth[0]) <= 0.03, (seed, law)
        assert abs(law.k - truth[1]) <= 0.03, (seed, law)
        assert abs(law.t[0] - truth[2]) <= 0.25, (seed, law)
        assert law.rmse < 0.004


def test_exact_losses_are_fitted_exactly_and_their_optimum_found():
    ko = fit_law(GRID, _law(KO, SHARES))
    en = fit_law(GRID, _law(EN, SHARES))
    assert ko.c == pytest.approx(KO[0], abs=1e-5) and ko.t[0] == pytest.approx(KO[2], abs=1e-4)
    assert en.k == pytest.approx(EN[1], abs=1e-5) and en.t[0] == pytest.approx(EN[2], abs=1e-4)
    x = np.linspace(0.1, 0.9, 801)
    cands = np.column_stack([x, 1 - x])
    baseline = {"en": 1.55}
    choice = choose(Rule(epsilon=0.01), {"ko": ko.predict(cands), "en": en.predict(cands)}, baseline)
    optimum = np.log((1.56 - EN[0]) / EN[1]) / EN[2]  # where English reaches its bound
    assert choice.feasible and x[choice.index] == pytest.approx(optimum, abs=0.002)


def test_leave_one_out_needs_one_point_more_than_the_parameters():
    assert leave_one_out(GRID[:3], _law(KO, SHARES[:3])) is None
    errors = leave_one_out(GRID, _law(KO, SHARES))
    assert errors is not None and np.max(np.abs(errors)) < 1e-3


def test_fewer_points_than_parameters_is_refused():
    with pytest.raises(ValueError, match="cannot fit a law of 3 parameters"):
        fit_law(GRID[:2], _law(KO, SHARES[:2]))


def test_multi_source_law_and_regression_from_dirichlet_mixtures():
    """Three sources: the law has four parameters; 16 Dirichlet mixtures give it back."""
    shares = np.asarray(mixtures.dirichlet([0.5, 0.3, 0.2], 16, seed=3))
    c, k, t = 0.7, 0.9, np.array([-2.5, -0.5])
    y = c + k * np.exp(shares[:, :-1] @ t) + np.random.default_rng(0).normal(0, 0.001, 16)
    law = fit_law(shares, y)
    assert abs(law.c - c) < 0.05 and abs(law.k - k) < 0.05
    assert np.allclose(law.t, t, atol=0.3), law
    reg = fit_regression(shares, y)
    law_loo = leave_one_out(shares, y)
    assert np.sqrt(np.mean(reg.loo_errors**2)) < 0.05  # the quadratic surface is a fair stand-in ...
    assert np.mean(law_loo**2) < np.mean(reg.loo_errors**2)  # ... and the true law predicts better


def test_dirichlet_mixtures_are_valid_weights():
    rows = mixtures.dirichlet([0.6, 0.3, 0.1], 50, seed=1)
    assert len(rows) == 50
    for w in rows:
        assert abs(sum(w) - 1.0) < 1e-6 and min(w) >= mixtures.MIN_WEIGHT - 1e-6
    assert len({tuple(w) for w in rows}) == 50  # varied
    sims = mixtures.simulate([0.6, 0.3, 0.1], 1000, seed=2)
    assert np.allclose(sims.sum(axis=1), 1.0)
    assert abs(sims[:, 0].mean() - 0.6) < 0.05  # centred on the natural shares


def test_pareto_front():
    points = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.5, 1.5], [0.5, 3.0]])
    assert pareto_front(points).tolist() == [True, True, False, True, True]
