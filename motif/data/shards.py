"""The data of one rank: whole logical shards of the stage's mixture, so a job can change size.

Why it is built this way: a data position that belongs to a rank (its slice of every permutation,
its own draw of sources) dies with that rank's count. A job restarted on fewer nodes, or an
elastic PyTorchJob that shrinks, would have to drop or repeat samples. So the stage's data is cut
into `S` logical shards once (`motif.data.shards`, by default the world size of the first run):
shard `s` is exactly what rank `s` of a world of `S` would read (`Mixture(rank=s, world=S)`: its own
documents, its own seeded source draws, its own position). Each of the `W <= S` ranks owns the
shards `s` with `s % W == rank` and fills its micro-batches from them in turn.

With `W == S` every rank owns one shard and reads exactly what the per-rank mixture always read.
With another `W`, the shards move between ranks with their positions: every shard continues where
it stopped, so no sample is lost or repeated; only the interleaving of shards into batches changes.
"""

from __future__ import annotations

from motif.config import DataConfig
from motif.data.mixture import Batch, Mixture
from motif.data.tokenizer import Tokenizer
from motif.errors import DataError


def owned_shards(num_shards: int, rank: int, world: int) -> list[int]:
    """The logical shards rank `rank` of `world` reads."""
    if world > num_shards:
        raise DataError(
            f"motif.data.shards: the data is cut into {num_shards} shards, fewer than the {world} ranks of this job; "
            f"run on at most {num_shards} ranks (or start the stage with motif.data.shards >= {world})"
        )
    return list(range(rank, num_shards, world))


class ShardedData:
    """A rank's logical shards of the mixture, read in turn, one sequence at a time."""

    def __init__(self, shards: dict[int, Mixture], rank: int, world: int):
        self.shards = shards
        self.order = sorted(shards)
        self.rank, self.world = rank, world
        self.turn = 0  # sequences drawn by this rank; sequence k comes from shard order[k % len(order)]
        first = shards[self.order[0]]
        self.names, self.languages, self.seq_len = first.names, first.languages, first.seq_len

    @classmethod
    def from_config(cls, cfg: DataConfig, num_shards: int, *, rank: int, world: int, tokenizer: Tokenizer):
        shards = {
            s: Mixture.from_config(cfg, rank=s, world=num_shards, tokenizer=tokenizer)
            for s in owned_shards(num_shards, rank, world)
        }
        return cls(shards, rank, world)

    @property
    def num_shards(self) -> int:
        return self.shards[self.order[0]].world

    def next_batch(self, batch_size: int) -> Batch:
        if len(self.order) == 1:
            return self.shards[self.order[0]].next_batch(batch_size)
        parts = []
        for _ in range(batch_size):
            parts.append(self.shards[self.order[self.turn % len(self.order)]].next_batch(1))
            self.turn += 1
        return Batch.concat(parts)

    # ---- resume: every rank writes its shards, every rank reads the shards it now owns ----------

    def state_dict(self) -> dict:
        """This rank's keys of the data state; the checkpoint keeps the union over ranks."""
        return {
            "num_shards": self.num_shards,
            "shards": {str(s): self.shards[s].state_dict() for s in self.order},
            "turns": {f"{self.world}/{self.rank}": self.turn},
        }

    def load_state_dict(self, state: dict) -> None:
        """`state`: the union of every rank's `state_dict()` at save time."""
        if state["num_shards"] != self.num_shards:
            raise DataError(
                f"motif.data.shards: the checkpoint's data is cut into {state['num_shards']} shards, this run into "
                f"{self.num_shards}: resuming would change the data order"
            )
        missing = [s for s in self.order if str(s) not in state["shards"]]
        if missing:
            raise DataError(f"the checkpoint has no position for data shard {missing[0]} (a rank's file is missing)")
        for s in self.order:
            self.shards[s].load_state_dict(state["shards"][str(s)])
        # The turn only means something among the same shards: kept at the same world size.
        self.turn = state["turns"].get(f"{self.world}/{self.rank}", 0)
