"""The fit as a picture: loss per language against the Korean share (measured points at every
scored step, fitted curves, the bound the rule keeps, the chosen point) and the Pareto front of
Korean against English loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from motif.mix.fit import FitResult
from motif.mix.mixtures import TARGET_LANGUAGE
from motif.mix.rules import feasible_mask, pareto_front

COLORS = {"ko": "tab:red", "en": "tab:blue"}
NAMES = {"ko": "Korean (ko)", "en": "English (en)"}


def _color(lang: str, i: int) -> str:
    return COLORS.get(lang, f"C{i + 2}")


def plot_fit(result: FitResult, path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, front) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110, gridspec_kw={"width_ratios": [1.25, 1]})
    _curves(curves, result)
    _front(front, result)
    sweep = result.sweep
    v = result.validation
    verdict = (
        f"validated (leave-one-out on {v.mixtures} mixtures)" if v.validated else "UNVALIDATED: " + "; ".join(v.reasons)
    )
    fig.suptitle(
        (
            title
            or f"mixture tuning of {sweep.stage}: {len(result.used)} proxies x {sweep.steps} steps, "
            f"rule: {result.rule.describe(result.languages)}"
        )
        + f"\n{verdict}",
        fontsize=10,
        color="black" if v.validated else "darkred",
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _ko(result: FitResult, shares: np.ndarray) -> np.ndarray:
    if result.sweep.mode == "grid":
        return shares[:, 0]
    ko = [i for i, s in enumerate(result.sweep.sources) if result.sweep.languages[s] == TARGET_LANGUAGE]
    return shares[:, ko].sum(axis=1)


def _curves(ax, result: FitResult) -> None:
    steps = sorted({s for r in result.used for s in r.points if 0 < s <= result.step})
    for i, lang in enumerate(result.languages):
        color = _color(lang, i)
        for s in steps:
            xs = [_ko(result, np.asarray([r.shares]))[0] for r in result.used if lang in r.points.get(s, {})]
            ys = [r.points[s][lang] for r in result.used if lang in r.points.get(s, {})]
            last = s == result.step
            alpha = 1.0 if last else 0.15 + 0.5 * s / result.step
            ax.scatter(xs, ys, color=color, s=36 if last else 12, alpha=alpha, zorder=3, edgecolor="none")
        x = _ko(result, result.candidates)
        y = result.predicted[lang]
        if result.sweep.mode == "grid":
            ax.plot(x, y, color=color, lw=1.6, label=f"{NAMES.get(lang, lang)}: {result.fits[lang].law.describe()}")
        else:
            ax.scatter(x[::50], y[::50], color=color, s=2, alpha=0.15, label=f"{NAMES.get(lang, lang)}: predicted")
        limit = result.choice.bounds.get(lang)
        if limit is not None:
            ax.axhline(
                limit,
                color=color,
                ls=":",
                lw=1.2,
                label=f"{lang} bound: start {result.baseline[lang]:.4f} + {result.rule.epsilon:g}",
            )
        ax.scatter(
            [result.ko_share], [result.chosen_loss[lang]], marker="*", s=220, color=color, edgecolor="black", zorder=5
        )
    if result.sweep.mode == "grid" and result.choice.bounds:
        x = result.candidates[:, 0]
        outside = ~feasible_mask(result.predicted, result.choice.bounds)
        ax.fill_between(
            x,
            0,
            1,
            where=outside,
            transform=ax.get_xaxis_transform(),
            color="gray",
            alpha=0.12,
            label="breaks a bound",
            step="mid",
        )
    ratio = result.validation.ratio
    span = f", 95% interval {ratio[0]:.2f}-{ratio[1]:.2f}" if ratio else ""
    ax.axvline(result.ko_share, color="black", ls="--", lw=1.0, label=f"chosen: ko share {result.ko_share:.3g}{span}")
    if ratio:
        ax.axvspan(ratio[0], ratio[1], color="black", alpha=0.07, label="chosen share, 95% bootstrap interval")
    ax.set_xlabel("Korean share of the training mixture")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"proxies at step {result.step} (faint: earlier steps), fitted mixing laws", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center")


def _front(ax, result: FitResult) -> None:
    other = next((lang for lang in result.languages if lang != TARGET_LANGUAGE), None)
    if other is None:
        ax.set_axis_off()
        return
    pred = np.column_stack([result.predicted[other], result.predicted[TARGET_LANGUAGE]])
    mask = pareto_front(pred)
    order = np.argsort(pred[:, 0])
    if result.sweep.mode == "grid":
        ax.plot(pred[:, 0], pred[:, 1], color="lightgray", lw=1.0, label="fitted laws (all swept shares)")
        on = order[mask[order]]
        ax.plot(pred[on, 0], pred[on, 1], color="tab:purple", lw=2.4, label="Pareto front")
    else:
        ax.scatter(pred[::50, 0], pred[::50, 1], color="lightgray", s=2, label="simulated mixtures (predicted)")
        on = order[mask[order]]
        ax.plot(pred[on, 0], pred[on, 1], color="tab:purple", lw=2.0, label="Pareto front")
    measured = np.asarray([[r.final[other], r.final[TARGET_LANGUAGE]] for r in result.used])
    ax.scatter(measured[:, 0], measured[:, 1], color="black", s=28, zorder=4, label=f"proxies at step {result.step}")
    for r, (xv, yv) in zip(result.used, measured, strict=True):
        share = _ko(result, np.asarray([r.shares]))[0]
        ax.annotate(f"ko {share:.2g}", (xv, yv), xytext=(4, 3), textcoords="offset points", fontsize=8)
    limit = result.choice.bounds.get(other)
    if limit is not None:
        ax.axvline(limit, color=_color(other, 1), ls=":", lw=1.2, label=f"{other} bound")
    ax.scatter(
        [result.chosen_loss[other]],
        [result.chosen_loss[TARGET_LANGUAGE]],
        marker="*",
        s=260,
        color="gold",
        edgecolor="black",
        zorder=5,
        label="chosen",
    )
    ax.set_title("Korean vs English loss: the mixtures no other one beats on both", fontsize=9)
    ax.set_xlabel(f"{NAMES.get(other, other)} held-out bits per byte")
    ax.set_ylabel(f"{NAMES[TARGET_LANGUAGE]} held-out bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
