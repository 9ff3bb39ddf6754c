"""motif: grow an open Llama 3 into a larger one and train each growth stage.

Public API (used by tools and tests; keep stable):
    motif.load(path, dtype=torch.float32, device="cpu") -> model in eval mode; model(tokens[B, T]) -> logits[B, T, V]
    motif.save(model, path)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "save"]


def load(path, dtype=None, device="cpu"):
    """Load an HF-layout (or motif, masks below 1) checkpoint directory as a motif Llama in eval mode."""
    from motif.model.checkpoint import load as _load

    return _load(path, dtype=dtype, device=device)


def save(model, path) -> None:
    """Save a motif Llama as an HF-layout directory (a motif checkpoint while growth masks are below 1)."""
    from motif.model.checkpoint import save as _save

    _save(model, path)
