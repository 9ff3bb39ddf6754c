"""The stage's data mixture: packed fixed-length sequences drawn from the sources by weight.

Each sequence holds `seq_len + 1` tokens (inputs and shifted targets) packed from one source, so
every target token has one language for per-language loss and token accounting. The source of the
k-th sequence on a rank is drawn by hashing `(seed, rank, k)` (splitmix64): the draw needs no
history, and the mixture's whole state is `k` plus each source's stream position.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from motif.config import DataConfig
from motif.data.sources import open_source
from motif.data.stream import TokenStream
from motif.data.tokenizer import Tokenizer
from motif.errors import DataError

_U64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-mixed, platform-independent hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, seq_len + 1] int64
    source: torch.Tensor  # [B] int64, index into Mixture.languages / Mixture.names

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        return Batch(torch.cat([p.tokens for p in parts]), torch.cat([p.source for p in parts]))


class Mixture:
    def __init__(
        self,
        streams: list[TokenStream],
        weights: list[float],
        names: list[str],
        languages: list[str],
        *,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.streams = streams
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self._cumulative = np.cumsum(self.weights).tolist()
        self.names = names
        self.languages = languages
        self.seq_len = seq_len
        self.seed, self.rank, self.world = seed, rank, world
        self.sample = 0  # sequences drawn on this rank

    @classmethod
    def from_config(cls, cfg: DataConfig, *, rank: int = 0, world: int = 1, tokenizer: Tokenizer | None = None):
        tokenizer = tokenizer or Tokenizer(cfg.tokenizer)
        streams = []
        for i, src in enumerate(cfg.sources):
            docs = open_source(src, streaming=cfg.streaming, rank=rank, world=world, seed=cfg.seed)
            streams.append(TokenStream(docs, tokenizer, seed=cfg.seed, index=i, rank=rank, world=world))
        return cls(
            streams,
            [s.weight for s in cfg.sources],
            [s.name for s in cfg.sources],
            [s.language for s in cfg.sources],
            seq_len=cfg.seq_len,
            seed=cfg.seed,
            rank=rank,
            world=world,
        )

    def choose(self, sample: int) -> int:
        """Source of sequence `sample` on this rank: a hash of (seed, rank, sample) against the weights."""
        u = _mix(_mix(_mix(self.seed) ^ self.rank) ^ sample) / 2.0**64
        return min(bisect.bisect_right(self._cumulative, u), len(self.weights) - 1)

    def next_batch(self, batch_size: int) -> Batch:
        tokens = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        source = np.empty(batch_size, dtype=np.int64)
        for b in range(batch_size):
            i = self.choose(self.sample)
            tokens[b] = self.streams[i].take(self.seq_len + 1)
            source[b] = i
            self.sample += 1
        return Batch(torch.from_numpy(tokens), torch.from_numpy(source))

    # ---- resume ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "rank": self.rank,
            "world_size": self.world,
            "sample": self.sample,
            "sources": {name: s.state_dict() for name, s in zip(self.names, self.streams, strict=True)},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world:
            raise DataError(
                f"the data position was saved by {state['world_size']} ranks and this job has {self.world}; "
                "each rank reads its own shard, so resume with the same world size"
            )
        missing = sorted(set(self.names) - set(state["sources"]))
        if missing:
            raise DataError(f"the data position has no source {missing[0]!r}: the stage's sources changed")
        self.sample = state["sample"]
        for name, stream in zip(self.names, self.streams, strict=True):
            stream.load_state_dict(state["sources"][name])
