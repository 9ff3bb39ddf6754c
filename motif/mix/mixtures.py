"""Mixtures of a stage's sources: a Korean-share grid (the two-language sweep) and RegMix's
Dirichlet samples (more than two sources).

A stage's mixture is its sources' weights. In the grid, one number moves, the Korean share: the
Korean sources split it, the other sources split the rest, each group keeping the proportions it
has in the stage file. With more sources, RegMix (ICLR 2025) samples whole weight vectors from a
Dirichlet centred on the sources' natural token shares, with a concentration drawn per sample so
that both near-natural and extreme mixtures appear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from motif.config import DataSource
from motif.errors import MotifError

TARGET_LANGUAGE = "ko"
# Weights are written with this many decimals; a stage's weights must sum to 1 within 1e-6.
DECIMALS = 6
# Dirichlet concentration range of RegMix's sampler (small: sparse mixtures; large: near the centre).
CONCENTRATION = (0.1, 5.0)
# Each source keeps at least this weight (motif.data.sources[*].weight must be > 0).
MIN_WEIGHT = 0.01


def parse_shares(text: str, flag: str = "--ko") -> list[float]:
    """`0.1,0.3,0.5` -> [0.1, 0.3, 0.5], each strictly between 0 and 1, no repeats."""
    shares = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise MotifError(f"{flag}: {part.strip()!r} is not a number (expected shares like 0.1,0.3,0.5)") from None
        if not 0.0 < value < 1.0:
            raise MotifError(
                f"{flag}: share {value:g} is outside 0..1 (expected 0 < share < 1: every source keeps a weight)"
            )
        shares.append(value)
    if len(set(shares)) != len(shares):
        raise MotifError(f"{flag}: a share is repeated in {text!r} (expected distinct shares)")
    return sorted(shares)


def rounded(weights: list[float]) -> list[float]:
    """Weights rounded to DECIMALS, the largest one absorbing the rounding so the sum stays 1."""
    out = [round(w, DECIMALS) for w in weights]
    i = int(np.argmax(out))
    out[i] = round(out[i] + (1.0 - sum(out)), DECIMALS)
    return out


def language_share(sources: list[DataSource], weights: list[float], language: str = TARGET_LANGUAGE) -> float:
    return float(sum(w for s, w in zip(sources, weights, strict=True) if s.language == language))


def weights_for_share(sources: list[DataSource], share: float, where: str, language: str = TARGET_LANGUAGE):
    """Source weights giving `language` the share `share`, each side keeping its inner proportions."""
    inside = [s.weight for s in sources if s.language == language]
    outside = [s.weight for s in sources if s.language != language]
    if not inside:
        raise MotifError(
            f"{where}: motif.data.sources: no source with language: {language} (the sweep varies its share)"
        )
    if not outside:
        raise MotifError(f"{where}: motif.data.sources: every source is language {language}; nothing to mix it with")
    total_in, total_out = sum(inside), sum(outside)
    weights = [
        share * s.weight / total_in if s.language == language else (1.0 - share) * s.weight / total_out for s in sources
    ]
    return rounded(weights)


def natural_shares(sources: list[DataSource], root: Path) -> tuple[list[float], str]:
    """Each source's share of the available text, by size on disk (bytes track tokens closely
    enough for a Dirichlet centre); the stage's own weights when a source is not a local path."""
    sizes = []
    for s in sources:
        files = _local_files(root, s.path) if s.path else []
        if not files:
            return [s.weight for s in sources], "the stage's weights (a source is not a local file)"
        sizes.append(sum(f.stat().st_size for f in files))
    total = sum(sizes)
    if total == 0:
        return [s.weight for s in sources], "the stage's weights (the local sources are empty)"
    return [n / total for n in sizes], "the sources' sizes on disk"


def _local_files(root: Path, path: str) -> list[Path]:
    p = Path(path) if Path(path).is_absolute() else root / path
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return sorted(f for f in p.parent.glob(p.name) if f.is_file()) if any(ch in p.name for ch in "*?[") else []


def _sample(centre: list[float], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.asarray(centre, dtype=np.float64)
    c = c / c.sum()
    concentration = np.exp(rng.uniform(np.log(CONCENTRATION[0]), np.log(CONCENTRATION[1]), n))
    # numpy's dirichlet takes one alpha; gamma draws give a Dirichlet row per concentration.
    g = rng.gamma(concentration[:, None] * c[None, :] * len(c))
    g[g.sum(axis=1) == 0] = c  # every gamma draw underflowed (tiny concentration): take the centre
    w = g / g.sum(axis=1, keepdims=True)
    return MIN_WEIGHT + (1.0 - MIN_WEIGHT * len(c)) * w


def dirichlet(centre: list[float], n: int, seed: int) -> list[list[float]]:
    """`n` mixtures from Dirichlet(a * len(centre) * centre), a log-uniform in CONCENTRATION
    (RegMix), each weight at least MIN_WEIGHT, rounded so that they sum to 1."""
    return [rounded(row.tolist()) for row in _sample(centre, n, seed)]


def simulate(centre: list[float], n: int, seed: int) -> np.ndarray:
    """Many candidate mixtures from the same prior as the sweep, for choosing by a fitted model."""
    return _sample(centre, n, seed)
