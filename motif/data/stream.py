"""One source as an endless token stream on one rank: documents in a seeded order, tokenised,
concatenated. Its whole position is `(epoch, doc, offset)`: the next token is token `offset` of
document `doc` of this rank's order for `epoch`.

Each rank owns a disjoint shard of every epoch's permutation (`perm[rank::world]`), so ranks never
see the same document in an epoch and none has to tokenise another rank's data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from motif.data.sources import Documents, StreamingDocuments
from motif.data.tokenizer import Tokenizer
from motif.errors import DataError


@dataclass
class StreamPosition:
    epoch: int = 0
    doc: int = 0
    offset: int = 0


class TokenStream:
    # Documents tokenised per batch call: amortises the Rust call, small enough to keep RAM flat.
    BATCH_DOCS = 64

    def __init__(
        self,
        docs: Documents | StreamingDocuments,
        tokenizer: Tokenizer,
        *,
        seed: int,
        index: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.docs = docs
        self.tokenizer = tokenizer
        self.seed, self.index, self.rank, self.world = seed, index, rank, world
        self.position = StreamPosition()
        self._reset_buffer()

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = StreamPosition(**state)
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        # Tokenised documents from `position` onwards; `_next` is the position of the first not yet read.
        self._buffer: list[tuple[int, int, np.ndarray]] = []
        self._next = (self.position.epoch, self.position.doc)
        self._order_epoch = -1
        self._iter = None

    # ---- document order ------------------------------------------------------------------------

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.docs)
            perm = np.random.default_rng([self.seed, self.index, epoch]).permutation(n)
            self._order_cache = perm[self.rank :: self.world]
            self._order_epoch = epoch
            if len(self._order_cache) == 0:
                raise DataError(f"source {self.docs.name!r}: {n} documents cannot be shared among {self.world} ranks")
        return self._order_cache

    def _read_texts(self) -> tuple[list[str], list[tuple[int, int]]]:
        """The next batch of texts and the (epoch, doc) of each."""
        epoch, doc = self._next
        if isinstance(self.docs, StreamingDocuments):
            if self._iter is None:
                self._iter = self.docs.iterate(epoch, skip=doc)
            texts = []
            while len(texts) < self.BATCH_DOCS:
                text = next(self._iter, None)
                if text is None:
                    if texts:
                        break
                    epoch, doc = epoch + 1, 0
                    self._iter = self.docs.iterate(epoch, skip=0)
                    continue
                texts.append(text)
            positions = [(epoch, doc + i) for i in range(len(texts))]
            self._next = (epoch, doc + len(texts))
            return texts, positions
        order = self._order(epoch)
        if doc >= len(order):
            epoch, doc = epoch + 1, 0
            order = self._order(epoch)
        ids = order[doc : doc + self.BATCH_DOCS]
        self._next = (epoch, doc + len(ids))
        return self.docs.texts(ids.tolist()), [(epoch, doc + i) for i in range(len(ids))]

    # ---- reading -------------------------------------------------------------------------------

    def _fill(self, need: int) -> None:
        have = sum(len(t) for _, _, t in self._buffer) - self.position.offset
        while have < need:
            texts, positions = self._read_texts()
            for (epoch, doc), ids in zip(positions, self.tokenizer.encode_batch(texts), strict=True):
                self._buffer.append((epoch, doc, np.asarray(ids, dtype=np.int64)))
                have += len(ids)

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens, advancing the position."""
        self._fill(n)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        pos = self.position
        while filled < n:
            _, _, head = self._buffer[0]
            k = min(n - filled, len(head) - pos.offset)
            out[filled : filled + k] = head[pos.offset : pos.offset + k]
            filled += k
            pos.offset += k
            if pos.offset == len(head):
                self._buffer.pop(0)
                pos.offset = 0
                pos.epoch, pos.doc = self._buffer[0][:2] if self._buffer else self._next
        return out
