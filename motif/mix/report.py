"""The fit as text (the table `motif mix fit` prints) and as JSON (`--json`, and `<sweep>/fit.json`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from motif.mix.fit import FitResult


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _loo(result: FitResult, lang: str, i: int) -> str:
    loo = result.fits[lang].loo
    return "-" if loo is None else f"{loo[i]:+.4f}"


def proxies_table(result: FitResult) -> str:
    langs = result.languages
    head = ["proxy", "ko share", "steps", *[f"{lang} bpb" for lang in langs], *[f"{lang} loo err" for lang in langs]]
    rows = [head]
    for i, r in enumerate(result.used):
        rows.append(
            [
                r.proxy.name,
                f"{result.weights_ko_share(r.proxy.weights):.3f}",
                str(result.step),
                *[f"{r.final[lang]:.4f}" for lang in langs],
                *[_loo(result, lang, i) for lang in langs],
            ]
        )
    for r in result.missing:
        rows.append([r.proxy.name, f"{result.weights_ko_share(r.proxy.weights):.3f}", "-", *["-"] * 2 * len(langs)])
    return table(rows)


def fit_lines(result: FitResult) -> list[str]:
    lines = []
    for lang in result.languages:
        f = result.fits[lang]
        if result.sweep.mode == "grid":
            what = f"L_{lang}(x) = {f.law.describe()}"
        else:
            what = f"L_{lang}(r) = {f.law.describe(result.sweep.sources)}"
        loo = f.loo
        err = (
            "held-out error: n/a (needs one proxy more than the law's parameters)"
            if loo is None
            else f"held-out (leave-one-out) error: mean |e| {np.mean(np.abs(loo)):.4f}, "
            f"max {np.max(np.abs(loo)):.4f} bpb (skill {loo_skill(result, lang):+.2f}: 1 - loo mse / variance)"
        )
        model = f" [choice by {f.model}]" if f.regression is not None else ""
        lines.append(f"{what}, fit rmse {f.law.rmse:.4f} bpb; {err}{model}")
        ci = result.validation.params.get(lang)
        if ci:
            spans = ", ".join(f"{name} [{lo:.4g}, {hi:.4g}]" for name, (lo, hi) in ci.items())
            bound = result.validation.at_bound.get(lang)
            flag = f"; {', '.join(bound)} AT ITS BOUND" if bound else ""
            lines.append(f"  95% intervals ({_over(result)}): {spans}{flag}")
    return lines


def loo_skill(result: FitResult, lang: str) -> float | None:
    """1 - (leave-one-out mean squared error) / (variance of the measured losses): above 0, the law
    predicts a mixture it did not see better than the mean of the others would; at or below 0, no
    better than that (the proxies' noise swamps the effect of the mixture)."""
    loo = result.fits[lang].loo
    if loo is None:
        return None
    y = np.asarray([r.final[lang] for r in result.used])
    var = float(np.var(y))
    return 1.0 - float(np.mean(np.asarray(loo) ** 2)) / var if var > 0 else None


def _over(result: FitResult) -> str:
    v = result.validation
    return f"bootstrap over {v.over}, {v.resamples} resamples"


def validation_line(result: FitResult) -> str:
    """One line: validated (how), or UNVALIDATED and why."""
    v = result.validation
    if v.validated:
        weak = [lang for lang in result.languages if (loo_skill(result, lang) or 0.0) <= 0]
        caveat = (
            f"; but the {', '.join(weak)} law predicts left-out mixtures no better than their mean "
            "(skill <= 0): the proxies' noise is as large as the mixture's effect, take the interval seriously"
            if weak
            else ""
        )
        return (
            f"validated: {v.mixtures} mixtures for a {v.n_params}-parameter law, leave-one-out error above, "
            f"no parameter at its bound{caveat}"
        )
    return "UNVALIDATED: " + "; ".join(v.reasons)


def step_line(result: FitResult) -> str:
    parts = [f"step {c.step}: {c.ko_share:.2f}" for c in result.by_step]
    return "chosen ko share by step: " + ", ".join(parts)


def chosen_line(result: FitResult) -> str:
    weights = ", ".join(f"{s} {w:g}" for s, w in result.weights.items())
    losses = ", ".join(f"{lang} {v:.4f}" for lang, v in result.chosen_loss.items())
    bound = ""
    if result.choice.bounds:
        bound = " (bound " + ", ".join(f"{lang} <= {v:.4f}" for lang, v in result.choice.bounds.items()) + ")"
    state = "" if result.choice.feasible else " NO MIXTURE MEETS THE BOUND: this is the one closest to it;"
    edge = " at the edge of the swept range: the optimum may lie beyond it, extend the sweep;" if result.at_edge else ""
    ratio = result.validation.ratio
    ci = f" (95% interval {ratio[0]:.2f}-{ratio[1]:.2f})" if ratio else ""
    unvalidated = "" if result.validation.validated else " UNVALIDATED;"
    return (
        f"chosen:{unvalidated}{state}{edge} ko share {result.ko_share:.3g}{ci} ({weights}); "
        f"predicted bpb {losses}{bound}"
    )


def as_json(result: FitResult, png: str | None) -> dict[str, Any]:
    sweep = result.sweep
    return {
        "stage": sweep.stage,
        "stage_file": sweep.stage_file,
        "mode": sweep.mode,
        "step": result.step,
        "rule": result.rule.describe(result.languages),
        "baseline": result.baseline,
        "bounds": result.choice.bounds,
        "feasible": result.choice.feasible,
        "at_edge": result.at_edge,
        "validated": result.validation.validated,
        "unvalidated_reasons": result.validation.reasons,
        "bootstrap": {
            "over": result.validation.over,
            "resamples": result.validation.resamples,
            "level": 0.95,
            "mixtures": result.validation.mixtures,
            "params_per_language": result.validation.n_params,
        },
        "chosen": {
            "ko_share": result.ko_share,
            "ko_share_interval": result.validation.ratio,
            "weights": result.weights,
            "predicted": result.chosen_loss,
        },
        "by_step": [{"step": c.step, "ko_share": c.ko_share, "weights": c.weights} for c in result.by_step],
        "fits": {
            lang: {
                "c": f.law.c,
                "k": f.law.k,
                "t": list(f.law.t),
                "rmse": f.law.rmse,
                "model": f.model,
                "loo_errors": None if f.loo is None else [float(v) for v in f.loo],
                "loo_rmse": None if f.loo is None else float(np.sqrt(np.mean(np.asarray(f.loo) ** 2))),
                "loo_skill": loo_skill(result, lang),
                "intervals": result.validation.params.get(lang),
                "at_bound": result.validation.at_bound.get(lang, []),
            }
            for lang, f in result.fits.items()
        },
        "proxies": [
            {
                "name": r.proxy.name,
                "ko_share": result.weights_ko_share(r.proxy.weights),
                "weights": r.proxy.weights,
                "heldout": r.final,
                "steps": sorted(r.points),
            }
            for r in result.used
        ],
        "missing": [{"name": r.proxy.name, "problem": r.problem} for r in result.missing],
        "png": png,
    }
