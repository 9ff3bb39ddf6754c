"""Held-out scoring on several ranks with an FSDP2-sharded model: run by tests/eval/test_heldout.py under torchrun.

Every forward of a `fully_shard`ed model all-gathers the weights, so it is a collective: a rank that
called it fewer times than the others would hang them. Each rank counts its forward calls; rank 0
writes the scores and every rank's count to the JSON file given.

    torchrun --nproc-per-node 2 tests/eval/heldout_ranks.py \
        CHECKPOINT TOKENIZER SEQ_LEN BATCH OUT.json KO.jsonl EN.jsonl
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> None:
    ckpt, tokenizer, seq_len, batch, out, ko, en = sys.argv[1:8]
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    from torch.distributed.fsdp import fully_shard

    from motif.config import HeldoutSource
    from motif.eval.heldout import HeldoutSet
    from motif.model.checkpoint import load

    model = load(ckpt)
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    from torch.distributed.tensor import DTensor

    assert all(isinstance(p, DTensor) for p in model.parameters()), "weights are not sharded"

    calls = 0

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return model(tokens)

    def all_reduce_sum(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)

    sources = [HeldoutSource("ko-heldout", "ko", ko), HeldoutSource("en-heldout", "en", en)]
    heldout = HeldoutSet.from_sources(sources, tokenizer, int(seq_len), int(batch), rank, world)
    scores = heldout.score(forward, "cpu", all_reduce_sum)
    counts = [None] * world
    dist.all_gather_object(counts, {"calls": calls, "windows": len(heldout.my_windows)})
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"scores": scores, "ranks": counts, "batches_per_rank": heldout.batches_per_rank}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
