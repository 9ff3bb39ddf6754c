"""Selection rules: which mixture to train on, given each language's (predicted) held-out loss.

- `constrained` (default): the lowest Korean loss among the mixtures that keep every other
  language within `epsilon` bits per byte of the start checkpoint's loss (no forgetting).
- `weighted`: the lowest weighted sum of the languages' losses.

Ties (objective values within TIE of the best) go to the mixture that is best on the other
languages, so a flat objective picks a Pareto-optimal point rather than an arbitrary one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from motif.errors import MotifError
from motif.mix.mixtures import TARGET_LANGUAGE

TIE = 1e-4  # bits per byte: far below a proxy's run-to-run noise
RULES = ("constrained", "weighted")


@dataclass(frozen=True)
class Rule:
    kind: Literal["constrained", "weighted"] = "constrained"
    epsilon: float = 0.01  # bits per byte above the start checkpoint's loss a kept language may go
    weights: dict[str, float] = field(default_factory=dict)  # weighted: language -> weight (empty: equal)
    target: str = TARGET_LANGUAGE

    def describe(self, languages: list[str]) -> str:
        if self.kind == "constrained":
            kept = ", ".join(f"{lang} <= start + {self.epsilon:g}" for lang in languages if lang != self.target)
            return f"minimise {self.target} loss subject to {kept}"
        w = self.language_weights(languages)
        return "minimise " + " + ".join(f"{w[lang]:g} * {lang}" for lang in languages)

    def language_weights(self, languages: list[str]) -> dict[str, float]:
        return self.weights or {lang: 1.0 / len(languages) for lang in languages}


def parse_weights(text: str, flag: str = "--weights") -> dict[str, float]:
    """`ko=0.7,en=0.3` -> {"ko": 0.7, "en": 0.3}: non-negative, summing to 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None or not math.isfinite(number) or number < 0:
            raise MotifError(
                f"{flag}: {part.strip()!r}: expected LANGUAGE=WEIGHT with WEIGHT >= 0 (e.g. ko=0.7,en=0.3)"
            )
        out[name.strip()] = number
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise MotifError(f"{flag}: weights must sum to 1, got {total:g} ({text})")
    return out


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    feasible: bool  # constrained: some candidate meets every bound
    bounds: dict[str, float]  # constrained: language -> highest allowed loss


def _objective(rule: Rule, predicted: dict[str, np.ndarray]) -> np.ndarray:
    if rule.kind == "weighted":
        w = rule.language_weights(sorted(predicted))
        return sum(w.get(lang, 0.0) * loss for lang, loss in predicted.items())
    return predicted[rule.target]


def bounds(rule: Rule, baseline: dict[str, float] | None, languages: list[str]) -> dict[str, float]:
    if rule.kind != "constrained":
        return {}
    kept = [lang for lang in languages if lang != rule.target]
    missing = [lang for lang in kept if not baseline or lang not in baseline]
    if missing:
        raise MotifError(
            f"--rule constrained: no start-checkpoint loss for {', '.join(missing)} "
            "(pass --baseline LANG=BPB, or use --rule weighted)"
        )
    return {lang: baseline[lang] + rule.epsilon for lang in kept}


def feasible_mask(predicted: dict[str, np.ndarray], limits: dict[str, float]) -> np.ndarray:
    n = len(next(iter(predicted.values())))
    mask = np.ones(n, dtype=bool)
    for lang, limit in limits.items():
        mask &= predicted[lang] <= limit
    return mask


def choose(rule: Rule, predicted: dict[str, np.ndarray], baseline: dict[str, float] | None) -> Choice:
    """The best candidate by the rule; without a feasible one, the one closest to feasibility."""
    if rule.target not in predicted:
        raise MotifError(f"--rule: no held-out loss for language {rule.target} (have: {', '.join(sorted(predicted))})")
    limits = bounds(rule, baseline, sorted(predicted))
    mask = feasible_mask(predicted, limits)
    n = len(predicted[rule.target])
    others = np.zeros(n) + sum(loss for lang, loss in predicted.items() if lang != rule.target)
    if not mask.any():
        excess = sum(np.maximum(predicted[lang] - limit, 0.0) for lang, limit in limits.items())
        return Choice(index=int(np.argmin(excess)), feasible=False, bounds=limits)
    objective = np.where(mask, _objective(rule, predicted), np.inf)
    ties = objective <= objective.min() + TIE
    secondary = np.where(ties, others, np.inf)
    return Choice(index=int(np.argmin(secondary)), feasible=True, bounds=limits)


def top(rule: Rule, predicted: dict[str, np.ndarray], baseline: dict[str, float] | None, k: int) -> np.ndarray:
    """Indices of the k best feasible candidates (RegMix averages the best simulated mixtures)."""
    limits = bounds(rule, baseline, sorted(predicted))
    mask = feasible_mask(predicted, limits)
    objective = np.where(mask, _objective(rule, predicted), np.inf)
    order = np.argsort(objective, kind="stable")
    return order[: max(1, min(k, int(mask.sum())))] if mask.any() else order[:0]


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Mask of the rows of `points` ([N, languages], losses) that no other row dominates."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[1] == 2:
        # Two languages: sorted by the first loss (ties by the second), a row is on the front when
        # its second loss is below every earlier row's. O(N log N) for 100,000 simulated mixtures.
        order = np.lexsort((p[:, 1], p[:, 0]))
        best_before = np.minimum.accumulate(np.concatenate([[np.inf], p[order, 1]]))[:-1]
        front = np.zeros(len(p), dtype=bool)
        front[order] = p[order, 1] < best_before
        return front
    front = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        dominated = np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1)
        front[i] = not dominated.any()
    return front
