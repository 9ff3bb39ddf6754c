"""Where a stage's weights and Adam moments start: a checkpoint read in parts, or a seeded init.

Why it is built this way: every engine asks for *parts* of tensors by name (rows for FSDP2, a
flat range for ZeRO-3, the whole tensor for DDP), so "load the model" never means "hold the
model". A from-scratch stage draws each tensor from a generator seeded by the tensor's name, so
the initial weights are the same on 1 or 64 ranks and for every engine, and generating one tensor
at a time keeps the working set at one tensor.

The start checkpoint's records are read once per run (`StartCheckpoint`) and handed to the parts
that need them: the command (the model's size), the trainer (the input check, the frozen blocks)
and the readers and the verification (the weights' headers). On a shared volume each read is a
round trip that every rank makes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from motif.model.args import ModelArgs
from motif.train.slices import TensorReader

if TYPE_CHECKING:
    from motif.model.checkpoint import Checkpoint

OPTIMIZER_FILE = "optimizer.safetensors"  # the per-parameter Adam state `motif grow` reads and grows
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class StartCheckpoint:
    """The checkpoint a stage starts from, each of its records read once.

    Read in the order the checks need it: the shape first (`read`: config.json alone, so a wrong
    input is refused before any header is read), the weights' headers on first use (`checkpoint`).
    """

    path: str  # as the stage file names it: error messages quote it so
    args: ModelArgs  # its config.json
    _checkpoint: Checkpoint | None = field(default=None, repr=False)

    @classmethod
    def read(cls, path: str) -> StartCheckpoint:
        from motif.model.checkpoint import read_args

        return cls(path, read_args(path))

    def checkpoint(self) -> Checkpoint:
        """Its weight files checked against the shape: every header read once, on the first call."""
        if self._checkpoint is None:
            from motif.model.checkpoint import open_checkpoint

            self._checkpoint = open_checkpoint(self.path, self.args)
        return self._checkpoint


class WeightSource:
    """Parts of the start weights, by HF tensor name, in fp32."""

    def __init__(self, args: ModelArgs, reader: TensorReader | None, seed: int):
        self.args = args
        self.reader = reader
        self.seed = seed
        self.shapes = args.tensor_shapes()
        self._cache: tuple[str, torch.Tensor] | None = None  # the last generated tensor (init only)

    @classmethod
    def open(cls, args: ModelArgs, checkpoint: str | Path | None, seed: int) -> WeightSource:
        return cls(args, TensorReader.checkpoint(checkpoint) if checkpoint is not None else None, seed)

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read if self.reader is not None else 0

    def flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of the flattened tensor (fp32, 1-D)."""
        if self.reader is not None:
            return self.reader.read_flat(name, start, stop).float()
        return self._generated(name).reshape(-1)[start:stop]

    def flat_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Elements [start, stop) into `out` (1-D), read straight into it when the dtypes match."""
        if self.reader is not None:
            self.reader.read_into(name, start, stop, out)
        else:
            out.copy_(self.flat(name, start, stop))

    def full(self, name: str) -> torch.Tensor:
        return self.flat(name, 0, math.prod(self.shapes[name])).reshape(self.shapes[name])

    def _generated(self, name: str) -> torch.Tensor:
        """From-scratch value of one tensor: N(0, 0.02) for matrices and embeddings, ones for norm gains."""
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        shape = self.shapes[name]
        if len(shape) == 1:
            value = torch.ones(shape)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            value = torch.empty(shape).normal_(0.0, 0.02, generator=gen)
        self._cache = (name, value)
        return value

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self._cache = None

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MomentSource:
    """Adam moments and step counts carried from the previous stage (`optimizer.safetensors`)."""

    def __init__(self, reader: TensorReader | None):
        self.reader = reader

    @classmethod
    def open(cls, checkpoint: str | Path | None) -> MomentSource:
        if checkpoint is None or not (Path(checkpoint) / OPTIMIZER_FILE).is_file():
            return cls(None)
        return cls(TensorReader.file(Path(checkpoint) / OPTIMIZER_FILE))

    @property
    def path(self) -> str | None:
        return None if self.reader is None else self.reader.source

    def has(self, name: str) -> bool:
        return self.reader is not None and f"exp_avg.{name}" in self.reader

    def names(self) -> list[str]:
        if self.reader is None:
            return []
        return [k.split(".", 1)[1] for k in self.reader.entries if k.startswith("exp_avg.")]

    def _carried(self) -> TensorReader:
        """The reader, for the moments of a tensor that `has` found (the only ones callers ask for)."""
        assert self.reader is not None, "no Adam moments were carried: ask `has` first"
        return self.reader

    def step(self, name: str) -> float:
        return float(self._carried().read(f"step.{name}").reshape(()).item()) if self.has(name) else 0.0

    def flat_into(self, key: str, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        self._carried().read_into(f"{key}.{name}", start, stop, out)

    def full(self, key: str, name: str) -> torch.Tensor:
        return self._carried().read(f"{key}.{name}").float()

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        from motif.errors import CheckpointError

        reader = self._carried()
        for key in MOMENTS:
            found = reader.shape(f"{key}.{name}")
            if tuple(found) != tuple(shape):
                raise CheckpointError(
                    f"{reader.source}: {key}.{name} has shape {list(found)}, the parameter has {list(shape)} "
                    "(was the optimizer state grown with the checkpoint? `motif grow` does both)"
                )

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read if self.reader is not None else 0

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
