"""Llama 3 in plain PyTorch (HF tensor names), its shape arguments and checkpoint I/O.

Names are imported on first use (PEP 562), so `motif.model.args` (shapes, no torch) loads without
the model and torch: the config, the CLI's parser and `motif plan` stay torch-free.
"""

from motif.lazy import lazy_exports

_EXPORTS = {
    "GrowthState": "motif.model.args",
    "ModelArgs": "motif.model.args",
    "KVCache": "motif.model.model",
    "Llama": "motif.model.model",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
