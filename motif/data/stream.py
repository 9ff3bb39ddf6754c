"""One source as an endless token stream on one rank: documents in a seeded order, tokenised,
concatenated. Its whole position is `(epoch, doc, offset)`: the next token is token `offset` of
document `doc` of this rank's order for `epoch`.

Each rank owns a disjoint shard of every epoch's permutation (`perm[rank::world]`), so ranks never
see the same document in an epoch and none has to tokenise another rank's data.

Tokens wait in a buffer of segments: a document's tokens, or, for a very long document
(`sources.LongText`), the tokens of one piece of it, produced only when the stream reaches them. So
memory is bounded by what a batch needs plus one piece (64 KB of text), however long a single
document is, and a resume inside a long document re-tokenises it piece by piece up to the offset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from motif.data.sources import LONG_TEXT_BYTES, Documents, LongText, StreamingDocuments
from motif.data.tokenizer import Tokenizer
from motif.errors import DataError


@dataclass
class StreamPosition:
    epoch: int = 0
    doc: int = 0
    offset: int = 0


@dataclass
class Segment:
    """Tokens `start`.. of document (epoch, doc); `last`: they end the document."""

    epoch: int
    doc: int
    start: int
    ids: np.ndarray
    last: bool = True


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
        # Segments from `position` onwards; `_queue`: documents read but not yet tokenised;
        # `_long`: a long document being tokenised piece by piece; `_next`: the first not yet read.
        self._buffer: deque[Segment] = deque()
        self._queue: deque[tuple[int, int, str | LongText]] = deque()
        self._long: tuple[int, int, Iterator[tuple[list[int], bool]], int] | None = None
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

    def _read_texts(self) -> tuple[list[str | LongText], list[tuple[int, int]]]:
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
                texts.append(LongText(text, len(text)) if len(text) > LONG_TEXT_BYTES // 4 else text)
            positions = [(epoch, doc + i) for i in range(len(texts))]
            self._next = (epoch, doc + len(texts))
            return texts, positions
        order = self._order(epoch)
        if doc >= len(order):
            epoch, doc = epoch + 1, 0
            order = self._order(epoch)
        ids = order[doc : doc + self.BATCH_DOCS]
        self._next = (epoch, doc + len(ids))
        return self.docs.read(ids.tolist()), [(epoch, doc + i) for i in range(len(ids))]

    # ---- reading -------------------------------------------------------------------------------

    def _available(self) -> int:
        if not self._buffer:
            return 0
        return sum(len(seg.ids) for seg in self._buffer) - (self.position.offset - self._buffer[0].start)

    def _fill(self, need: int) -> None:
        while self._available() < need:
            self._produce()

    def _produce(self) -> None:
        """Tokenise what comes next: one piece of a long document, or a run of ordinary ones."""
        if self._long is not None:
            epoch, doc, pieces, start = self._long
            ids, last = next(pieces)
            self._push(Segment(epoch, doc, start, np.asarray(ids, dtype=np.int64), last))
            self._long = None if last else (epoch, doc, pieces, start + len(ids))
            return
        if not self._queue:
            texts, positions = self._read_texts()
            self._queue.extend((e, d, t) for (e, d), t in zip(positions, texts, strict=True))
        run = []
        while self._queue and isinstance(self._queue[0][2], str):
            run.append(self._queue.popleft())
        if run:
            for (epoch, doc, _), ids in zip(run, self.tokenizer.encode_batch([t for *_, t in run]), strict=True):
                self._push(Segment(epoch, doc, 0, np.asarray(ids, dtype=np.int64)))
            return
        epoch, doc, text = self._queue.popleft()
        self._long = (epoch, doc, self.tokenizer.encode_pieces(text.pieces()), 0)

    def _push(self, seg: Segment) -> None:
        pos = self.position
        if (seg.epoch, seg.doc) == (pos.epoch, pos.doc) and seg.start + len(seg.ids) <= pos.offset:
            return  # resuming inside a long document: this piece lies before the position
        self._buffer.append(seg)

    def _upcoming(self) -> tuple[int, int]:
        """(epoch, doc) of the document after the buffered ones."""
        if self._buffer:
            return self._buffer[0].epoch, self._buffer[0].doc
        if self._long is not None:
            return self._long[0], self._long[1]
        if self._queue:
            return self._queue[0][0], self._queue[0][1]
        return self._next

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens, advancing the position."""
        self._fill(n)
        out = np.empty(n, dtype=np.int64)
        filled = 0
        pos = self.position
        while filled < n:
            if not self._buffer:
                self._fill(n - filled)
            seg = self._buffer[0]
            i = pos.offset - seg.start
            k = min(n - filled, len(seg.ids) - i)
            out[filled : filled + k] = seg.ids[i : i + k]
            filled += k
            pos.offset += k
            if i + k == len(seg.ids):
                self._buffer.popleft()
                if seg.last:
                    pos.offset = 0
                    pos.epoch, pos.doc = self._upcoming()
        return out
