"""A motif checkpoint as the model object lm-evaluation-harness drives.

lm-eval's `HFLM` needs little of a model: `.config` (for the context length), `.device`,
`tie_weights()` and `forward(ids) -> .logits`. `EvalModel` gives exactly that around motif's own
`Llama`, so a mid-growth checkpoint (MSG masks below 1, which transformers cannot load) is scored
the same way as a finished one, and the weights can be split across several GPUs
(`motif.eval.placement`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from motif.eval.placement import Placement, attach, param_device, plan_placement
from motif.model.args import ModelArgs
from motif.model.checkpoint import open_checkpoint, to_dtype
from motif.model.model import Llama
from motif.model.safetensors_io import read_tensor
from motif.storage.reading import open_sequential

# Kept free on each GPU for activations and the logits of a batch ([B, T, V] fp32 on the last one).
HEADROOM_FRACTION = 0.15


@dataclass
class Output:
    logits: torch.Tensor


class EvalModel(torch.nn.Module):
    """`forward(ids) -> Output(logits)` on a (possibly split) motif Llama; logits come back on the ids' device."""

    def __init__(self, llama: Llama, placement: Placement, name_or_path: str) -> None:
        super().__init__()
        self.llama = llama
        self.placement = placement
        self.name_or_path = name_or_path
        self.config = hf_config(llama.args)

    @property
    def device(self) -> torch.device:
        return torch.device(self.placement.input_device)

    @property
    def dtype(self) -> torch.dtype:
        return self.llama.model.embed_tokens.weight.dtype

    @property
    def growth_mask(self) -> float:
        return self.llama.growth_mask

    def tie_weights(self) -> None:
        """Tied embeddings are tied when motif loads the checkpoint; nothing left to do."""

    def num_parameters(self) -> int:
        return self.llama.args.num_params()

    def forward(self, input_ids: torch.Tensor, **_: object) -> Output:
        logits = self.llama(input_ids.to(self.placement.input_device))
        return Output(logits.to(input_ids.device))

    def to(self, *args, **kwargs):  # lm-eval moves single-device models; a split model stays where it is
        if len(self.placement.devices) > 1:
            return self
        return super().to(*args, **kwargs)


def hf_config(args: ModelArgs):
    """A transformers `LlamaConfig` of the model's shape: what lm-eval reads (context length, model type)."""
    from transformers import LlamaConfig

    cfg = args.replace(growth=None).to_hf_config()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return LlamaConfig(
        **{k: cfg[k] for k in keep},
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        tie_word_embeddings=cfg["tie_word_embeddings"],
    )


def device_memory(device: str) -> int | None:
    """Total memory of a GPU (None for the CPU: host memory is not planned here)."""
    d = torch.device(device)
    if d.type != "cuda":
        return None
    return torch.cuda.get_device_properties(d.index or 0).total_memory


def load_eval_model(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    devices: list[str] | None = None,
    progress: bool = False,
) -> EvalModel:
    """Read a checkpoint (plain or mid-growth) straight onto its devices, in `dtype`.

    Args:
        dtype: None keeps the checkpoint's own dtype.
        devices: one device (the default, cpu) or several, which split the blocks between them.
    """
    ckpt = open_checkpoint(path)
    dtype = to_dtype(dtype) or ckpt.dtype
    devices = devices or ["cpu"]
    memory = device_memory(devices[0])
    headroom = int(memory * HEADROOM_FRACTION) if memory else 0
    placement = plan_placement(ckpt.args, devices, dtype, memory, headroom)
    state: dict[str, torch.Tensor] = {}
    fds: dict[Path, int] = {}
    entries = list(ckpt.entries.items())
    bar = _bar(sum(e.nbytes for _, e in entries), f"loading {Path(path).name}", progress)
    try:
        for name, entry in entries:
            if entry.path not in fds:
                fds[entry.path] = open_sequential(entry.path)
            state[name] = read_tensor(entry, fds[entry.path]).to(device=param_device(placement, name), dtype=dtype)
            bar.update(entry.nbytes)
    finally:
        bar.close()
        for fd in fds.values():
            os.close(fd)
    llama = Llama.from_state_dict(ckpt.args, state, placement.input_device).eval()
    if len(placement.devices) > 1:
        attach(llama, placement)
    return EvalModel(llama, placement, str(path))


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)
