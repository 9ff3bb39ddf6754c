"""Llama 3 in plain PyTorch (HF tensor names), its shape arguments and checkpoint I/O.

Names are imported on first use (PEP 562), so `motif.model.args` (shapes, no torch) loads without
the model and torch: the config, the CLI's parser and `motif plan` stay torch-free.
"""

import importlib

_EXPORTS = {
    "GrowthState": "motif.model.args",
    "ModelArgs": "motif.model.args",
    "KVCache": "motif.model.model",
    "Llama": "motif.model.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'motif.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
