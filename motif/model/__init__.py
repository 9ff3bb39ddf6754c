"""Llama 3 in plain PyTorch (HF tensor names), its shape arguments and checkpoint I/O."""

from motif.model.args import GrowthState, ModelArgs
from motif.model.model import KVCache, Llama

__all__ = ["GrowthState", "KVCache", "Llama", "ModelArgs"]
